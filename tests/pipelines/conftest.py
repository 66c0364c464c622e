"""Fixtures for the data-pipeline tests: corpora of real media encoded with PyAV, and a real S3 API
(moto's server) on loopback. Helpers (not fixtures) are in ``pipeline_helpers.py``.

Fake AWS credentials are set here, at import, i.e. before the session's Ray starts: Ray's workers
inherit the environment of the process that starts Ray, which is how the standard AWS credential
chain reaches them. The endpoint is not set in the environment: jobs get it from config
(``s3.endpoint_url``) and pin it for their tasks, which is the path under test.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("AWS_ACCESS_KEY_ID", "codiray-test-key")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "codiray-test-secret")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_ENDPOINT_URL", None)
os.environ.pop("AWS_ENDPOINT_URL_S3", None)


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (random port) for the whole session; yields its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def bucket(s3_endpoint, request):
    """A fresh bucket per test (named after the test), as an ``s3://`` URI."""
    import boto3

    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"
