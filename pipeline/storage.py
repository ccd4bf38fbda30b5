"""Object storage through fsspec: filesystems for any URL, retries, small JSON helpers.

S3-compatible endpoints come from the standard ``AWS_ENDPOINT_URL`` environment variable, and
credentials from the usual AWS chain, so no secret ever lands in a config file.
"""
from __future__ import annotations

import io
import json
import os
import time
import uuid
from typing import Any, Callable, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline.errors import DscoError

T = TypeVar("T")
RETRIES = 5  # backoff 0.5 + 1 + 2 + 4 s: a storage outage of about 7 s is survived
# botocore retries each request itself (up to 5 times with random backoff), under our
# retries: an unreachable S3-compatible endpoint took 41 s to report. For such endpoints
# (AWS_ENDPOINT_URL) ours replace botocore's, unless the user tunes those through the
# standard variables; AWS itself keeps botocore's (its 5xx and throttling retries).
BOTOCORE_RETRY_VARS = ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE")
PARTIAL = ".partial-"  # local writes go to <name>.partial-<random> first, then are renamed
try:  # S3 connection errors are botocore exceptions, not OSError
    from botocore.exceptions import BotoCoreError, NoCredentialsError
    S3_ERRORS: tuple[type[BaseException], ...] = (BotoCoreError,)
    MISSING_CREDENTIALS: tuple[type[BaseException], ...] = (NoCredentialsError,)
except ImportError:  # pragma: no cover - s3fs is a dependency, but keep local use working
    S3_ERRORS = MISSING_CREDENTIALS = ()
