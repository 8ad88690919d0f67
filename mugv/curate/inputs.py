"""What to curate: a folder (searched recursively: every file in it, video or not, so that each
one is accounted for in the manifest), a text file of paths or URLs (one a line; blank lines and
`#` comments ignored), or a CSV/Parquet table with a `path` column and optional `caption`, `source`
and `license` columns. The folder or list may itself be a URL (`s3://bucket/videos/`,
`gs://bucket/list.txt`, `memory://...`), read through fsspec (see `mugv.curate.storage`).

Local paths come out absolute, so a manifest works from any directory; URLs are kept as written
(`file://` URLs become local paths). A list or table entry that does not exist is an error naming
the listing and its line, found before anything is curated."""

from __future__ import annotations

import csv
import io
import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mugv.curate.storage import filesystem, is_remote, local_path
from mugv.errors import ConfigError

CARRIED_COLUMNS = ("caption", "source", "license")
SHOWN_MISSING = 5  # missing entries named in the error; the rest are counted
_CHECK_THREADS = 16  # remote existence checks are round trips, not work


@dataclass
class InputItem:
    path: str  # absolute local path, or URL
    caption: str = ""
    source: str = ""
    license: str = ""
    # The file's name within the input: relative to the input folder (or the list's or table's
    # folder) when inside it, else its absolute path or URL. Moving the input keeps it, and so the clip ids.
    name: str = ""
    # The video id, set by the runner when it lists the inputs (`runner.video_id`); empty: not yet known.
    id: str = ""


def read_inputs(spec: str | Path, storage_options: dict[str, dict] | None = None) -> list[InputItem]:
    """The input files of `spec` (a folder, list or table, local or a URL), in a stable order."""
    options = storage_options or {}
    spec = local_path(str(spec))
    if not is_remote(spec) and Path(spec).is_dir():
        root = Path(spec)
        return [InputItem(os.path.abspath(p), name=p.relative_to(root).as_posix())
                for p in sorted(root.rglob("*")) if p.is_file()]
    fs, inner = filesystem(spec, options, where=f"input {spec}")
    if is_remote(spec) and fs.isdir(inner):
        prefix = spec.rstrip("/")
        found = sorted(fs.find(inner))
        top = inner.rstrip("/")
        return [InputItem(f"{prefix}/{name}", name=name) for name in (posixpath.relpath(p, top) for p in found)]
    if not fs.isfile(inner):
        raise ConfigError(f"input {spec} is neither a folder nor a file")
    with fs.open(inner, "rb") as handle:
        data = handle.read()
    suffix = PurePosixPath(inner).suffix.lower()
    if suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
        entries = _from_rows(rows, spec, first_line=2)  # after the header
    elif suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        entries = _from_rows(pq.read_table(io.BytesIO(data)).to_pylist(), spec, first_line=1, unit="row")
    else:
        lines = [line.strip() for line in data.decode("utf-8-sig").splitlines()]
        entries = [(f"line {n}", _item(line, spec)) for n, line in enumerate(lines, 1) if line and not line.startswith("#")]
    _check_listed_files_exist(entries, spec, options)
    return [item for _, item in entries]


def _from_rows(rows: list[dict], table: str, first_line: int, unit: str = "line") -> list[tuple[str, InputItem]]:
    if rows and "path" not in rows[0]:
        raise ConfigError(f"{table} has no 'path' column (columns: {', '.join(rows[0])})")
    entries = []
    for n, row in enumerate(rows, first_line):
        extras = {k: "" if row.get(k) is None else str(row.get(k)) for k in CARRIED_COLUMNS}
        entries.append((f"{unit} {n}", _item(str(row["path"]), table, **extras)))
    return entries


def _item(entry: str, listing: str, **extras: str) -> InputItem:
    """A list or table entry as an input: a URL as written; a path made absolute (a relative one is
    relative to the listing's folder, local or remote; an absolute one is a local file), with its
    name within that folder."""
    entry = local_path(entry)
    if is_remote(entry):
        return InputItem(entry, name=entry, **extras)
    if is_remote(listing) and not os.path.isabs(entry):
        name = posixpath.normpath(entry)
        protocol, within = listing.split("://", 1)
        return InputItem(f"{protocol}://{posixpath.join(posixpath.dirname(within), name)}", name=name, **extras)
    folder = os.path.abspath(os.path.dirname(listing))
    absolute = os.path.abspath(os.path.join(folder, Path(entry).expanduser()))
    name = Path(os.path.relpath(absolute, folder)).as_posix() if Path(absolute).is_relative_to(folder) else absolute
    return InputItem(absolute, name=name, **extras)


def _check_listed_files_exist(entries: list[tuple[str, InputItem]], listing: str, options: dict[str, dict]) -> None:
    def exists(entry: tuple[str, InputItem]) -> bool:
        where, item = entry
        if not is_remote(item.path):
            return os.path.exists(item.path)
        fs, inner = filesystem(item.path, options, where=f"{listing} {where}")
        return fs.exists(inner)

    if any(is_remote(item.path) for _, item in entries):
        with ThreadPoolExecutor(_CHECK_THREADS) as pool:
            found = list(pool.map(exists, entries))  # the first entry's error (a bad protocol) is raised here
    else:
        found = [exists(e) for e in entries]
    missing = [f"{where}: {item.path}" for (where, item), ok in zip(entries, found) if not ok]
    if missing:
        shown = "; ".join(missing[:SHOWN_MISSING])
        more = f" (and {len(missing) - SHOWN_MISSING} more)" if len(missing) > SHOWN_MISSING else ""
        raise ConfigError(f"{listing}: {len(missing)} listed file(s) do not exist: {shown}{more}")
