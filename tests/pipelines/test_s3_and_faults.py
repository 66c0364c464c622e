"""Object storage: every style end to end on a real S3 API (moto's server on loopback), transient
errors retried, permanent ones stopping the job with one line; kill-and-rerun gives the same keys."""

from __future__ import annotations

import http.client
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from corpora import audiocaps_corpus, audioset_corpus, laion_corpus, webvid_corpus
from pipeline_helpers import assert_reconciles, read_ledger, read_manifest, small_config, upload_tree

from codiray.cli import main as codiray_main
from common import storage
from pipelines.cli import prepare
from pipelines.reader import read_shards
from common.storage import S3Config, StorageError

ROOT = Path(__file__).resolve().parents[2]


def s3_config(endpoint: str, **kw):
    cfg = small_config(**kw)
    cfg.s3 = S3Config(endpoint_url=endpoint, retries=3, backoff_s=0.05)
    return cfg


def tar_contents(data: bytes) -> dict[str, bytes]:
    """Member name -> bytes, ``.json`` members without their ``source`` field."""
    import io
    import tarfile

    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            body = tar.extractfile(m).read()
            if m.name.endswith(".json"):
                meta = json.loads(body)
                meta.pop("source")
                body = json.dumps(meta, sort_keys=True).encode()
            out[m.name] = body
    return out


BUILDERS = {"webvid": webvid_corpus, "audioset": audioset_corpus, "audiocaps": audiocaps_corpus}


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("style", ["webvid", "audioset", "audiocaps", "laion"])
def test_each_style_on_s3(ray_local, s3_endpoint, bucket, tmp_path, style):
    local = tmp_path / "corpus"
    corpus = laion_corpus(local, num=8) if style == "laion" else BUILDERS[style](local)
    cfg = s3_config(s3_endpoint)
    upload_tree(local, f"{bucket}/in", cfg.s3)

    def remote(path) -> str:
        return f"{bucket}/in/{Path(path).relative_to(local)}"

    out = f"{bucket}/out"
    manifest = prepare(style, remote(corpus["metadata"]), remote(corpus["media"]), out, cfg)
    ledger = read_ledger(out, cfg.s3)
    assert_reconciles(manifest, ledger)
    if style != "laion":
        assert {k: v[0] for k, v in ledger.items()} == {k: v[0] for k, v in corpus["drops"].items()}
    keys = [k for b in read_shards(out, cfg.s3).iter_batches(batch_size=1000, batch_format="numpy")
            for k in b["key"].tolist()]
    assert len(keys) == manifest["samples"] > 0
    # the same job on local storage writes the same samples and tensors (json differs: its source URI)
    local_out = tmp_path / "local_out"
    prepare(style, str(corpus["metadata"]), str(corpus["media"]), str(local_out), small_config())
    for shard in manifest["shards"]:
        remote_tar = tar_contents(storage.read_bytes(f"{out}/{shard['name']}", cfg.s3))
        assert remote_tar == tar_contents((local_out / shard["name"]).read_bytes())
    # credentials are never written out
    for name in ("manifest.json",):
        assert os.environ["AWS_SECRET_ACCESS_KEY"].encode() not in storage.read_bytes(f"{out}/{name}", cfg.s3)