RETRYABLE = (OSError, *S3_ERRORS)


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return (filesystem, path without protocol) for ``url``."""
    protocol = fsspec.utils.get_protocol(url)
    options: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
            if not any(os.environ.get(name) for name in BOTOCORE_RETRY_VARS):
                options["config_kwargs"] = {"retries": {"mode": "standard",
                                                        "total_max_attempts": 1}}
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:  # a protocol whose fsspec backend is not installed
        raise DscoError(f"cannot open storage URL {url!r}: its filesystem is not installed "
                        f"({exc}). Local paths and s3:// work out of the box; for another "
                        "protocol install its fsspec backend in the version matching fsspec "
                        f"{fsspec.__version__} (gs://: gcsfs) on every node.") from exc
    except ValueError as exc:
        raise DscoError(f"cannot open storage URL {url!r}: {exc}. Use a local path, "
                        "s3://bucket/prefix or gs://bucket/prefix.") from exc
    return fs, path


def join(url: str, *parts: str) -> str:
    """Join URL path parts with '/' (works for local paths and object store URLs)."""
    return "/".join([url.rstrip("/")] + [p.strip("/") for p in parts])


def with_retries(what: str, fn: Callable[[], T]) -> T:
    """Call a storage operation, retrying transient errors with exponential backoff."""
    for attempt in range(RETRIES):
        try:
            return fn()
        except (FileNotFoundError, DscoError):
            raise
        except PermissionError as exc:
            raise DscoError(f"cannot {what}: permission denied ({exc}). Fix the path, or the "
                            "permissions on it (for a bucket: credentials that may read and "
                            "write it).") from exc
        except (NotADirectoryError, IsADirectoryError, FileExistsError) as exc:
            raise DscoError(f"cannot {what}: {exc}. A file stands where the path needs a "
                            "folder, or a folder where it needs a file: pick another path "
                            "(outputs and datasets are folders).") from exc
        except MISSING_CREDENTIALS as exc:  # retrying cannot find them either
            raise DscoError(f"cannot {what}: {exc}: no object-store credentials were found. "
                            "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), "
                            "or run where an instance role or service account provides them; "
                            "for an S3-compatible server also set AWS_ENDPOINT_URL.") from exc
        except io.UnsupportedOperation as exc:  # a pipe or device: retrying cannot help
            raise DscoError(f"cannot {what}: {str(exc).rstrip('.')}. It is a pipe or special "
                            "file, not a stored file or object; save it to a regular file (or "
                            "a bucket) and pass that path.") from exc
        except RETRYABLE as exc:
            if attempt == RETRIES - 1:
                endpoint = os.environ.get("AWS_ENDPOINT_URL") or "unset: AWS itself"
                where = f"the endpoint (AWS_ENDPOINT_URL: {endpoint}) is reachable and " \
                    if isinstance(exc, S3_ERRORS) else ""
                raise DscoError(f"storage operation failed after {RETRIES} tries: {what}: {exc}. "
                                f"Check that the bucket or folder exists, {where}the "
                                "credentials or permissions allow writing.") from exc
            time.sleep(0.5 * 2 ** attempt)
    raise AssertionError("unreachable")


def write_bytes(url: str, data: bytes) -> None:
    """Write ``data`` to ``url`` (whole object), creating parent folders on local disks."""
    fs, path = filesystem(url)

    def put() -> None:
        if isinstance(fs, LocalFileSystem):  # readers must never see half a file
            fs.makedirs(os.path.dirname(path), exist_ok=True)
            partial = f"{path}{PARTIAL}{uuid.uuid4().hex[:8]}"
            with open(partial, "wb") as f:
                f.write(data)
            os.replace(partial, path)
            return
        with fs.open(path, "wb") as f:  # an object store PUT is atomic already
            f.write(data)

    try:
        with_retries(f"write {url}", put)
    except FileNotFoundError as exc:
        raise DscoError(f"cannot write {url!r}: the bucket or folder does not exist ({exc}). "
                        "Create the bucket, or fix the output URL.") from exc


def remove_partial_files(url: str) -> None:
    """Delete the temporary files that writers killed mid-write left under the local folder
    ``url`` (object stores have none). Only for a folder this process alone writes."""
    fs, path = filesystem(url)
    if isinstance(fs, LocalFileSystem):
        for leftover in fs.glob(f"{path}/**/*{PARTIAL}*"):
            fs.rm(leftover)


def create_exclusive(url: str, data: bytes) -> bool:
    """Create ``url`` holding ``data`` only if nothing is there; False if something is.

    Atomic on local disks (O_EXCL) and on S3 servers that honour ``If-None-Match: *`` (AWS,
    Ceph RGW, moto); a server that ignores the header overwrites, which callers must detect
    by reading back.
    """
    fs, path = filesystem(url)

    def create() -> bool:
        if isinstance(fs, LocalFileSystem):
            fs.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except OSError as exc:
            if _precondition_failed(exc):
                return False
            raise
        return True

    return with_retries(f"create {url}", create)


def _precondition_failed(exc: OSError) -> bool:
    """Whether an S3 error is HTTP 412 (some servers send no message, only the code)."""
    cause = getattr(exc.__cause__, "response", None) or {}
    return cause.get("Error", {}).get("Code") == "PreconditionFailed" or \
        "precondition" in str(exc).lower()


def delete(url: str) -> None:
    """Delete the object at ``url`` (nothing if it is gone already)."""
    fs, path = filesystem(url)
    try:
        with_retries(f"delete {url}", lambda: fs.rm(path, recursive=fs.isdir(path)))
    except FileNotFoundError:
        pass


def read_bytes(url: str) -> bytes:
    """Read a whole object; raises FileNotFoundError when it does not exist."""
    fs, path = filesystem(url)
    return with_retries(f"read {url}", lambda: fs.cat_file(path))


def write_json(url: str, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON."""
    write_bytes(url, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(url: str) -> Any | None:
    """Read JSON from ``url``, or None when the object does not exist."""
    try:
        data = read_bytes(url)
    except FileNotFoundError:
        return None
    return parse_json(data, url)


def parse_json(data: bytes, source: str) -> Any:
    """``data`` as JSON; a clear error naming ``source`` when it is not valid JSON."""
    try:
        return json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise DscoError(f"{source} is not valid JSON ({exc}): the file is corrupt or was cut "
                        "off. Restore it, or delete it and rerun the step that writes it.") \
            from None


def exists(url: str) -> bool:
    """True when an object or folder exists at ``url``."""
    fs, path = filesystem(url)
    return with_retries(f"stat {url}", lambda: fs.exists(path))
