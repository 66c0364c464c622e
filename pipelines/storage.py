"""One way to read and write local paths and ``s3://`` URIs on any S3-compatible endpoint.

Credentials come only from the standard AWS chain (env vars, shared config, instance/IRSA roles);
the endpoint comes from config or ``AWS_ENDPOINT_URL``. Nothing here logs or stores credentials.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

import pyarrow.fs as pafs


@dataclass
class S3Config:
    """Where the S3-compatible store is; None means AWS's own endpoint / the env's choice."""

    endpoint_url: Optional[str] = None
    region: Optional[str] = None


def is_remote(uri: str) -> bool:
    return urlparse(str(uri)).scheme in ("s3", "s3a")


def s3_filesystem(s3: S3Config | None = None) -> pafs.S3FileSystem:
    """pyarrow S3 filesystem using the default credential chain and the configured endpoint."""
    s3 = s3 or S3Config()
    endpoint = s3.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict = {"region": s3.region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str | Path, s3: S3Config | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path-within-it) for a local path or an ``s3://bucket/prefix`` URI."""
    uri = str(uri)
    if is_remote(uri):
        parsed = urlparse(uri)
        return s3_filesystem(s3), f"{parsed.netloc}{parsed.path}".rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    return "/".join([str(uri).rstrip("/"), *parts])


def read_bytes(uri: str, s3: S3Config | None = None) -> bytes:
    fs, path = resolve(uri, s3)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes, s3: S3Config | None = None) -> None:
    """Write atomically where the store allows it (local: temp file + rename; S3 PUT is atomic)."""
    fs, path = resolve(uri, s3)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{os.getpid()}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        with fs.open_output_stream(path) as f:
            f.write(data)


def exists(uri: str, s3: S3Config | None = None) -> bool:
    fs, path = resolve(uri, s3)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_files(uri: str, suffix: str = "", s3: S3Config | None = None) -> list[str]:
    """Sorted URIs of files directly under ``uri`` whose names end with ``suffix``."""
    fs, path = resolve(uri, s3)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix))
    return [join(str(uri), n) for n in names]
