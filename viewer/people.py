"""The centre's users: named pathologists and hospital stations, one record each at `_people/{id}.json`.

The store holds no secret: a person's sign-in link is a token signed with the viewer's secret (viewer/tokens.py)
that names the user and the record's `serial`; it is spent once on a session. Revoking a user, or giving them a new
link, bumps the serial, so every earlier link and every session opened with one stops working at once; the viewer
checks each request against the record (cached a second).
A record is the centre's word: signed with the centre's key (`caseformat.documents.Person`) and verified on every
read, so a station that can write to the store cannot promote its user, un-revoke one or make up a new one.
`slidestream users` administers the records; the viewer reads them.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from caseformat.bounded import parse_time, utc_now
from caseformat.documents import NAME_LIMIT, ROLES, STATION, USER_PATTERN, Person
from caseformat.errors import DocumentError
from caseformat.layout import people_folder, person_key, validate_station
from caseformat.signing import SigningKey, TrustedKeys
from objectstore import ObjectNotFoundError, Storage, read_each
from slides import SlidestreamError
from viewer.tokens import AccessError, Tokens

LINK_LIFETIME = timedelta(days=7)  # a sign-in link unused this long is refused: time enough to reach its owner


class PeopleError(SlidestreamError, ValueError):
    """No such user, or a request the user list cannot take (a bad name, role or duration)."""


class RevokedError(AccessError):
    """A person's token whose record was revoked or has expired, or does not verify (HTTP 403, saying which)."""


def record_key(user: str) -> str:
    """_people/{id}.json of a user ID checked first (an ID typed on the command line)."""
    if not USER_PATTERN.fullmatch(user):
        raise PeopleError(f"{user!r} is not a user ID (u and 8 hex digits, as `slidestream users list` shows them)")
    return person_key(user)


def parse_duration(text: str) -> timedelta:
    """7d, 12h, 30m, 2w: how long a user's access lasts."""
    match = re.fullmatch(r"([1-9][0-9]{0,4})([mhdw])", text.strip())
    if not match:
        raise PeopleError(f"--expires {text!r}: expected a number and a unit (30m, 12h, 7d, 2w)")
    unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


async def get_person(storage: Storage, user: str, trusted: TrustedKeys) -> Person | None:
    """The user's record as the centre signed it; None when there is none, `DocumentError` when the object there is
    not the centre's (unsigned, forged, changed, or another user's record copied over it)."""
    key = record_key(user)
    try:
        return read_person(await storage.get(key), key, trusted)
    except ObjectNotFoundError:
        return None


def read_person(data: bytes, key: str, trusted: TrustedKeys) -> Person:
    """The record at `key` as the centre signed it for the user the key names; `DocumentError` otherwise."""
    person = Person.read(data, key, trusted)
    if record_key(person.id) != key:
        raise DocumentError(f"{key}: holds the record of {person.id}; refused")
    return person


async def add_person(storage: Storage, key: SigningKey, name: str, role: str, expires: timedelta | None = None,
                     station: str | None = None) -> Person:
    """A new user with a fresh ID (created only if the ID is free: two administrators never share one). A station
    user names the enrolled station whose cases they see."""
    name = " ".join(name.split())
    if not name or len(name) > NAME_LIMIT:
        raise PeopleError(f"a user's name must be 1-{NAME_LIMIT} characters")
    if role not in ROLES:
        raise PeopleError(f"--role {role!r}: expected one of {', '.join(ROLES)}")
    if (role == STATION) != (station is not None):
        raise PeopleError("--station STATION_ID is required for --role station, and only for it")
    if station is not None:
        validate_station(station)
    now = datetime.now(UTC)
    while True:
        person = Person(f"u{secrets.token_hex(4)}", name, role, utc_now(now), utc_now(now + expires) if expires else None, station=station)
        if await storage.create(person_key(person.id), person.to_json(key)):
            return person


async def list_people(storage: Storage, trusted: TrustedKeys) -> tuple[list[Person], list[str]]:
    """Every user whose record verifies, and one line per record that does not (shown, never trusted)."""
    try:
        listed = await storage.list(people_folder().rstrip("/"))
    except ObjectNotFoundError:
        return [], []
    records = [info for info in listed if USER_PATTERN.fullmatch(info.key.rsplit("/", 1)[-1].removesuffix(".json"))]
    found = await read_each(storage, records, lambda data, key: read_person(data, key, trusted))
    people = sorted((person for person in found if isinstance(person, Person)), key=lambda person: (person.created_at, person.id))
    return people, [refusal for refusal in found if isinstance(refusal, str)]


async def revoke_person(storage: Storage, key: SigningKey, trusted: TrustedKeys, user: str) -> Person:
    """Revoked for good: every link of theirs stops working (the serial moves on too)."""
    person = await _existing(storage, trusted, user)
    revoked = replace(person, revoked_at=person.revoked_at or utc_now(), serial=person.serial + 1)
    await storage.put(person_key(user), revoked.to_json(key))
    return revoked


async def renew_link(storage: Storage, key: SigningKey, trusted: TrustedKeys, user: str) -> Person:
    """A new serial: the link made from it works, the earlier ones stop. A revoked user gets no link."""
    person = await _existing(storage, trusted, user)
    if person.revoked_at:
        raise PeopleError(f"user {user} ({person.name}) was revoked at {person.revoked_at}; add them again for new access")
    renewed = replace(person, serial=person.serial + 1)
    await storage.put(person_key(user), renewed.to_json(key))
    return renewed


async def _existing(storage: Storage, trusted: TrustedKeys, user: str) -> Person:
    person = await get_person(storage, user, trusted)
    if person is None:
        raise PeopleError(f"no user {user} on {storage.location}")
    return person


def sign_in_link(tokens: Tokens, person: Person, viewer_url: str) -> str:
    """The person's link: the worklist, with a token to be spent within `LINK_LIFETIME` (or before their access ends)."""
    lifetime = min(parse_time(person.expires_at) - datetime.now(UTC), LINK_LIFETIME) if person.expires_at else LINK_LIFETIME
    return f"{viewer_url.rstrip('/')}/worklist#token={tokens.issue_person(person.id, person.serial, lifetime)}"


def describe(person: Person) -> dict[str, Any]:
    """A row of `users list`."""
    state = "revoked" if person.revoked_at else "expired" if person.refusal(datetime.now(UTC)) else "active"
    return {"id": person.id, "name": person.name, "role": person.role, "state": state, "created": person.created_at,
            "expires": person.expires_at or "-", "station": person.station or "-"}
