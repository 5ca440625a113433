"""The audit log: who opened which case and slide, who signed, amended or asked what, and when.

Append-only: one new object per event, `_audit/{YYYY-MM-DD}/{stamp}_{random}.json`, never rewritten; a day's
records are one LIST. A record names the user (id, name, role) or, for a case link, only the case it opens; it
holds case and slide IDs and report numbers, never a file name or free text, so no patient identity can reach it.
Each record is signed by the centre (`caseformat.documents.AuditEvent`): one a station wrote or changed is read
back as a refusal, never as an event.
"""

from __future__ import annotations

import secrets

from caseformat.bounded import utc_now
from caseformat.documents import AuditEvent, Author, Person
from caseformat.layout import audit_folder, audit_key
from caseformat.signing import SigningKey, TrustedKeys
from objectstore import ObjectNotFoundError, Storage, read_each


async def record(storage: Storage, key: SigningKey, person: Person | None, action: str, case: str, slide: str | None = None,
                 version: str | None = None, report: int | None = None) -> None:
    """Write one event (create-only: a record is never replaced); `person` None: the holder of a case link."""
    at = utc_now()
    user = Author(person.id, person.name, person.role) if person else None
    await storage.create(audit_key(at, secrets.token_hex(4)), AuditEvent(at, action, case, user, slide, version, report).to_json(key))


async def read(storage: Storage, trusted: TrustedKeys, case: str | None = None, date: str | None = None) -> list[AuditEvent | str]:
    """The events of `date` (YYYY-MM-DD; every day when None), of one case or all, in time order, with one line per
    record that does not verify in its place (whichever case it claims: a forged record's case means nothing)."""
    try:
        listed = await storage.list(audit_folder(date).rstrip("/"))
    except ObjectNotFoundError:
        return []
    records = sorted((info for info in listed if info.key.endswith(".json")), key=lambda info: info.key)
    events = await read_each(storage, records, lambda data, key: AuditEvent.read(data, key, trusted))
    return [event for event in events if isinstance(event, str) or case is None or event.case == case]


def who_text(event: AuditEvent) -> str:
    """A record's user as a table shows it: 'Dr A (u1234abcd, pathologist)', or 'case link (CASE)'."""
    if event.user is None:
        return f"case link ({event.case})"
    return f"{event.user.name} ({event.user.id}, {event.user.role})"
