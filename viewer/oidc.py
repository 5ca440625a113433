"""Sign-in through the centre's directory: OpenID Connect, beside the personal sign-in links and case links.

The authorization code flow with PKCE (S256), a state and a nonce (authlib's Starlette client; what it keeps between
the redirect and the callback lies in a signed cookie of its own, path /auth/oidc, ten minutes). The ID token is
verified by authlib: its signature against the provider's JWKS, its issuer (the configured one), its audience (our
client ID), its nonce and its expiry. The user's groups (the `groups_claim` of the token) map to a role by the
config; a user of no mapped group is refused (403, one line) and gets no session.

A person signed in by the directory is a named user like any other: their record on the store
(`caseformat.documents.Person`, signed by the centre) is found or created at their first sign-in, under an ID derived
from the issuer and their subject, so the same person keeps one ID, signs reports by name, is in the audit log by
it, and can be revoked by the centre (`slidestream users revoke`) even while the directory still lets them in. Their
session is the viewer's usual one (viewer/sessions.py: expiry, idle logout, sign-out, checked against the record on
every request).
"""

from __future__ import annotations

import hashlib
import secrets
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.middleware.sessions import SessionMiddleware

from caseformat.bounded import utc_now
from caseformat.documents import NAME_LIMIT, PATHOLOGIST, SIGN_IN, Person
from caseformat.errors import DocumentError
from caseformat.layout import person_key
from slides.errors import printable
from viewer.people import get_person
from viewer.sessions import OIDC
from viewer.tokens import SESSION_COOKIE

if TYPE_CHECKING:
    from authlib.integrations.starlette_client import StarletteOAuth2App

PENDING_COOKIE = "slidestream-oidc"  # the state, nonce and PKCE verifier between the redirect and the callback
PENDING_SECONDS = 600  # how long a sign-in may stay at the provider's page
CALLBACK = "/auth/oidc/callback"
DIRECTORY_ROLES = (PATHOLOGIST,)  # a station signs in by its link: it needs a station ID no directory group carries


@dataclass(frozen=True)
class OidcSettings:
    """The `[viewer.oidc]` table: the provider, this viewer's client registration there, and which groups may sign
    in as what (group -> role)."""

    issuer: str
    client_id: str
    client_secret: str
    groups: dict[str, str] = field(default_factory=dict)
    groups_claim: str = "groups"
    scopes: str = "openid profile email"


def directory_user(issuer: str, subject: str) -> str:
    """The user ID of a directory subject: the same at every sign-in, another for the same subject elsewhere."""
    named = f"{issuer}\n{subject}".encode()
    return f"u{hashlib.sha256(named).hexdigest()[:8]}"


def role_of(settings: OidcSettings, claims: dict[str, Any]) -> str | None:
    """The role the user's groups grant (None: none of them is in the config)."""
    groups = claims.get(settings.groups_claim)
    groups = [groups] if isinstance(groups, str) else groups if isinstance(groups, list) else []
    roles = {settings.groups[group] for group in groups if isinstance(group, str) and group in settings.groups}
    return next((role for role in DIRECTORY_ROLES if role in roles), None)


def name_of(claims: dict[str, Any]) -> str:
    """How reports and the audit log name them: the token's name, else e-mail, else user name, else subject."""
    for claim in ("name", "email", "preferred_username", "sub"):
        value = claims.get(claim)
        if isinstance(value, str) and value.split():
            return " ".join(value.split())[:NAME_LIMIT]
    return "directory user"


router = APIRouter()


def _client(request: Request) -> tuple[OidcSettings, StarletteOAuth2App]:
    return request.app.state.oidc  # type: ignore[no-any-return]


@router.get("/auth/oidc")
async def directory(request: Request) -> JSONResponse:
    """Whether the worklist offers "Sign in" (this route exists only when the viewer has a directory)."""
    settings, _ = _client(request)
    return JSONResponse({"issuer": settings.issuer, "sign_in": "/auth/oidc/login"}, headers={"Cache-Control": "no-store"})


