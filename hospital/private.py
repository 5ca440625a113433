"""The station's private SQLite files: the registry and the send journal (one file, `journal.sqlite3`) and each outbox
to the hospital's systems. They hold the patients' identity, so they are made 0600 in a 0700 folder (SQLite gives its
-wal and -shm files the database's mode), and every commit is synced in write-ahead-log mode: a power cut or a
`kill -9` loses nothing that was acknowledged and leaves each file consistent.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Self

from caseformat.signing import private_folder
from slides.errors import first_line, printable

STATE_FILE = "journal.sqlite3"  # in the station's state folder: the registry's and the send journal's tables


class PrivateDatabase:
    """One connection to a private SQLite file, shared by the threads of one process: one transaction at a time, each
    committed whole or not at all. A failure is raised as `error` in one line naming the file (`what PATH: reason`)."""

    def __init__(self, path: Path, schema: str, what: str, error: Callable[[str], Exception]) -> None:
        self.path, self._what, self._error = path, what, error
        self._lock = threading.Lock()
        try:
            private_folder(path.parent).chmod(0o700)  # an existing folder too: it is where the identity lives
            os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
            for file in (path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm"))):
                with suppress(FileNotFoundError):  # made before this rule: private from now on
                    file.chmod(0o600)
            self._db = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(schema)
        except (OSError, sqlite3.Error) as failure:
            raise error(self.explain("cannot open: " + _reason(failure))) from None

    def explain(self, reason: str) -> str:
        return printable(f"{self._what} {self.path}: {reason}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @contextmanager
    def transaction(self, consequence: str = "") -> Iterator[sqlite3.Connection]:
        """A write transaction (taken at once, so that two connections to the file wait for each other instead of
        failing); `consequence` is added to a failure's line (what was not recorded)."""
        with self._lock:
            try:
                with self._db:
                    self._db.execute("BEGIN IMMEDIATE")
                    yield self._db
            except sqlite3.Error as failure:
                raise self._error(self.explain(_reason(failure) + consequence)) from None

    def rows(self, query: str, *args: object) -> list[tuple[Any, ...]]:
        """The rows of one read."""
        with self._lock:
            try:
                return self._db.execute(query, args).fetchall()
            except sqlite3.Error as failure:
                raise self._error(self.explain(_reason(failure))) from None


def _reason(error: BaseException) -> str:
    return "disk full" if "full" in str(error) else first_line(error)
