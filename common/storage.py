"""One way to read and write local paths and ``s3://`` URIs on any S3-compatible endpoint.

Credentials come only from the standard AWS chain (env vars, shared config, instance/IRSA roles);
the endpoint comes from config or ``AWS_ENDPOINT_URL``. Nothing here logs or stores credentials.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import urlparse

import pyarrow.fs as pafs

from common.errors import CodirayError

log = logging.getLogger(__name__)


@dataclass
class S3Config:
    """Where the S3-compatible store is; None means AWS's own endpoint / the env's choice."""

    endpoint_url: Optional[str] = None
    region: Optional[str] = None
    retries: int = 5           # attempts for transient errors (timeouts, 5xx, throttling)
    backoff_s: float = 0.5     # first wait; doubles per attempt
    timeout_s: float = 30.0    # connect and request timeout


class StorageError(CodirayError):
    """A permanent object-store error (no such bucket, access denied): the job stops with this line."""


# pyarrow reports AWS SDK errors as text; these are the ones worth retrying. Anything else (no such
# bucket/key, access denied, bad credentials) is permanent: retrying would only hide it.
_TRANSIENT = re.compile(r"SLOW_DOWN|SlowDown|THROTTL|Throttl|REQUEST_TIMEOUT|RequestTimeout|timed? ?out|"
                        r"NETWORK_CONNECTION|SERVICE_UNAVAILABLE|INTERNAL_FAILURE|InternalError|"
                        r"HTTP response code: 5\d\d|response code 5\d\d|Connection (reset|refused)|curlCode",
                        re.IGNORECASE)
_PERMANENT = re.compile(r"NO_SUCH_BUCKET|NoSuchBucket|Bucket '[^']*' not found|ACCESS_DENIED|AccessDenied|Forbidden|"
                        r"INVALID_ACCESS_KEY|InvalidAccessKeyId|SIGNATURE_DOES_NOT_MATCH|"
                        r"HTTP response code: 403", re.IGNORECASE)


def is_transient(err: BaseException) -> bool:
    text = str(err)
    return bool(_TRANSIENT.search(text)) and not _PERMANENT.search(text)


def _short(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


def with_retries(what: str, fn, s3: "S3Config | None" = None):
    """Run ``fn()``; retry transient store errors with exponential backoff, turn permanent ones into
    a one-line StorageError. FileNotFoundError passes through: a missing object is the caller's call."""
    s3 = s3 or S3Config()
    delay = s3.backoff_s
    for attempt in range(1, max(1, s3.retries) + 1):
        try:
            return fn()
        except FileNotFoundError:
            raise
        except OSError as err:
            if _PERMANENT.search(str(err)):
                raise StorageError(f"{what}: {_short(err)}") from None
            if not is_transient(err) or attempt >= s3.retries:
                if is_transient(err):
                    raise StorageError(f"{what}: still failing after {attempt} attempts: {_short(err)}") from None
                raise
            log.warning("%s: transient error (attempt %d/%d), retrying in %.1fs: %s",
                        what, attempt, s3.retries, delay, _short(err))
            time.sleep(delay)  # backoff between attempts, not synchronisation
            delay *= 2


def is_remote(uri: str) -> bool:
    return urlparse(str(uri)).scheme in ("s3", "s3a")


def endpoint_of(s3: S3Config | None = None) -> Optional[str]:
    """The endpoint in effect: config first, then the standard AWS env vars."""
    s3 = s3 or S3Config()
    return s3.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def s3_filesystem(s3: S3Config | None = None) -> pafs.S3FileSystem:
    """pyarrow S3 filesystem using the default credential chain and the configured endpoint (cached:
    building one costs milliseconds, and every read goes through here)."""
    s3 = s3 or S3Config()
    return _s3_filesystem(endpoint_of(s3), s3.region, s3.timeout_s)


