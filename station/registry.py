"""The hospital's local registry: the one place that maps what the hospital knows to what leaves it.

A specimen (an accession number, a hot-folder subfolder, or a slide file sent alone) gets a random case ID; each of
its slide files a slide number (s1, s2, ...) and each scan of that slide a version (v1, v2, ...). The patient's
identity (name, patient ID, birth date, accession) is kept here and nowhere else: the store only ever sees the case
ID, the slide and version numbers and the clinical context. Its tables live in the journal's SQLite file
(STATE/journal.sqlite3, WAL), so `send`, `watch` and `status` on one machine share it and one file holds all the
station's state: private, 0600 in a 0700 folder (`hospital.private.PrivateDatabase`).

Rules (`Registry.lookup` finds, station/station.py decides and claims on the store):
- the same file again (same path, size, mtime and sample digest; or the same size and sample digest and, confirmed,
  the same full SHA-256) is a resend: the same slide version, nothing new on the store;
- another file at a slide's path is a rescan: the same case and slide, the next version;
- anything else is a new slide of its specimen's case (a new specimen: a new case).

A specimen is recorded here before the store hears of it (the registry is the registration's idempotency key: a
retry, a timeout or a restart finds the same case and clock); `unpublished` holds the cases whose case.json the store
has not confirmed yet. `deliveries` is the outbox's ledger: each (case, kind, number) delivered once, with the
digest of the text delivered, whichever way (a `_notices/` notice or the case's own reports) it came.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from caseformat.layout import SlideRef, version_number
from hospital.private import STATE_FILE, PrivateDatabase
from transfer.errors import JournalError

SCHEMA = """
CREATE TABLE IF NOT EXISTS specimens (
    store TEXT NOT NULL, case_id TEXT NOT NULL, source TEXT, name TEXT NOT NULL, identity TEXT NOT NULL DEFAULT '{}',
    context TEXT NOT NULL DEFAULT '{}', station TEXT, registered_at TEXT NOT NULL,
    PRIMARY KEY (store, case_id), UNIQUE (store, source)
);
CREATE TABLE IF NOT EXISTS slides (
    store TEXT NOT NULL, case_id TEXT NOT NULL, slide TEXT NOT NULL, path TEXT NOT NULL, claim TEXT NOT NULL,
    PRIMARY KEY (store, case_id, slide)
);
CREATE TABLE IF NOT EXISTS versions (
    store TEXT NOT NULL, case_id TEXT NOT NULL, slide TEXT NOT NULL, version TEXT NOT NULL, path TEXT NOT NULL,
    size INTEGER NOT NULL, mtime REAL NOT NULL, sample TEXT NOT NULL, sha256 TEXT,
    PRIMARY KEY (store, case_id, slide, version)
);
CREATE TABLE IF NOT EXISTS cursors (store TEXT NOT NULL, station TEXT NOT NULL, last_key TEXT NOT NULL, PRIMARY KEY (store, station));
CREATE TABLE IF NOT EXISTS unpublished (store TEXT NOT NULL, case_id TEXT NOT NULL, PRIMARY KEY (store, case_id));
CREATE TABLE IF NOT EXISTS deliveries (
    store TEXT NOT NULL, case_id TEXT NOT NULL, kind TEXT NOT NULL, number INTEGER NOT NULL, digest TEXT NOT NULL,
    final INTEGER NOT NULL, PRIMARY KEY (store, case_id, kind, number)
);
"""
CASE_ID_BYTES = 8  # 16 hex digits: random, never derived from the content or a name


def storable(text: str) -> str:
    """A file name as SQLite can hold it: names that are not UTF-8 keep their odd bytes as backslash escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def new_case_id() -> str:
    return secrets.token_hex(CASE_ID_BYTES)


class StoreLike(Protocol):
    """A destination or a station's store: what names a store."""

    @property
    def journal_endpoint(self) -> str: ...

    bucket: str
    prefix: str


def store_key(dest: StoreLike) -> str:
    """A store as the registry keys it: endpoint, bucket and prefix (a case ID is unique within one)."""
    return f"{dest.journal_endpoint} {dest.bucket} {dest.prefix}"


@dataclass(frozen=True)
class Specimen:
    """A registered specimen: its case on the store and what the hospital knows of it."""

    case: str
    name: str  # the local name (a folder's or a file's): shown at the hospital, never sent
    source: str | None  # "accession:A", "folder:PATH" or None (a file sent alone)
    identity: dict[str, str] = field(default_factory=dict)
    context: dict[str, str] = field(default_factory=dict)
    station: str | None = None
    registered_at: str = ""


@dataclass(frozen=True)
class FileFacts:
    """What the registry compares of a slide file: where it is, its size and mtime, and its sample digest."""

    path: str
    size: int
    mtime: float
    sample: str


