"""People's sessions: opened by a sign-in link (spent once) or by the centre's directory (OpenID Connect,
viewer/oidc.py), held by an HttpOnly SameSite=Strict cookie of a random ID.

A session ends when it expires (`lifetime`, --session-hours), when its holder signs out, after `idle` without a
request of theirs (--idle-minutes: a workstation left signed in signs itself out; the pages' own polls do not count),
or when the person's record moves on (revocation, a new link): the viewer checks it against that record on every
request. Every sign-in and sign-out is in the audit log with the method its session was opened by.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from caseformat.bounded import utc_now
from caseformat.documents import SIGN_IN_METHODS, AuditEvent, Author, Person
from caseformat.layout import audit_key
from caseformat.signing import SigningKey
from objectstore import Storage
from viewer.tokens import SecretError, TokenError

LINK, OIDC = SIGN_IN_METHODS
IDLE = timedelta(minutes=30)


@dataclass(frozen=True)
class Session:
    """Who a session cookie signs in: the user, the serial of their record it was opened with, until when, how it was
    opened, and when its holder last made a request (kept in memory: a restart gives everyone a fresh idle span)."""

    user: str
    serial: int
    expires: float  # seconds since the epoch
    method: str = LINK
    seen: float = 0.0


class Sessions:
    """The viewer's sessions, and the sign-in links spent on them, kept in `path` (0600) so a restart signs no one
    out and a spent link stays spent; in memory only without one (tests).

    Sessions are kept by the SHA-256 of their ID: the file holds nothing a browser could present."""

    def __init__(self, lifetime: timedelta, path: Path | None = None, idle: timedelta = IDLE) -> None:
        self.lifetime = lifetime
        self.idle = idle
        self._path = path
        self._sessions: dict[str, Session] = {}
        self._spent: dict[str, float] = {}  # link ID -> when the link expires (after which it is refused anyway)
        if path is not None and path.exists():
            now = time.time()
            try:
                kept = json.loads(path.read_text(encoding="utf-8"))
                # a file written before sessions had a method holds link sessions only
                self._sessions = {key: Session(str(user), int(serial), float(expires), str(method[0]) if method else LINK, now)
                                  for key, (user, serial, expires, *method) in kept["sessions"].items()}  # fmt: skip
                self._spent = {str(link): float(expires) for link, expires in kept["spent"].items()}
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
                raise SecretError(f"{path}: cannot read the viewer's sessions ({error}); delete it to sign everyone out") from None

    def open(self, user: str, serial: int, link: str, link_expires: float) -> str:
        """A new session for the holder of sign-in link `link`, which is spent by it; `TokenError` for a spent link."""
        if link in self._spent:
            raise TokenError("this sign-in link was used already: ask for a new one (slidestream users link)")
        self._spent[link] = link_expires
        return self._start(user, serial, LINK)

    def open_signed_in(self, user: str, serial: int) -> str:
        """A new session for a person the centre's directory signed in (no link to spend)."""
        return self._start(user, serial, OIDC)

    def spend(self, link: str, link_expires: float) -> None:
        """Spend a link without a new session (its holder was signed in already)."""
        if link not in self._spent:
            self._spent[link] = link_expires
            self._save()

    def get(self, session_id: str | None, active: bool = True) -> Session:
        """The live session with this ID; `TokenError` for none, an ended, an expired or an idle one. `active`: a
        request of its holder's (not a page's poll), which restarts the idle span."""
        if not session_id:
            raise TokenError("not signed in: open your sign-in link, or sign in")
        key = _hashed(session_id)
        session = self._sessions.get(key)
        if session is None:
            raise TokenError("this session has ended (signed out, or the viewer's sessions were cleared): sign in again")
        now = time.time()
        if session.expires <= now:
            raise TokenError("this session has expired: sign in again")
        if session.seen + self.idle.total_seconds() <= now:
            self.end(session_id)
            raise TokenError(f"signed out after {self.idle.total_seconds() / 60:g} minutes without activity: sign in again")
        if active:
            self._sessions[key] = session = replace(session, seen=now)
        return session

    def end(self, session_id: str | None) -> Session | None:
        """End the session (sign-out); the session it was, None when there was none."""
        session = self._sessions.pop(_hashed(session_id), None) if session_id else None
        if session is not None:
            self._save()
        return session

    def _start(self, user: str, serial: int, method: str) -> str:
        session_id = secrets.token_urlsafe(32)
        now = time.time()
        self._sessions[_hashed(session_id)] = Session(user, serial, now + self.lifetime.total_seconds(), method, now)
        self._save()
        return session_id

    def _save(self) -> None:
        """Write what is live now (expired sessions and links dropped), privately, replacing the file whole."""
        now = time.time()
        self._sessions = {key: session for key, session in self._sessions.items() if session.expires > now}
        self._spent = {link: expires for link, expires in self._spent.items() if expires > now}
        if self._path is None:
            return
        kept = {"sessions": {key: [s.user, s.serial, s.expires, s.method] for key, s in self._sessions.items()}, "spent": self._spent}
        partial = self._path.with_name(f".{self._path.name}.{os.getpid()}")
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as file:
            json.dump(kept, file)
        os.replace(partial, self._path)


def _hashed(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


async def record_sign_in(storage: Storage, key: SigningKey, person: Person, action: str, method: str) -> None:
    """One audit event of a sign-in or sign-out (no case: it opens none), with how the session was opened."""
    at = utc_now()
    event = AuditEvent(at, action, None, Author(person.id, person.name, person.role), method=method)
    await storage.create(audit_key(at, secrets.token_hex(4)), event.to_json(key))
