"""The audit log: who opened which case and slide, who signed, amended or asked what, and when.

Append-only: one new object per event, `_audit/{YYYY-MM-DD}/{stamp}_{random}.json`, never rewritten; a day's
records are one LIST. A record names the user (id, name, role) or, for a case link, only the case it opens; it
holds case and slide IDs and report numbers, never a file name or free text, so no patient identity can reach it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import UTC, datetime
from typing import Any

from caseformat.layout import AUDIT, stamp
from viewer.storage import ObjectNotFoundError, Storage

AUDIT_FORMAT = "slidestream-audit/1"
ACTIONS = ("open-case", "open-slide", "sign", "amend", "request", "annotate")


async def record(storage: Storage, who: dict[str, str], action: str, case: str, slide: str | None = None,
                 version: str | None = None, report: int | None = None) -> None:
    """Write one event (create-only: a record is never replaced)."""
    assert action in ACTIONS, action
    at = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    event = {"format": AUDIT_FORMAT, "at": at, "user": who, "action": action, "case": case, "slide": slide,
             "version": version, "report": report}
    await storage.create(f"{AUDIT}/{at[:10]}/{stamp(at)}_{secrets.token_hex(4)}.json", json.dumps(event).encode())


async def read(storage: Storage, case: str | None = None, date: str | None = None) -> list[dict[str, Any]]:
    """The events of `date` (YYYY-MM-DD; every day when None), of one case or all, in time order."""
    try:
        listed = await storage.list(f"{AUDIT}/{date}" if date else AUDIT)
    except ObjectNotFoundError:
        return []
    keys = sorted(info.key for info in listed if info.key.endswith(".json"))
    limit = asyncio.Semaphore(16)

    async def load(key: str) -> dict[str, Any] | None:
        async with limit:
            try:
                event = json.loads(await storage.get(key))
            except (ObjectNotFoundError, ValueError):
                return None
        return event if isinstance(event, dict) else None

    events = [event for event in await asyncio.gather(*(load(key) for key in keys)) if event]
    return [event for event in events if case is None or event.get("case") == case]


def who_text(who: Any) -> str:
    """A record's user as a table shows it: 'Dr A (u1234abcd, pathologist)', or 'case link (CASE)'."""
    if isinstance(who, dict) and "case_token" in who:
        return f"case link ({who['case_token']})"
    if isinstance(who, dict):
        return f"{who.get('name')} ({who.get('id')}, {who.get('role')})"
    return "?"