@functools.lru_cache(maxsize=8)
def _s3_filesystem(endpoint: Optional[str], region: Optional[str], timeout_s: float) -> pafs.S3FileSystem:
    s3 = S3Config(endpoint_url=endpoint, region=region, timeout_s=timeout_s)
    kwargs: dict = {"region": s3.region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
                    "connect_timeout": s3.timeout_s, "request_timeout": s3.timeout_s,
                    # retries are ours (with_retries), so a permanent error surfaces at once
                    "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=1)}
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

    def read():
        with fs.open_input_stream(path) as f:
            return f.read()

    return with_retries(f"reading {uri}", read, s3)


def write_bytes(uri: str, data: bytes, s3: S3Config | None = None) -> None:
    """Write atomically where the store allows it (local: temp file + rename; S3 PUT is atomic)."""
    fs, path = resolve(uri, s3)
    with_retries(f"writing {uri}", lambda: _write(fs, path, data), s3)


def _write(fs: pafs.FileSystem, path: str, data: bytes) -> None:
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
    return with_retries(f"checking {uri}", lambda: fs.get_file_info(path).type != pafs.FileType.NotFound, s3)


def _entries(uri: str, s3: S3Config | None, recursive: bool) -> tuple[str, list]:
    fs, path = resolve(uri, s3)

    def listing():
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return []
        return fs.get_file_info(pafs.FileSelector(path, recursive=recursive))

    return path, with_retries(f"listing {uri}", listing, s3)


def list_files(uri: str, suffix: str = "", s3: S3Config | None = None, recursive: bool = False) -> list[str]:
    """Sorted URIs of files under ``uri`` (directly, or at any depth) whose names end with ``suffix``."""
    path, infos = _entries(uri, s3, recursive)
    rel = sorted(i.path[len(path):].lstrip("/") for i in infos
                 if i.type == pafs.FileType.File and i.base_name.endswith(suffix))
    return [join(str(uri), r) for r in rel]


def list_dirs(uri: str, s3: S3Config | None = None) -> list[str]:
    """Sorted URIs of the folders directly under ``uri`` (S3: the common prefixes)."""
    _, infos = _entries(uri, s3, recursive=False)
    return [join(str(uri), name) for name in sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)]


def parent(uri: str) -> str:
    """The folder holding ``uri`` (``s3://b/run/checkpoint_1`` -> ``s3://b/run``; ``name`` -> ``.``)."""
    head, sep, _ = str(uri).rstrip("/").rpartition("/")
    return (head or "/") if sep else "."


def cache_root() -> Path:
    """Where ``local_copy`` keeps downloads: ``$CODIRAY_CACHE`` or ``~/.cache/codiray``, then ``objects/``."""
    return Path(os.environ.get("CODIRAY_CACHE") or Path.home() / ".cache" / "codiray").expanduser() / "objects"


def cache_dir(uri: str, s3: S3Config | None = None, *parts: object) -> Path:
    """This node's cache folder for a remote ``uri`` (and ``parts``): ``cache_root()/<hash of endpoint, URI, parts>``."""
    key = "|".join([str(endpoint_of(s3)), str(uri).rstrip("/"), *map(str, parts)])
    return cache_root() / hashlib.sha256(key.encode()).hexdigest()[:24]


def local_copy(uri: str, s3: S3Config | None = None, names: Sequence[str] = ()) -> str:
    """A local path holding what ``uri`` holds: a local path as it is; an ``s3://`` file or folder (every
    object under its prefix, or only the top-level files and folders in ``names``: a checkpoint's export
    without its optimizer shards) downloaded once into ``cache_dir(uri, s3, names)/<last name>``.

    For what a run writes once and never rewrites in place (stage exports, checkpoints, a schedule's codecs
    folder): loaders that need files on disk (safetensors memory maps, tokenizer folders) read remote
    exports through here. Concurrent callers on one node are safe: each downloads into a temporary sibling
    and renames it into place; a loser's copy is dropped."""
    if not is_remote(uri):
        return str(Path(uri).expanduser())
    uri = str(uri).rstrip("/")
    target = cache_dir(uri, s3, sorted(names)) / uri.rsplit("/", 1)[-1]
    if target.exists():
        return str(target)
    fs, path = resolve(uri, s3)
    kind = with_retries(f"checking {uri}", lambda: fs.get_file_info(path).type, s3)
    files = [uri] if kind == pafs.FileType.File else [
        f for f in list_files(uri, s3=s3, recursive=True) if not names or f[len(uri) + 1:].split("/")[0] in names]
    if not files:
        raise FileNotFoundError(f"{uri}: no such object or folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=target.parent))
    try:
        staged = tmp / target.name
        for file in files:
            dest = staged if kind == pafs.FileType.File else staged / file[len(uri) + 1:]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(read_bytes(file, s3))
        try:
            os.rename(staged, target)
        except OSError:
            if not target.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def upload_folder(folder: str | Path, uri: str, s3: S3Config | None = None, last: str = "") -> None:
    """Every file under the local ``folder`` to ``uri/<relative path>``; ``last`` (a relative path) goes
    up after all the others, so its presence means the upload is complete."""
    folder = Path(folder)
    files = sorted((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.relative_to(folder).as_posix() == last)
    for file in files:
        write_bytes(join(uri, file.relative_to(folder).as_posix()), file.read_bytes(), s3)


def require_bucket(uri: str, s3: S3Config | None = None) -> None:
    """For an ``s3://`` URI, fail at once with one line if its bucket does not exist or is refused
    (otherwise a missing media bucket would look like every file missing)."""
    if not is_remote(uri):
        return
    bucket = urlparse(str(uri)).netloc
    fs = s3_filesystem(s3)
    info = with_retries(f"checking bucket of {uri}", lambda: fs.get_file_info(bucket), s3)
    if info.type == pafs.FileType.NotFound:
        raise StorageError(f"{uri}: no such bucket '{bucket}' at {endpoint_of(s3) or 'AWS S3'}")
