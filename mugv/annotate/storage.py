"""The answer log: SQLite in WAL mode, one transaction per answer, one answer per (annotator, item).

Every answer is committed before the server replies, with synchronous=FULL, so a killed server
loses nothing it acknowledged. Each thread opens its own connection (sqlite3 objects are not
shared across threads); WAL lets readers run while one writer commits.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    campaign_hash TEXT NOT NULL,
    annotator TEXT NOT NULL,
    item TEXT NOT NULL,
    left_video TEXT NOT NULL,
    right_video TEXT NOT NULL,
    swapped INTEGER NOT NULL,
    screen TEXT NOT NULL,
    canonical TEXT NOT NULL,
    grade TEXT NOT NULL,
    tags TEXT NOT NULL,
    comment TEXT NOT NULL,
    is_gold INTEGER NOT NULL,
    gold_expected TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    plays INTEGER NOT NULL,
    seeks INTEGER NOT NULL,
    full_watch INTEGER NOT NULL,
    app_version TEXT NOT NULL,
    created_at REAL NOT NULL,
    UNIQUE (annotator, item)
);
CREATE INDEX IF NOT EXISTS answers_by_item ON answers (item);
"""


@dataclass
class Answer:
    """One annotator's answer to one item, with where each video was shown.

    `screen` holds what was pressed (left / right / tie / both_bad per aspect); `canonical` the
    same un-swapped (a / b / tie / both_bad, where a is the item's first video)."""

    campaign_hash: str
    annotator: str
    item: str
    left_video: str
    right_video: str = ""
    swapped: bool = False
    screen: dict[str, str] = field(default_factory=dict)
    canonical: dict[str, str] = field(default_factory=dict)
    grade: str = ""
    tags: list[str] = field(default_factory=list)
    comment: str = ""
    is_gold: bool = False
    gold_expected: str = ""
    time_ms: int = 0
    plays: int = 0
    seeks: int = 0
    full_watch: bool = False
    app_version: str = ""
    created_at: float = 0.0
    seq: int = 0

    def as_row(self) -> dict:
        return asdict(self)


_JSON_FIELDS = ("screen", "canonical", "tags")
_BOOL_FIELDS = ("swapped", "is_gold", "full_watch")
_COLUMNS = [name for name in Answer.__dataclass_fields__ if name != "seq"]


class AnswerStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._local = threading.local()
        with self._connect() as conn:
            conn.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def record(self, answer: Answer) -> bool:
        """Commit `answer`; False (and nothing written) when this annotator already answered the item."""
        answer.created_at = answer.created_at or time.time()
        values = []
        for name in _COLUMNS:
            value = getattr(answer, name)
            values.append(json.dumps(value) if name in _JSON_FIELDS else int(value) if name in _BOOL_FIELDS else value)
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute(
                f"INSERT OR IGNORE INTO answers ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                values)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return cur.rowcount == 1

    def withdraw(self, annotator: str, item: str) -> bool:
        """Delete an annotator's own answer (undo); nobody can delete another annotator's answer."""
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute("DELETE FROM answers WHERE annotator = ? AND item = ?", (annotator, item))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return cur.rowcount == 1

    def answers(self, annotator: str | None = None) -> list[Answer]:
        query = f"SELECT seq, {', '.join(_COLUMNS)} FROM answers"
        args: tuple = ()
        if annotator is not None:
            query += " WHERE annotator = ?"
            args = (annotator,)
        rows = self._connect().execute(query + " ORDER BY seq", args).fetchall()
        out = []
        for row in rows:
            values = dict(zip(["seq", *_COLUMNS], row))
            for name in _JSON_FIELDS:
                values[name] = json.loads(values[name])
            for name in _BOOL_FIELDS:
                values[name] = bool(values[name])
            out.append(Answer(**values))
        return out

    def answered_items(self, annotator: str) -> set[str]:
        rows = self._connect().execute("SELECT item FROM answers WHERE annotator = ?", (annotator,)).fetchall()
        return {r[0] for r in rows}

    def counts_by_item(self) -> dict[str, int]:
        rows = self._connect().execute("SELECT item, COUNT(*) FROM answers GROUP BY item").fetchall()
        return dict(rows)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
