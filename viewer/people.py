"""The centre's users: named pathologists and hospital stations, one record each at `_people/{id}.json`.

The store holds no secret: a person's sign-in link is a token signed with the viewer's secret (viewer/tokens.py)
that names the user and the record's `serial`. Revoking a user, or giving them a new link, bumps the serial, so
every earlier link stops working at once; the viewer checks each request against the record (cached a second).
`slidestream users` administers the records; the viewer reads them.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from slides import SlidestreamError
from caseformat.layout import PEOPLE
from viewer.storage import ObjectNotFoundError, Storage
from viewer.tokens import AccessError, Tokens

PATHOLOGIST, STATION = "pathologist", "station"
ROLES = (PATHOLOGIST, STATION)
PEOPLE_FORMAT = "slidestream-person/1"
NAME_LIMIT = 100
USER_PATTERN = re.compile(r"u[0-9a-f]{8}")
LINK_LIFETIME = timedelta(days=365)  # links of a user without expiry: revocation, not time, ends them


class PeopleError(SlidestreamError, ValueError):
    """No such user, or a request the user list cannot take (a bad name, role or duration)."""


class RevokedError(AccessError):
    """A person's token whose record was revoked or has expired (HTTP 403, saying which)."""


@dataclass(frozen=True)
class Person:
    """One user's record: who they are to the centre, and until when their links work."""

    id: str
    name: str
    role: str
    created_at: str
    expires_at: str | None = None
    revoked_at: str | None = None
    serial: int = 1

    @property
    def who(self) -> dict[str, str]:
        """How the audit log and reports name them."""
        return {"id": self.id, "name": self.name, "role": self.role}

    def refusal(self, now: datetime) -> str | None:
        """Why this person's links do not work now, or None."""
        if self.revoked_at:
            return f"user {self.id} ({self.name}) was revoked at {self.revoked_at}; ask the centre for access"
        if self.expires_at and parse_time(self.expires_at) <= now:
            return f"the access of user {self.id} ({self.name}) expired at {self.expires_at}; ask the centre to renew it"
        return None

    def to_json(self) -> bytes:
        return json.dumps({"format": PEOPLE_FORMAT, **asdict(self)}, indent=1).encode()

    @classmethod
    def parse(cls, data: bytes) -> Person | None:
        try:
            document = json.loads(data)
            return cls(**{name: document[name] for name in ("id", "name", "role", "created_at", "expires_at", "revoked_at", "serial")})
        except (ValueError, KeyError, TypeError):
            return None


def person_key(user: str) -> str:
    return f"{PEOPLE}/{validate_user(user)}.json"


def validate_user(user: str) -> str:
    if not USER_PATTERN.fullmatch(user):
        raise PeopleError(f"{user!r} is not a user ID (u and 8 hex digits, as `slidestream users list` shows them)")
    return user


def parse_duration(text: str) -> timedelta:
    """7d, 12h, 30m, 2w: how long a user's access lasts."""
    match = re.fullmatch(r"([1-9][0-9]{0,4})([mhdw])", text.strip())
    if not match:
        raise PeopleError(f"--expires {text!r}: expected a number and a unit (30m, 12h, 7d, 2w)")
    unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def now_text(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).isoformat(timespec="seconds").replace("+00:00", "Z")


async def get_person(storage: Storage, user: str) -> Person | None:
    try:
        return Person.parse(await storage.get(person_key(user)))
    except ObjectNotFoundError:
        return None


async def add_person(storage: Storage, name: str, role: str, expires: timedelta | None = None) -> Person:
    """A new user with a fresh ID (created only if the ID is free: two administrators never share one)."""
    name = " ".join(name.split())
    if not name or len(name) > NAME_LIMIT:
        raise PeopleError(f"a user's name must be 1-{NAME_LIMIT} characters")
    if role not in ROLES:
        raise PeopleError(f"--role {role!r}: expected one of {', '.join(ROLES)}")
    now = datetime.now(UTC)
    while True:
        person = Person(f"u{secrets.token_hex(4)}", name, role, now_text(now), now_text(now + expires) if expires else None)
        if await storage.create(person_key(person.id), person.to_json()):
            return person


async def list_people(storage: Storage) -> list[Person]:
    try:
        listed = await storage.list(PEOPLE)
    except ObjectNotFoundError:
        return []
    found = [await get_person(storage, info.key.rsplit("/", 1)[-1].removesuffix(".json")) for info in listed
             if USER_PATTERN.fullmatch(info.key.rsplit("/", 1)[-1].removesuffix(".json"))]
    return sorted((person for person in found if person), key=lambda person: (person.created_at, person.id))


async def revoke_person(storage: Storage, user: str) -> Person:
    """Revoked for good: every link of theirs stops working (the serial moves on too)."""
    person = await _existing(storage, user)
    revoked = replace(person, revoked_at=person.revoked_at or now_text(), serial=person.serial + 1)
    await storage.put(person_key(user), revoked.to_json())
    return revoked


async def renew_link(storage: Storage, user: str) -> Person:
    """A new serial: the link made from it works, the earlier ones stop. A revoked user gets no link."""
    person = await _existing(storage, user)
    if person.revoked_at:
        raise PeopleError(f"user {user} ({person.name}) was revoked at {person.revoked_at}; add them again for new access")
    renewed = replace(person, serial=person.serial + 1)
    await storage.put(person_key(user), renewed.to_json())
    return renewed


async def _existing(storage: Storage, user: str) -> Person:
    person = await get_person(storage, user)
    if person is None:
        raise PeopleError(f"no user {user} on {storage.location}")
    return person


def sign_in_link(tokens: Tokens, person: Person, viewer_url: str) -> str:
    """The person's link: the worklist, with a token good until their access ends (or a year)."""
    lifetime = parse_time(person.expires_at) - datetime.now(UTC) if person.expires_at else LINK_LIFETIME
    return f"{viewer_url.rstrip('/')}/worklist#token={tokens.issue_person(person.id, person.serial, lifetime)}"


def describe(person: Person) -> dict[str, Any]:
    """A row of `users list`."""
    state = "revoked" if person.revoked_at else "expired" if person.refusal(datetime.now(UTC)) else "active"
    return {"id": person.id, "name": person.name, "role": person.role, "state": state, "created": person.created_at,
            "expires": person.expires_at or "-"}
