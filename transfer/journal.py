"""The local journal: which objects the server verifiably holds, and which sends are unfinished.

SQLite in WAL mode with synchronous=FULL: every verified object is one committed transaction, so a `kill -9`,
a reboot or a full disk leaves a journal that is consistent and at most one object behind. Objects are keyed by
(endpoint, bucket, prefix, slide version, key) and carry the SHA-256 of their bytes: a rerun recomputes the (deterministic)
pieces and skips exactly those whose hash is already recorded as verified.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Collection
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caseformat.bounded import utc_now
from caseformat.layout import SlideRef
from hospital.private import STATE_FILE, PrivateDatabase
from transfer.errors import JournalError
from transfer.target import Destination

VERIFIED = "sent-verified"
FOUND_CORRUPT = "found-corrupt"  # verified once, then found corrupt on the server by the centre: to be sent again
SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    endpoint TEXT NOT NULL, bucket TEXT NOT NULL, prefix TEXT NOT NULL, case_id TEXT NOT NULL, key TEXT NOT NULL,
    sha256 TEXT NOT NULL, size INTEGER NOT NULL, etag TEXT NOT NULL, status TEXT NOT NULL, verified_at TEXT NOT NULL,
    PRIMARY KEY (endpoint, bucket, prefix, case_id, key)
);
CREATE TABLE IF NOT EXISTS sends (
    endpoint TEXT NOT NULL, bucket TEXT NOT NULL, prefix TEXT NOT NULL, case_id TEXT NOT NULL,
    args TEXT NOT NULL, started_at TEXT NOT NULL, updated_at TEXT NOT NULL, finished_at TEXT,
    milestones TEXT NOT NULL DEFAULT '{}', error TEXT,
    PRIMARY KEY (endpoint, bucket, prefix, case_id)
);
"""


