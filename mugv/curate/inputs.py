"""What to curate: a folder (searched recursively: every file in it, video or not, so that each
one is accounted for in the manifest), a text file of paths, or a CSV/Parquet table with a `path`
column and optional `caption`, `source` and `license` columns. Paths come out absolute, so a
manifest works from any directory."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from mugv.config import ConfigError

CARRIED_COLUMNS = ("caption", "source", "license")


@dataclass
class InputItem:
    path: str
    caption: str = ""
    source: str = ""
    license: str = ""
    # The file's name within the input: relative to the input folder (or the list's or table's
    # folder) when inside it, else absolute. Moving the input keeps it, and so the clip ids.
    name: str = ""


def read_inputs(spec: str | Path) -> list[InputItem]:
    root = Path(spec)
    if root.is_dir():
        return [InputItem(os.path.abspath(p), name=p.relative_to(root).as_posix())
                for p in sorted(root.rglob("*")) if p.is_file()]
    if not root.is_file():
        raise ConfigError(f"input {root} is neither a folder nor a file")
    suffix = root.suffix.lower()
    if suffix == ".csv":
        with root.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        return _from_rows(rows, root)
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        return _from_rows(pq.read_table(root).to_pylist(), root)
    # A list of paths, one a line; relative paths are relative to the list's folder.
    lines = [line.strip() for line in root.read_text().splitlines()]
    return [_item(line, root) for line in lines if line and not line.startswith("#")]


def _from_rows(rows: list[dict], table: Path) -> list[InputItem]:
    if rows and "path" not in rows[0]:
        raise ConfigError(f"{table} has no 'path' column (columns: {', '.join(rows[0])})")
    items = []
    for row in rows:
        extras = {k: "" if row.get(k) is None else str(row.get(k)) for k in CARRIED_COLUMNS}
        items.append(_item(str(row["path"]), table, **extras))
    return items


def _item(path: str, listing: Path, **extras: str) -> InputItem:
    """`path` made absolute (a relative one is relative to the list's or table's folder), and its
    name within that folder."""
    folder = os.path.abspath(listing.parent)
    absolute = os.path.abspath(os.path.join(folder, Path(path).expanduser()))
    name = Path(os.path.relpath(absolute, folder)).as_posix() if Path(absolute).is_relative_to(folder) else absolute
    return InputItem(absolute, name=name, **extras)
