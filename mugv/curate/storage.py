"""Where curation inputs live: local paths, or URLs read through fsspec (`s3://`, `gs://`,
`memory://`, ...; `file://` URLs are local paths).

Credentials come from the environment only, through each file system's usual mechanisms (AWS_*
variables, ~/.aws, GOOGLE_APPLICATION_CREDENTIALS, instance metadata, fsspec's FSSPEC_* variables
and config folder). `run.storage_options` holds other options per protocol (`anon`, an
`endpoint_url`); keys that look like credentials are refused, so no secret lands in a profile or in
the `curate.toml` a run writes beside its manifest.

A remote video is copied to a local file before decoding and removed after: curation decodes every
frame, so the whole file is read anyway, and FFmpeg reading a local file seeks natively (an mp4's
index is often at its end), where a Python file object would turn each seek into a range request
through PyAV's callbacks; a failed download is then told apart from an undecodable file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import fsspec

from mugv.errors import ConfigError
from mugv.video import VideoError

EDGE_BYTES = 1 << 16  # of each end of a file, in its id: a re-encode changes both (container header, index)
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Whole key names, or parts of them, that name a secret in fsspec back ends (s3fs: key, secret,
# token; adlfs: account_key, sas_token, connection_string; gcsfs: token).
_CREDENTIAL_NAMES = frozenset({"key", "token", "sas", "auth"})
_CREDENTIAL_PARTS = ("secret", "password", "passwd", "credential", "token", "access_key", "account_key",
                     "private_key", "connection_string", "api_key")
# The version fields object stores report, most specific first (s3, gcs, azure, local/memory).
_VERSION_FIELDS = ("ETag", "etag", "generation", "md5Hash", "LastModified", "last_modified", "updated", "mtime", "created")


def protocol_of(path: str) -> str | None:
    """The URL's protocol, or None for a plain path."""
    match = _URL.match(path)
    return match.group(1).lower() if match else None


def is_remote(path: str) -> bool:
    """Whether `path` is read through fsspec rather than as a local file."""
    return protocol_of(path) not in (None, "file")


def local_path(path: str) -> str:
    """A `file://` URL as a plain path; other paths unchanged."""
    return path[len("file://"):] if protocol_of(path) == "file" else path


def credential_keys(options: dict, prefix: str = "") -> list[str]:
    """Dotted names of the keys in `options` (searched through nested tables) that look like credentials."""
    found = []
    for key, value in options.items():
        name = str(key).lower()
        if name in _CREDENTIAL_NAMES or any(part in name for part in _CREDENTIAL_PARTS):
            found.append(prefix + str(key))
        elif isinstance(value, dict):
            found += credential_keys(value, f"{prefix}{key}.")
    return found


def check_storage_options(options: dict[str, dict], key: str) -> None:
    """Refuse credentials and unknown protocols in `options` (the config key `key`)."""
    for protocol, table in options.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{key}.{protocol} must be a table of options for {protocol}:// (e.g. {{anon = true}})")
        if protocol not in fsspec.available_protocols():  # known, though its package may be absent here
            raise _unknown_protocol(protocol, f"{key}.{protocol}")
    if secrets := credential_keys(options):
        raise ConfigError(
            f"{key}: {', '.join(f'{key}.{s}' for s in secrets)} looks like a credential; credentials come from "
            "the environment (AWS_* variables or ~/.aws for s3://, GOOGLE_APPLICATION_CREDENTIALS for gs://, "
            "fsspec's FSSPEC_<PROTOCOL>_<OPTION> variables), never from a config file"
        )


def _filesystem_class(protocol: str, where: str) -> type:
    try:
        return fsspec.get_filesystem_class(protocol)
    except ValueError as exc:
        raise _unknown_protocol(protocol, where) from exc
    except ImportError as exc:
        extra = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}.get(protocol)
        hint = f" (pip install 'mugv[{extra}]')" if extra else ""
        raise ConfigError(f"{where}: reading {protocol}:// needs a package that is not installed: {exc}{hint}") from exc


def _unknown_protocol(protocol: str, where: str) -> ConfigError:
    known = ", ".join(p for p in ("s3", "gs", "az", "http", "https", "file", "memory") if p in fsspec.available_protocols())
    return ConfigError(f"{where}: unknown protocol '{protocol}://' (fsspec knows {known} and others)")


def filesystem(url: str, storage_options: dict[str, dict], where: str = "") -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system of `url` (a URL or a local path) and the path within it. `where` names the
    input that holds the URL, for errors."""
    where = where or url
    protocol = protocol_of(url) or "file"
    parts = urlsplit(url) if protocol != "file" else None
    if parts is not None and (parts.username or parts.password):
        raise ConfigError(f"{where}: credentials in a URL are refused; they come from the environment")
    _filesystem_class(protocol, where)
    return fsspec.core.url_to_fs(url, **storage_options.get(protocol, {}))


@dataclass(frozen=True)
class Fingerprint:
    """What identifies a file's content and version without reading it all."""

    size: int
    ends: str  # digest of the first and last EDGE_BYTES
    version: str  # mtime in ns locally; the store's ETag, generation or modification time remotely


def fingerprint(path: str, storage_options: dict[str, dict]) -> Fingerprint | None:
    """The file's fingerprint, or None if it cannot be read (it is then reported when curated)."""
    try:
        if not is_remote(path):
            with open(local_path(path), "rb") as f:
                stat = os.fstat(f.fileno())
                ends = hashlib.sha1(f.read(EDGE_BYTES))
                f.seek(max(stat.st_size - EDGE_BYTES, 0))
                ends.update(f.read(EDGE_BYTES))
            return Fingerprint(stat.st_size, ends.hexdigest(), str(stat.st_mtime_ns))
        fs, inner = filesystem(path, storage_options)
        info = fs.info(inner)
        size = int(info["size"])
        ends = hashlib.sha1(fs.cat_file(inner, 0, min(size, EDGE_BYTES)) if size else b"")
        ends.update(fs.cat_file(inner, max(size - EDGE_BYTES, 0), size) if size else b"")
        version = next((str(info[k]) for k in _VERSION_FIELDS if info.get(k) is not None), "")
        return Fingerprint(size, ends.hexdigest(), version)
    except OSError:
        return None


@contextmanager
def local_copy(path: str, storage_options: dict[str, dict], cache_dir: str = "") -> Iterator[str]:
    """A local file with `path`'s content for the length of the block: `path` itself when local,
    else a copy in `cache_dir` (default: the system's temporary folder), removed afterwards.
    A file that vanished raises VideoError `missing_file`, any other failure `fetch_failed`."""
    if not is_remote(path):
        yield local_path(path)
        return
    fs, inner = filesystem(path, storage_options)
    folder = Path(cache_dir or tempfile.gettempdir()) / "mugv-curate-cache"
    folder.mkdir(parents=True, exist_ok=True)
    # The extension is kept: the curation reads it, and FFmpeg guesses formats from it.
    name = f"{hashlib.sha1(path.encode()).hexdigest()[:16]}-{os.getpid()}{PurePosixPath(inner).suffix}"
    target = folder / name
    try:
        try:
            fs.get_file(inner, str(target))
        except FileNotFoundError as exc:
            raise VideoError("missing_file", path) from exc
        except OSError as exc:
            raise VideoError("fetch_failed", f"{path}: {exc}"[:500]) from exc
        yield str(target)
    finally:
        target.unlink(missing_ok=True)