def default_state_dir() -> Path:
    """$XDG_STATE_HOME/slidestream, else ~/.local/state/slidestream (the XDG base directory default)."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "slidestream"


@dataclass(frozen=True)
class SendRecord:
    """One send as the journal remembers it: enough to resume it with no arguments."""

    destination: Destination
    args: dict[str, Any]
    started_at: str
    finished_at: str | None
    milestones: dict[str, float]
    error: str | None  # why the last run stopped; with `finished_at`, why the send was given up

    @property
    def failed(self) -> bool:
        """Given up for good (a corrupt slide, ...): `resume` skips it, and its objects were deleted."""
        return self.finished_at is not None and self.error is not None


class Journal(PrivateDatabase):
    """Thread-safe: upload workers record objects concurrently through one connection."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(Path(state_dir) / STATE_FILE, SCHEMA, "journal", JournalError)

    def _transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """One committed transaction, or none at all."""
        return self.transaction("; nothing after the last verified object was recorded")

    # -- objects -------------------------------------------------------------------------------------------
    def verified(self, dest: Destination) -> dict[str, tuple[str, int]]:
        """key -> (SHA-256, size) of every object of this case the server verifiably holds."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT key, sha256, size FROM objects WHERE endpoint=? AND bucket=? AND prefix=? AND case_id=? AND status=?",
                (*_where(dest), VERIFIED),
            )
            return {key: (sha256, size) for key, sha256, size in rows.fetchall()}

    def record(self, dest: Destination, key: str, sha256: str, size: int, etag: str) -> None:
        """The server holds `key` with these bytes (checked against its response): never re-send it."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*_where(dest), key, sha256, size, etag, VERIFIED, utc_now()),
            )

    def unverify(self, dest: Destination, keys: Collection[str]) -> None:
        """The centre found these objects corrupt on the server (its corrupt.json): the record no longer proves the
        server holds their bytes, so the next run uploads them again (and `record` verifies them anew)."""
        with self._transaction() as db:
            db.executemany(
                "UPDATE objects SET status=? WHERE " + _WHERE + " AND key=?", [(FOUND_CORRUPT, *_where(dest), key) for key in keys]
            )

    # -- sends ---------------------------------------------------------------------------------------------
    def begin(self, dest: Destination, args: dict[str, Any]) -> SendRecord:
        """Register a send, or continue the earlier one to the same place: an interrupted one, or a finished one
        sent again, keeps its `started_at` and milestones (the frozen-section clock never restarts on a resend; the
        sender calls `restart` when the image turns out to differ). After a send that was given up, a new clock."""
        previous = self.send(dest)
        now = utc_now()
        keep = previous is not None and not previous.failed
        started = previous.started_at if keep and previous else now
        milestones = previous.milestones if keep and previous else {}
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO sends VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, NULL)",
                (*_where(dest), json.dumps(args), started, now, json.dumps(milestones)),
            )
        return SendRecord(dest, args, started, None, milestones, None)

    def update(
        self, dest: Destination, *, milestones: dict[str, float] | None = None, error: str | None = None, finished: bool = False
    ) -> None:
        with self._transaction() as db:
            if milestones is not None:
                db.execute("UPDATE sends SET milestones=? WHERE " + _WHERE, (json.dumps(milestones), *_where(dest)))
            db.execute("UPDATE sends SET updated_at=?, error=? WHERE " + _WHERE, (utc_now(), error, *_where(dest)))
            if finished:
                db.execute("UPDATE sends SET finished_at=? WHERE " + _WHERE, (utc_now(), *_where(dest)))

    def restart(self, dest: Destination) -> str:
        """The send carries another image than the earlier one to this place (a rescan): a new clock; returns it."""
        now = utc_now()
        with self._transaction() as db:
            db.execute("UPDATE sends SET started_at=?, updated_at=?, milestones='{}' WHERE " + _WHERE, (now, now, *_where(dest)))
        return now

    def fail(self, dest: Destination, reason: str) -> None:
        """The send was given up and its objects deleted: never resume it, and forget what the server held."""
        with self._transaction() as db:
            db.execute("UPDATE sends SET updated_at=?, finished_at=?, error=? WHERE " + _WHERE, (utc_now(), utc_now(), reason, *_where(dest)))
            db.execute("DELETE FROM objects WHERE " + _WHERE, _where(dest))

    def send(self, dest: Destination) -> SendRecord | None:
        with self._transaction() as db:
            row = db.execute("SELECT * FROM sends WHERE " + _WHERE, _where(dest)).fetchone()
        return _record(row) if row else None

    def unfinished(self) -> list[SendRecord]:
        """Sends that neither completed nor were given up, oldest first: what `slidestream resume` picks up."""
        with self._transaction() as db:
            rows = db.execute("SELECT * FROM sends WHERE finished_at IS NULL ORDER BY started_at").fetchall()
        return [_record(row) for row in rows]

    def completed_since(self, since: str, limit: int) -> list[SendRecord]:
        """Sends that completed at `since` or later, newest first, at most `limit`: those whose pieces the centre may
        still find corrupt and ask for again while the station holds the slide."""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM sends WHERE finished_at >= ? AND error IS NULL ORDER BY finished_at DESC LIMIT ?", (since, limit)
            ).fetchall()
        return [_record(row) for row in rows]


_WHERE = "endpoint=? AND bucket=? AND prefix=? AND case_id=?"


def _where(dest: Destination) -> tuple[str, str, str, str]:
    """The column `case_id` holds the slide version's root (stations/{station}/{case}/slides/{slide}/{version}): one send per version."""
    return dest.journal_endpoint, dest.bucket, dest.prefix, dest.ref.root


def _record(row: tuple[Any, ...]) -> SendRecord:
    endpoint, bucket, prefix, root, args, started, _updated, finished, milestones, error = row
    ref = SlideRef.parse(root) if "/" in root else SlideRef(root)  # journals from before slides: the case's one slide
    dest = Destination(None if endpoint == "aws" else endpoint, bucket, prefix, ref.case, ref.slide, ref.version)
    return SendRecord(dest, json.loads(args), started, finished, json.loads(milestones), error)
