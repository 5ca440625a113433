"""The durable queue behind the station's outboxes to the hospital's systems (`hospital.mllp.Outbox` for the LIS,
`hospital.fhir.Outbox` for the FHIR server): what both promise is kept here once, and each protocol only says how
one entry is sent and what the answer means (a delivery function returning an `Outcome`).

- The queue is a SQLite file (WAL, synced on each commit), 0600 in a 0700 folder: it holds the patients' identity.
- Each entry is kept under its key (an HL7 control ID, a report identifier): queueing it again changes nothing.
- Entries go out in queue order, and one waits while an earlier entry of its thread (its case) is still queued: the
  receiver never sees an amendment before what it corrects.
- delivered: never sent again; only its key and the receiver's answer stay (the identity it carried is dropped);
- refused: kept whole with the reason and never sent again (the same entry would earn the same refusal): the station
  says one line, a person decides;
- retry: sent again later, the wait doubling from RETRY_FIRST up to RETRY_LONGEST; the round goes on with the others;
- unreachable: nothing was sent; the round stops, everything stays queued, and the outage is said once until the
  line said changes (a count of queued entries) or the receiver answers again.
One process delivers at a time: a lock file beside the queue (a second one's round is `busy` and does nothing).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from hospital.private import PrivateDatabase
from slides.errors import printable

RETRY_FIRST, RETRY_LONGEST = 30.0, 3600.0  # seconds before an entry the receiver did not take is sent again
QUEUED, DELIVERED, REFUSED = "queued", "delivered", "refused"
SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    sequence INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, thread TEXT NOT NULL, content TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL DEFAULT 0, reply TEXT NOT NULL DEFAULT '',
    queued_at REAL NOT NULL, done_at REAL
);
"""


@dataclass(frozen=True)
class Outcome:
    """What a delivery function made of one entry (build it with `delivered`, `refused`, `retry`, `unreachable`):
    `reply` is what the entry keeps (the receiver's answer, or why it was not taken), `line` what the station says of
    it where that differs."""

    state: Literal["delivered", "refused", "retry", "unreachable"]
    reply: str
    line: str = ""


def delivered(reply: str) -> Outcome:
    return Outcome("delivered", reply)


def refused(reason: str, line: str = "") -> Outcome:
    return Outcome("refused", reason, line)


def retry(reason: str, line: str = "") -> Outcome:
    return Outcome("retry", reason, line)


def unreachable(reason: str) -> Outcome:
    return Outcome("unreachable", reason)


Delivery = Callable[[str, str], Outcome]  # (key, content) -> what became of it


@dataclass
class Round:
    """What one `deliver` did: counts of entries delivered, refused and left queued."""

    delivered: int = 0
    refused: int = 0
    queued: int = 0
    busy: bool = False  # another process was delivering: this one did nothing


class Queue(PrivateDatabase):
    """The durable queue (see the module's docstring) in the file `path`; `name` and `items` name it and its entries
    in what it says ("HL7", "message(s)"), and its failures are raised as `error`. One connection per process."""

    def __init__(self, path: Path, name: str, items: str, error: type[Exception]) -> None:
        super().__init__(path, SCHEMA, f"{name} outbox", error)
        self._name, self._items = name, items
        self._said: str | None = None

    def _add(self, key: str, thread: str, content: str) -> bool:
        """Queues `content` under `key` behind the earlier entries of `thread`; False where `key` is queued or was
        sent already."""
        with self.transaction() as db:
            cursor = db.execute("INSERT OR IGNORE INTO entries (key, thread, content, state, queued_at) VALUES (?, ?, ?, ?, ?)",
                                (key, thread, content, QUEUED, time.time()))  # fmt: skip
            return cursor.rowcount == 1

    def _rows(self) -> list[tuple[str, str, int, str, str]]:
        """Every entry ever queued, in queue order: key, state, attempts, reply, content."""
        with self.transaction() as db:
            return db.execute("SELECT key, state, attempts, reply, content FROM entries ORDER BY sequence").fetchall()

    def _deliver(self, delivery: Delivery, say: Callable[[str], None], now: float | None) -> Round:
        """Gives the queued entries that are due to `delivery`, in order, and records each outcome. Says one line per
        refusal and retry, and an outage once until it changes."""
        descriptor = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return Round(busy=True)
            return self._round(delivery, say, time.time() if now is None else now)
        finally:
            os.close(descriptor)

    def _round(self, delivery: Delivery, say: Callable[[str], None], now: float) -> Round:
        done = Round()
        with self.transaction() as db:
            rows = db.execute("SELECT sequence, key, thread, content, attempts, next_try FROM entries WHERE state=? ORDER BY sequence",
                              (QUEUED,)).fetchall()  # fmt: skip
        waiting: set[str] = set()  # threads with an earlier entry still queued
        for sequence, key, thread, content, attempts, next_try in rows:
            if thread in waiting or next_try > now:
                waiting.add(thread)
                done.queued += 1
                continue
            outcome = delivery(key, content)
            line = printable(outcome.line or outcome.reply)
            if outcome.state == "unreachable":
                done.queued = len(rows) - done.delivered - done.refused
                outage = f"{line}; {done.queued} {self._name} {self._items} stay queued"
                if outage != self._said:
                    self._said = outage
                    say(outage)
                return done
            self._said = None  # the receiver answered: the outage is over
            if outcome.state == "delivered":
                self._finish(sequence, DELIVERED, outcome.reply, now)
                done.delivered += 1
            elif outcome.state == "refused":
                self._finish(sequence, REFUSED, outcome.reply, now)
                say(f"{line}; not sent again")
                done.refused += 1
            else:
                self._retry(sequence, attempts, now, outcome.reply)
                say(f"{line}; sent again later")
                waiting.add(thread)
                done.queued += 1
        return done

    def _retry(self, sequence: int, attempts: int, now: float, reason: str) -> None:
        wait = min(RETRY_FIRST * 2**attempts, RETRY_LONGEST)
        with self.transaction() as db:
            db.execute("UPDATE entries SET attempts=?, next_try=?, reply=? WHERE sequence=?", (attempts + 1, now + wait, reason, sequence))

    def _finish(self, sequence: int, state: str, reply: str, now: float) -> None:
        """A refused entry is kept whole (a person may send it again); a delivered one only as its key."""
        with self.transaction() as db:
            db.execute("UPDATE entries SET state=?, attempts=attempts+1, reply=?, done_at=?, content=CASE WHEN ?=? THEN '' ELSE content END "
                       "WHERE sequence=?", (state, reply, now, state, DELIVERED, sequence))  # fmt: skip