class Registry(PrivateDatabase):
    """The registry's tables in the station's state file, beside the send journal's."""

    def __init__(self, state_dir: Path) -> None:
        super().__init__(Path(state_dir) / STATE_FILE, SCHEMA, "registry", JournalError)

    # -- specimens -------------------------------------------------------------------------------------------
    def specimen(self, store: str, *, case: str | None = None, source: str | None = None) -> Specimen | None:
        column, value = ("case_id", case) if case is not None else ("source", source and storable(source))
        rows = self.rows(f"SELECT case_id, name, source, identity, context, station, registered_at FROM specimens WHERE store=? AND {column}=?", store, value)
        if not rows:
            return None
        case_id, name, source_, identity, context, station, registered_at = rows[0]
        return Specimen(case_id, name, source_, json.loads(identity), json.loads(context), station, registered_at)

    def specimens(self, store: str | None = None) -> list[tuple[str, Specimen]]:
        """(store, specimen) of every registered specimen, oldest first."""
        rows = self.rows("SELECT store, case_id FROM specimens" + (" WHERE store=?" if store else "") + " ORDER BY registered_at",
                          *([store] if store else []))  # fmt: skip
        return [(row[0], specimen) for row in rows if (specimen := self.specimen(row[0], case=row[1])) is not None]

    def add_specimen(self, store: str, specimen: Specimen, unpublished: bool = False) -> None:
        """Records `specimen`; with `unpublished`, as not yet on the store (see `published`), in the same commit."""
        with self.transaction() as db:
            db.execute("INSERT INTO specimens VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (store, specimen.case, specimen.source and storable(specimen.source), storable(specimen.name), json.dumps(specimen.identity),
                        json.dumps(specimen.context), specimen.station, specimen.registered_at))  # fmt: skip
            if unpublished:
                db.execute("INSERT OR IGNORE INTO unpublished VALUES (?, ?)", (store, specimen.case))

    def unpublished(self, store: str, case: str) -> bool:
        """Whether `case` was registered here and the store has not confirmed its case.json yet."""
        return bool(self.rows("SELECT 1 FROM unpublished WHERE store=? AND case_id=?", store, case))

    def published(self, store: str, case: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM unpublished WHERE store=? AND case_id=?", (store, case))

    # -- slides and versions ---------------------------------------------------------------------------------
    def slides(self, store: str, case: str) -> dict[str, str]:
        """slide -> its local path, of one case."""
        return dict(self.rows("SELECT slide, path FROM slides WHERE store=? AND case_id=?", store, case))

    def versions(self, store: str, case: str, slide: str) -> list[str]:
        rows = self.rows("SELECT version FROM versions WHERE store=? AND case_id=? AND slide=?", store, case, slide)
        return sorted((row[0] for row in rows), key=version_number)

    def slide_at(self, store: str, path: str, case: str | None = None) -> tuple[str, str] | None:
        """(case, slide) of the slide whose local path is `path` (of `case`, when given): a rescan's."""
        rows = self.rows("SELECT case_id, slide FROM slides WHERE store=? AND path=?" + (" AND case_id=?" if case else ""),
                          store, path, *([case] if case else []))  # fmt: skip
        return (rows[-1][0], rows[-1][1]) if rows else None

    def same_file(self, store: str, facts: FileFacts, case: str | None = None) -> SlideRef | None:
        """The version sent from this very file: same path, size, mtime and sample digest."""
        rows = self.rows("SELECT case_id, slide, version FROM versions WHERE store=? AND path=? AND size=? AND mtime=? AND sample=?"
                          + (" AND case_id=?" if case else ""), store, facts.path, facts.size, facts.mtime, facts.sample,
                          *([case] if case else []))  # fmt: skip
        return SlideRef(*rows[-1]) if rows else None

    def same_sample(self, store: str, facts: FileFacts, case: str | None = None) -> list[tuple[SlideRef, str, float, str | None]]:
        """Versions whose size and sample digest match (the same bytes, unless they differ mid-file): (version,
        its path, its mtime, its full SHA-256 when known)."""
        rows = self.rows("SELECT case_id, slide, version, path, mtime, sha256 FROM versions WHERE store=? AND size=? AND sample=?"
                          + (" AND case_id=?" if case else ""), store, facts.size, facts.sample, *([case] if case else []))  # fmt: skip
        return [(SlideRef(c, s, v), path, mtime, sha) for c, s, v, path, mtime, sha in rows]

    def claim(self, store: str, case: str, slide: str) -> str | None:
        """The slide.json this station claims its slide with (the same bytes at every send of the slide)."""
        rows = self.rows("SELECT claim FROM slides WHERE store=? AND case_id=? AND slide=?", store, case, slide)
        return rows[0][0] if rows else None

    def add_version(self, store: str, ref: SlideRef, facts: FileFacts, sha256: str | None = None, claim: str | None = None) -> None:
        """Remember `ref` as sent from this file (its slide, with its `claim`, the first time)."""
        with self.transaction() as db:
            if claim is not None:
                db.execute("INSERT OR REPLACE INTO slides VALUES (?, ?, ?, ?, ?)", (store, ref.case, ref.slide, facts.path, claim))
            else:
                db.execute("UPDATE slides SET path=? WHERE store=? AND case_id=? AND slide=?", (facts.path, store, ref.case, ref.slide))
            db.execute("INSERT INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (store, ref.case, ref.slide, ref.version, facts.path, facts.size, facts.mtime, facts.sample, sha256))  # fmt: skip

    def forget(self, store: str, ref: SlideRef) -> None:
        """A version that could not be sent as numbered (another station took its slide number)."""
        with self.transaction() as db:
            db.execute("DELETE FROM versions WHERE store=? AND case_id=? AND slide=? AND version=?", (store, ref.case, ref.slide, ref.version))
            if not db.execute("SELECT 1 FROM versions WHERE store=? AND case_id=? AND slide=?", (store, ref.case, ref.slide)).fetchone():
                db.execute("DELETE FROM slides WHERE store=? AND case_id=? AND slide=?", (store, ref.case, ref.slide))

    def forget_specimen(self, store: str, case: str) -> None:
        """A specimen registered for a send that could not start, unless it has slides by now."""
        with self.transaction() as db:
            if not db.execute("SELECT 1 FROM slides WHERE store=? AND case_id=?", (store, case)).fetchone():
                db.execute("DELETE FROM specimens WHERE store=? AND case_id=?", (store, case))
                db.execute("DELETE FROM unpublished WHERE store=? AND case_id=?", (store, case))

    def set_sha256(self, store: str, ref: SlideRef, sha256: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE versions SET sha256=? WHERE store=? AND case_id=? AND slide=? AND version=?",
                       (sha256, store, ref.case, ref.slide, ref.version))  # fmt: skip

    def version_file(self, store: str, ref: SlideRef) -> tuple[str, str | None] | None:
        """(path, full SHA-256 when known) of the file a version was sent from."""
        rows = self.rows("SELECT path, sha256 FROM versions WHERE store=? AND case_id=? AND slide=? AND version=?", store, ref.case, ref.slide, ref.version)
        return rows[0] if rows else None

    # -- what comes back -------------------------------------------------------------------------------------
    def cursor(self, store: str, station: str) -> str:
        """The last `_notices/` key handled for this station (notices sort in time order)."""
        rows = self.rows("SELECT last_key FROM cursors WHERE store=? AND station=?", store, station)
        return rows[0][0] if rows else ""

    def set_cursor(self, store: str, station: str, key: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO cursors VALUES (?, ?, ?)", (store, station, key))

    def delivered(self, store: str, case: str, kind: str, number: int) -> str | None:
        """The digest of the text delivered for (case, kind, number); None while none was."""
        rows = self.rows("SELECT digest FROM deliveries WHERE store=? AND case_id=? AND kind=? AND number=?", store, case, kind, number)
        return rows[0][0] if rows else None

    def delivered_numbers(self, store: str, case: str, kind: str) -> set[int]:
        return {row[0] for row in self.rows("SELECT number FROM deliveries WHERE store=? AND case_id=? AND kind=?", store, case, kind)}

    def has_final(self, store: str, case: str) -> bool:
        """Whether a final report of `case` was delivered: an amendment then corrects it (HL7 C, FHIR amended)."""
        return bool(self.rows("SELECT 1 FROM deliveries WHERE store=? AND case_id=? AND kind='report' AND final=1", store, case))

    def set_delivered(self, store: str, case: str, kind: str, number: int, digest: str, final: bool) -> None:
        """Records a delivery; the first one recorded for a number stays (a delivered number is never delivered again)."""
        with self.transaction() as db:
            db.execute("INSERT OR IGNORE INTO deliveries VALUES (?, ?, ?, ?, ?, ?)", (store, case, kind, number, digest, int(final)))

    def recent_cases(self, store: str, station: str, since: str) -> list[tuple[str, bool]]:
        """Cases `station` registered at `since` or later, oldest first, each with whether a final report was
        delivered: their reports are still looked for, since an amendment may follow a final report."""
        rows = self.rows("SELECT case_id, EXISTS (SELECT 1 FROM deliveries d WHERE d.store=s.store AND d.case_id=s.case_id "
                          "AND d.final=1) FROM specimens s WHERE store=? AND station=? AND registered_at>=? ORDER BY registered_at",
                          store, station, since)  # fmt: skip
        return [(row[0], bool(row[1])) for row in rows]
