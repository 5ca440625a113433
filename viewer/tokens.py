"""Access tokens: HMAC-signed, expiring, each good for one scope (one case), or naming one person.

A case token is a capability: whoever holds the link may view that one case until it expires (never sign it), so
any number of people can look at the same case at once. A person's token (their sign-in link) names the user and
the serial of their record on the store (viewer/people.py): the server checks it against that record, so a
revocation or a new link ends the old ones without any secret on the store. Tokens travel in the URL *fragment*
(never sent to the server, never in its logs) and then in an `Authorization: Bearer` header.
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

from slides import SlidestreamError

CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
WORKLIST = "worklist"
PERSON = "person"
MIN_SECRET_BYTES = 32
VERIFIED_TOKENS = 4096  # signatures remembered as checked: far more than the people signed in at once


class AccessError(SlidestreamError, PermissionError):
    """Base of the two refusals below."""


class TokenError(AccessError):
    """No token, or one that is malformed, forged or expired (HTTP 401)."""


class ScopeError(AccessError):
    """A valid token for something else: another case, or the worklist (HTTP 403)."""


class SecretError(SlidestreamError, OSError):
    """The signing secret cannot be read or is too short."""


def case_scope(case: str) -> str:
    if not CASE_ID.fullmatch(case):
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
        return self._serializer.dumps({"scope": scope, "exp": int(time.time() + lifetime.total_seconds())})

    def issue_person(self, user: str, serial: int, lifetime: timedelta) -> str:
        """A person's sign-in token: good while their record on the store has the same serial (and is valid)."""
        return self._serializer.dumps({"scope": PERSON, "user": user, "serial": serial, "exp": int(time.time() + lifetime.total_seconds())})

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
        if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int) or not isinstance(claims.get("scope"), str):
            raise TokenError("invalid access token")
        if claims["scope"] == PERSON and not (isinstance(claims.get("user"), str) and isinstance(claims.get("serial"), int)):
            raise TokenError("invalid access token")
        if len(self._verified) >= VERIFIED_TOKENS:
            self._verified.clear()
        self._verified[token] = claims
        return claims


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