@router.get("/auth/oidc/login", include_in_schema=False)
async def sign_in(request: Request) -> Response:
    """To the provider's sign-in page, with a fresh state, nonce and PKCE challenge."""
    _, client = _client(request)
    redirect = str(request.url.replace(path=CALLBACK, query=None, fragment=None))
    return await client.authorize_redirect(request, redirect)  # type: ignore[no-any-return]


@router.get(CALLBACK, include_in_schema=False)
async def callback(request: Request) -> Response:
    """Back from the provider: a verified ID token of a user whose group grants a role opens a session."""
    from authlib.integrations.starlette_client import OAuthError

    settings, client = _client(request)
    state = request.app.state.viewer
    try:
        token = await client.authorize_access_token(request, claims_options={"iss": {"essential": True, "value": settings.issuer}})
    except (OAuthError, ValueError) as error:  # a forged, replayed or expired sign-in, or a token that does not verify
        return _refused(401, f"sign-in through {settings.issuer} failed: {printable(str(error))}")
    finally:
        request.session.clear()
    claims = dict(token.get("userinfo") or {})
    if not isinstance(claims.get("sub"), str):
        return _refused(401, f"sign-in through {settings.issuer} failed: no verified ID token")
    name = name_of(claims)
    role = role_of(settings, claims)
    if role is None:
        return _refused(403, f"{printable(name)} is in no group that may use this viewer ({', '.join(sorted(settings.groups))})")
    try:
        person = await _person(state, directory_user(settings.issuer, claims["sub"]), name, role)
    except DocumentError as error:
        return _refused(403, f"{printable(name)} is refused: {printable(str(error))}")
    refusal = person.refusal(datetime.now(UTC))
    if refusal or person.role != role:
        return _refused(403, printable(refusal or f"user {person.id} ({person.name}) is a {person.role} here, not a {role}"))
    session = state.sessions.open_signed_in(person.id, person.serial)
    await state.signed(person, SIGN_IN, OIDC)
    response = RedirectResponse("/worklist", 303)
    response.set_cookie(SESSION_COOKIE, session, max_age=int(state.sessions.lifetime.total_seconds()), path="/",
                        secure=request.url.scheme == "https", httponly=True, samesite="strict")  # fmt: skip
    return response


async def _person(state: Any, user: str, name: str, role: str) -> Person:
    """The directory user's record, created (signed by the centre) at their first sign-in."""
    person = await get_person(state.storage, user, state.trusted)
    if person is None:
        person = Person(user, name, role, utc_now())
        if not await state.storage.create(person_key(user), person.to_json(state.key)):  # their other sign-in made it first
            person = await get_person(state.storage, user, state.trusted)
            assert person is not None
    return person


def _refused(status: int, line: str) -> PlainTextResponse:
    """The browser landed here from the provider: one line it shows as it is."""
    return PlainTextResponse(line, status, headers={"Cache-Control": "no-store"})


def install_directory(app: FastAPI, settings: OidcSettings) -> None:
    """The directory's routes, its client (the provider's metadata and keys are fetched at the first sign-in) and
    the cookie of a sign-in under way. Authlib is imported here: a viewer without a directory never loads it."""
    with warnings.catch_warnings():  # authlib 1.9 asks for httpx2 and, without it, works with httpx (which we have)
        warnings.filterwarnings("ignore", "The httpx module is deprecated")
        from authlib.integrations.starlette_client import OAuth
    oauth = OAuth()
    client = oauth.register("directory", client_id=settings.client_id, client_secret=settings.client_secret,
                            server_metadata_url=f"{settings.issuer.rstrip('/')}/.well-known/openid-configuration",
                            client_kwargs={"scope": settings.scopes, "code_challenge_method": "S256"})  # fmt: skip
    app.state.oidc = (settings, client)
    app.include_router(router)
    app.add_middleware(SessionMiddleware, secret_key=secrets.token_urlsafe(32), session_cookie=PENDING_COOKIE, max_age=PENDING_SECONDS,
                       path="/auth/oidc", same_site="lax")  # fmt: skip
