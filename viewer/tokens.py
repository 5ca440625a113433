"""Access tokens: HMAC-signed, expiring, each good for one scope (one case), or naming one person; and sessions.

A case token is a capability: whoever holds the link may view that one case until it expires (never sign it), so
any number of people can look at the same case at once; each carries an ID, so one link can be revoked (a line in
the centre's `revoked-links` file, `slidestream users revoke-link`). Case tokens travel in the URL *fragment*
(never sent to the server, never in its logs) and then in an `Authorization: Bearer` header.

A person's token (their sign-in link) names the user and the serial of their record on the store
(viewer/people.py), and the link's own ID. It is spent once: the page hands it to the server, which opens a
session (an HttpOnly cookie holding a random ID) and the page drops the token from its address, so the
link's secret stays out of history, bookmarks and copied addresses. Sessions themselves: viewer/sessions.py.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from datetime import timedelta
from pathlib import Path

from itsdangerous import BadData, URLSafeSerializer

from caseformat.layout import CASE_PATTERN, is_case
from slides import SlidestreamError

CASE_ID = CASE_PATTERN  # {station}.{local}: caseformat.layout's case IDs
WORKLIST = "worklist"
PERSON = "person"
MIN_SECRET_BYTES = 32
VERIFIED_TOKENS = 4096  # signatures remembered as checked: far more than the people signed in at once
LINK_ID = re.compile(r"^[0-9a-f]{12}$")
SESSION_COOKIE = "slidestream-session"  # viewer/sessions.py's
SESSIONS_FILE = "viewer-sessions.json"
REVOKED_LINKS_FILE = "revoked-links"
RECHECK_SECONDS = 1.0  # how stale the revoked links read may be


class AccessError(SlidestreamError, PermissionError):
    """Base of the two refusals below."""


class TokenError(AccessError):
    """No token, or one that is malformed, forged or expired (HTTP 401)."""


class ScopeError(AccessError):
    """A valid token for something else: another case, or the worklist (HTTP 403)."""


class SecretError(SlidestreamError, OSError):
    """The signing secret (or the sessions file) cannot be read, or the secret is too short."""


class LinkIdError(SlidestreamError, ValueError):
    """Not a link ID (a typo on the command line)."""


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header; None for any other scheme or none."""
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def case_scope(case: str) -> str:
    if not is_case(case):
        raise ValueError(f"invalid case id {case!r}")
    return f"case:{case}"


class Tokens:
    """Issue and check tokens with one secret (HMAC-SHA256 through itsdangerous)."""

    def __init__(self, secret: bytes) -> None:
        self._serializer = URLSafeSerializer(secret, salt="slidestream-viewer/1", signer_kwargs={"digest_method": hashlib.sha256})
        # tokens whose signature was checked, with their claims: every tile request carries the same few tokens,
        # and a check's HMAC and JSON (~60 µs) were a quarter of what a tile from memory costs the server
        self._verified: dict[str, dict[str, object]] = {}

    def issue(self, scope: str, lifetime: timedelta) -> str:
        """A case token, with the ID that revokes it alone (`link_id`)."""
        return self._serializer.dumps({"scope": scope, "id": secrets.token_hex(6), "exp": int(time.time() + lifetime.total_seconds())})

    def issue_person(self, user: str, serial: int, lifetime: timedelta) -> str:
        """A person's sign-in token: spent once for a session, while their record on the store has the same serial."""
        return self._serializer.dumps({"scope": PERSON, "user": user, "serial": serial, "id": secrets.token_hex(6),
                                       "exp": int(time.time() + lifetime.total_seconds())})  # fmt: skip

    def link_id(self, token: str) -> str:
        """The ID of a genuine token (what `revoke-link` takes), expired or not."""
        return str(self._verify(token)["id"])

    def check(self, token: str | None, scope: str) -> None:
        """Return quietly when `token` grants `scope` now; raise `TokenError` or `ScopeError` otherwise."""
        claims = self.claims(token)
        if not secrets.compare_digest(claims["scope"], scope):
            raise ScopeError("this token does not open that")

    def claims(self, token: str | None) -> dict[str, object]:
        """What a genuine, unexpired token says (its scope, and a person's user and serial); `TokenError` otherwise."""
        if not token:
            raise TokenError("no access token")
        claims = self._verified.get(token) or self._verify(token)
        if claims["exp"] <= time.time():  # type: ignore[operator]
            raise TokenError("access token expired")
        return claims

    def _verify(self, token: str) -> dict[str, object]:
        try:
            claims = self._serializer.loads(token)
        except BadData:
            raise TokenError("invalid access token") from None
        if (not isinstance(claims, dict) or not isinstance(claims.get("exp"), int) or not isinstance(claims.get("scope"), str)
                or not isinstance(claims.get("id"), str)):
            raise TokenError("invalid access token")
        if claims["scope"] == PERSON and not (isinstance(claims.get("user"), str) and isinstance(claims.get("serial"), int)):
            raise TokenError("invalid access token")
        if len(self._verified) >= VERIFIED_TOKENS:
            self._verified.clear()
        self._verified[token] = claims
        return claims


