"""A persistent key-value cache in one sqlite file, shared by every thread and process that opens it.

Web search results and pages cost money and time, and an evaluation asks for the same ones again and again
(its samples, its reruns, the other jobs of a sweep). Safe for concurrent workers because:
- WAL journal: readers never block the writer, and a crash leaves the file consistent;
- one connection per thread and process (sqlite connections must not cross either);
- a busy timeout: a writer waits for another's lock instead of failing;
- INSERT OR REPLACE: two workers fetching the same key both write the same answer, and neither fails.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path

BUSY_TIMEOUT_S = 30.0


class SqliteCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connection() as connection:
            connection.execute("CREATE TABLE IF NOT EXISTS entries (kind TEXT NOT NULL, key TEXT NOT NULL, "
                               "value TEXT NOT NULL, stored REAL NOT NULL, PRIMARY KEY (kind, key))")

    def _connection(self) -> sqlite3.Connection:
        # Keyed by process too: a forked worker must not reuse its parent's connection.
        pid = os.getpid()
        if getattr(self._local, "pid", None) != pid:
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across crashes of the process
            self._local.connection, self._local.pid = connection, pid
        return self._local.connection

    def get(self, kind: str, key: str):
        """The stored JSON value, or None."""
        row = self._connection().execute("SELECT value FROM entries WHERE kind = ? AND key = ?", (kind, key)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, kind: str, key: str, value) -> None:
        with self._connection() as connection:  # one transaction, committed on leaving
            connection.execute("INSERT OR REPLACE INTO entries (kind, key, value, stored) VALUES (?, ?, ?, ?)",
                               (kind, key, json.dumps(value, ensure_ascii=False), time.time()))

    def count(self, kind: str | None = None) -> int:
        if kind is None:
            return self._connection().execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        return self._connection().execute("SELECT COUNT(*) FROM entries WHERE kind = ?", (kind,)).fetchone()[0]