class FlakyProxy(http.server.BaseHTTPRequestHandler):
    """Forwards to the S3 server, but answers with 503 SlowDown: the first ``failures`` GETs, and the
    first attempt at every distinct write (PUT/POST) or listing when ``fail_first`` names "PUT" or
    "LIST" (so every object a job writes and every listing it makes is refused once)."""

    upstream: tuple[str, int]
    failures = 0
    fail_first: set = set()
    seen: list = []
    failed: list = []   # (kind, path) of every request answered with a fault
    _tried: set = set()

    def kind(self) -> str:
        if self.command in ("PUT", "POST"):
            return "PUT"
        query = self.path.split("?", 1)[1] if "?" in self.path else ""
        if self.command == "GET" and any(q in query for q in ("list-type", "prefix=", "delimiter=")):
            return "LIST"
        return self.command

    def _fault(self) -> bool:
        handler, kind = type(self), self.kind()
        if self.command == "GET" and handler.failures > 0:
            handler.failures -= 1
            return True
        # a write's retry is a new multipart upload (new uploadId): identify it by what it writes
        path, _, query = self.path.partition("?")
        request = (self.command, path, tuple(sorted(q.split("=")[0] for q in query.split("&")))) \
            if kind == "PUT" else (kind, self.path)
        if kind in handler.fail_first and request not in handler._tried:
            handler._tried.add(request)
            return True
        return False

    protocol_version = "HTTP/1.1"  # answers "Expect: 100-continue" (the SDK's uploads ask for it)

    def _body(self) -> bytes:
        """The request body as sent: Content-Length bytes, or a chunked (aws-chunked) body verbatim."""
        if "chunked" not in (self.headers.get("Transfer-Encoding") or "").lower():
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        raw = b""
        while True:
            line = self.rfile.readline()
            raw += line
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers (the SDK sends its checksum here), up to the blank line
                    trailer = self.rfile.readline()
                    raw += trailer
                    if trailer in (b"\r\n", b"\n", b""):
                        return raw
            raw += self.rfile.read(size + 2)

    def _forward(self):
        body = self._body()
        type(self).seen.append(self.command)
        if self._fault():
            type(self).failed.append((self.kind(), self.path))
            payload = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        conn = http.client.HTTPConnection(*self.upstream)
        conn.request(self.command, self.path, body, {k: v for k, v in self.headers.items() if k.lower() != "expect"})
        resp = conn.getresponse()
        data = resp.read()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                self.send_header(k, v)
        # a HEAD has no body but must report the object's size
        self.send_header("Content-Length", resp.getheader("Content-Length", "0") if self.command == "HEAD"
                         else str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _forward

    def log_message(self, *args):
        pass


@pytest.fixture()
def flaky_endpoint(s3_endpoint):
    host, port = s3_endpoint.split("//")[1].split(":")
    handler = type("Handler", (FlakyProxy,), {"upstream": (host, int(port)), "failures": 0, "seen": [],
                                              "fail_first": set(), "failed": [], "_tried": set()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()


def put_direct(s3_endpoint: str, bucket: str, key: str, data: bytes) -> None:
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=bucket[len("s3://"):], Key=key, Body=data)


def test_transient_errors_are_retried(flaky_endpoint, s3_endpoint, bucket):
    endpoint, handler = flaky_endpoint
    s3 = S3Config(endpoint_url=endpoint, retries=4, backoff_s=0.01)
    put_direct(s3_endpoint, bucket, "obj", b"payload")
    handler.failures, handler.seen = 2, []
    assert storage.read_bytes(f"{bucket}/obj", s3) == b"payload"
    assert handler.failures == 0 and handler.seen.count("GET") >= 3  # two 503s, then the real answer


def test_transient_errors_give_up_with_one_line(flaky_endpoint, s3_endpoint, bucket):
    endpoint, handler = flaky_endpoint
    s3 = S3Config(endpoint_url=endpoint, retries=2, backoff_s=0.01)
    put_direct(s3_endpoint, bucket, "obj", b"payload")
    handler.failures = 100
    with pytest.raises(StorageError) as err:
        storage.read_bytes(f"{bucket}/obj", s3)
    assert "still failing after 2 attempts" in str(err.value) and "\n" not in str(err.value)


def test_transient_put_and_list_errors_are_retried(flaky_endpoint, s3_endpoint, bucket):
    endpoint, handler = flaky_endpoint
    s3 = S3Config(endpoint_url=endpoint, retries=6, backoff_s=0.01)  # a write is up to 4 requests
    handler.fail_first = {"PUT", "LIST"}
    storage.write_bytes(f"{bucket}/dir/obj.bin", b"payload", s3)
    assert storage.list_files(f"{bucket}/dir", "", s3) == [f"{bucket}/dir/obj.bin"]
    kinds = {kind for kind, _ in handler.failed}
    assert kinds == {"PUT", "LIST"}  # both were refused once, and retried to the right answer
    assert any(path.split("?")[0].endswith("/dir/obj.bin") for kind, path in handler.failed if kind == "PUT")
    assert storage.read_bytes(f"{bucket}/dir/obj.bin", S3Config(endpoint_url=s3_endpoint)) == b"payload"


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_job_survives_transient_put_and_list_errors(ray_local, flaky_endpoint, s3_endpoint, bucket, tmp_path):
    """Every object the job writes (shards, commit records, ledger, manifest, plan) and every listing
    it makes is refused once with 503 SlowDown: the output equals a fault-free run's."""
    endpoint, handler = flaky_endpoint
    local = tmp_path / "corpus"
    corpus = laion_corpus(local, num=8)
    upload_tree(local, f"{bucket}/in", S3Config(endpoint_url=s3_endpoint))
    cfg = s3_config(endpoint)
    cfg.s3.retries = 6  # a write is up to 4 requests (folder marker, multipart create/part/complete)
    handler.fail_first = {"PUT", "LIST"}
    out = f"{bucket}/out"
    manifest = prepare("laion", f"{bucket}/in/metadata.parquet", f"{bucket}/in/images", out, cfg)
    written = {path.split("?")[0].rsplit("/out/", 1)[-1] for kind, path in handler.failed if kind == "PUT"}
    assert {"manifest.json", "dropped.parquet", "_plan.json"} <= written
    assert any(p.endswith(".tar") for p in written) and any(p.startswith("_parts/") for p in written)
    assert any(kind == "LIST" for kind, _ in handler.failed)
    clean = s3_config(s3_endpoint)
    ledger = read_ledger(out, clean.s3)
    assert_reconciles(manifest, ledger)
    reference = tmp_path / "reference"
    expected = prepare("laion", str(corpus["metadata"]), str(corpus["media"]), str(reference), small_config())
    assert [(m["written"], m["samples"], m["per_stage"]["flow"]) for m in (manifest, expected)] == \
        [(expected["written"], expected["samples"], expected["per_stage"]["flow"])] * 2
    for shard in manifest["shards"]:
        assert tar_contents(storage.read_bytes(f"{out}/{shard['name']}", clean.s3)) == \
            tar_contents((reference / shard["name"]).read_bytes())


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_missing_bucket_stops_the_job_with_one_line(ray_local, s3_endpoint, tmp_path, capsys):
    corpus = audiocaps_corpus(tmp_path / "corpus")
    code = codiray_main(["prepare", "audiocaps", "--metadata", str(corpus["metadata"]), "--media",
                         str(corpus["media"]), "--out", "s3://no-such-bucket/out", f"s3.endpoint_url={s3_endpoint}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "no such bucket 'no-such-bucket'" in err


def run_cli(args: list[str], env: dict, log: Path, started: list | None = None) -> subprocess.Popen:
    """`codiray prepare` in its own session; output goes to a file (a pipe nobody drains can fill up
    and stall the job). ``started`` collects the process for ``cli_groups``."""
    with open(log, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "codiray.cli", "prepare", *args], cwd=ROOT, env=env,
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    if started is not None:
        started.append(proc)
    return proc


@pytest.fixture()
def cli_groups():
    """The CLI runs a test started; on teardown (pass, failure or pytest-timeout) SIGKILL each one's
    process group, so a timed-out run leaves no driver or Ray processes behind."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


def all_keys(out: Path) -> list[str]:
    import tarfile

    keys = []
    for shard in read_manifest(str(out))["shards"]:
        with tarfile.open(out / shard["name"]) as tar:
            keys += [m.name.split(".")[0] for m in tar if m.name.endswith(".json")]
    return keys


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_killed_job_rerun_yields_the_same_keys(tmp_path, cli_groups):
    """SIGKILL a real `codiray prepare` once some shards are committed; the re-run finishes the rest
    and the key set equals an uninterrupted run's: nothing duplicated, nothing missing."""
    from pipelines.toyworld_media import VideoSpec, write_webvid_corpus

    specs = [VideoSpec(f"vid{i:02d}", f"clip number {i}", 2.0, 30.0, (64, 48)) for i in range(24)]
    corpus = write_webvid_corpus(tmp_path / "corpus", specs)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    common = ["webvid", "--metadata", str(corpus["metadata"]), "--media", str(corpus["media"]),
              "video.size=32", "video.frames=4", "shards.samples_per_shard=1", "concurrency=1"]

    killed = tmp_path / "killed"
    proc = run_cli(common + ["--out", str(killed)], env, tmp_path / "killed.log", cli_groups)
    parts = killed / "_parts"
    deadline = time.monotonic() + 240
    while not (parts.is_dir() and len(list(parts.glob("*.json"))) >= 3):
        assert proc.poll() is None, tail(tmp_path / "killed.log")
        assert time.monotonic() < deadline, "no shard committed in time"
        time.sleep(0.05)  # polling for a file, not synchronising on time
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait()
    done_before = len(list(parts.glob("*.json")))
    assert done_before < 24 and not (killed / "manifest.json").exists()

    rerun = run_cli(common + ["--out", str(killed)], env, tmp_path / "rerun.log", cli_groups)
    assert rerun.wait(timeout=300) == 0, tail(tmp_path / "rerun.log")
    whole = tmp_path / "whole"
    straight = run_cli(common + ["--out", str(whole)], env, tmp_path / "whole.log", cli_groups)
    assert straight.wait(timeout=300) == 0, tail(tmp_path / "whole.log")

    keys_killed, keys_whole = all_keys(killed), all_keys(whole)
    assert len(keys_killed) == len(set(keys_killed)) == 48  # 24 videos x two 1 s clips
    assert sorted(keys_killed) == sorted(keys_whole)
    assert json.loads((killed / "manifest.json").read_text())["written"] == 24