class RevokedLinks:
    """The IDs of case links revoked one by one: one per line of the centre's `revoked-links` file (re-read when it
    changes, checked at most once a second)."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._ids: frozenset[str] = frozenset()
        self._seen: tuple[int, int] | None = None
        self._checked = 0.0

    def __contains__(self, link: str) -> bool:
        if self._path is not None and time.monotonic() - self._checked > RECHECK_SECONDS:
            self._reload(self._path)
        return link in self._ids

    def _reload(self, path: Path) -> None:
        self._checked = time.monotonic()
        try:
            stat = path.stat()
        except FileNotFoundError:
            self._ids, self._seen = frozenset(), None
            return
        if self._seen != (stat.st_mtime_ns, stat.st_size):
            self._ids = frozenset(line.split("#")[0].strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines())
            self._seen = (stat.st_mtime_ns, stat.st_size)


def revoke_link(folder: Path, link: str) -> Path:
    """Add a case link's ID to `folder`'s revoked links (the viewer refuses the link within a second)."""
    if not LINK_ID.fullmatch(link):
        raise LinkIdError(f"{link!r} is not a link ID (12 hex digits, as `users case-link` prints it)")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)  # the centre's key folder: private
    path = folder / REVOKED_LINKS_FILE
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "a", encoding="ascii") as file:
        file.write(f"{link}\n")
    return path


def load_secret(secret_file: Path | None = None) -> bytes:
    """`secret_file`, else $SLIDESTREAM_SECRET, else the state dir's secret (created on first use, mode 0600).

    A stable secret keeps printed links valid across restarts; deleting it revokes every link at once.
    """
    if secret_file is not None:
        try:
            secret = secret_file.read_bytes().strip()
        except OSError as error:
            raise SecretError(f"{secret_file}: cannot read the secret: {error.strerror or error}") from None
        where = str(secret_file)
    elif os.environ.get("SLIDESTREAM_SECRET"):
        secret, where = os.environ["SLIDESTREAM_SECRET"].encode(), "SLIDESTREAM_SECRET"
    else:
        path = default_secret_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # exclusive and private from the first byte: two servers starting at once agree on one secret
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="ascii") as file:
                file.write(secrets.token_urlsafe(48))
        except FileExistsError:
            pass
        except OSError as error:
            raise SecretError(f"{path}: cannot create the secret: {error.strerror or error}") from None
        secret, where = path.read_bytes().strip(), str(path)
    if len(secret) < MIN_SECRET_BYTES:
        raise SecretError(f"{where}: the secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret


def default_secret_path() -> Path:
    """$XDG_STATE_HOME/slidestream/viewer-secret, else ~/.local/state/slidestream/viewer-secret."""
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "slidestream" / "viewer-secret"
