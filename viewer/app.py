"""The viewer's HTTP side: static pages, a JSON and tile API guarded by case links and people's sessions.

Pages carry no data. A case link's token comes in the URL fragment and goes as a Bearer header, so it never reaches
URLs, logs or Referer headers; it is checked by its signature and the revoked links. A person's sign-in link
(/worklist#token=...) is spent once at POST /api/session for a session cookie (HttpOnly, SameSite=Strict, Secure on
https; viewer/sessions.py), and the page drops the token from its address; each request's session is
checked against the person's record on the store (viewer/people.py, cached a second), so a revoked or expired user,
or one given a new link, is refused at their next request. The same session comes from sign-in through the centre's
directory (OpenID Connect, viewer/oidc.py); sessions expire and idle out. "Sign out" ends the session here. Only a
named pathologist opens the worklist, signs, amends, annotates or asks the hospital; every case open, slide open, report
action and annotation is written to the audit log (viewer/audit.py) with who did it. Every refusal and every bad
request is a 4xx; a store that fails answers 502.

What the centre writes for others (reports, requests, their station copies, people, annotations, audit events) is
signed with the centre's key and verified against its trusted keys on every read: a station, which can write to
the store, cannot make the viewer show a report, grant access or record an event the centre did not sign. A
refused document is a visible line (a case's `refused` list), never shown as genuine.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import mimetypes
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Cookie, Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from caseformat.bounded import utc_now
from caseformat.documents import PATHOLOGIST, SIGN_IN, SIGN_OUT, STATION, Author, Person, SlideRead
from caseformat.documents import Request as HospitalRequest
from caseformat.errors import DocumentError, InvalidIdError, SendFailedError
from caseformat.layout import GROSS_TOKEN, SLIDE_PATTERN, VERSION_PATTERN, SlideRef, person_key, station_of
from caseformat.signing import SigningKey, TrustedKeys
from objectstore import InvalidKeyError, ObjectNotFoundError, Storage, StorageError
from slides.errors import printable
from viewer import annotations, audit, gross, turnaround
from viewer.cache import AsyncCache
from viewer.cases import Cases
from viewer.image import (
    BACKGROUND,
    PENDING,
    CaseNotFoundError,
    ImageError,
    TileNotFoundError,
)
from viewer.oidc import OidcSettings, install_directory
from viewer.people import RevokedError, get_person
from viewer.reports import MAX_TEXT, ReportConflict, ReportIn, RequestIn, ask, numbered, order_states, sign
from viewer.sessions import IDLE, LINK, Sessions, record_sign_in
from viewer.summary import UNREADABLE
from viewer.tiles import TILE_CACHE_BYTES
from viewer.tokens import (
    CASE_ID,
    PERSON,
    REVOKED_LINKS_FILE,
    SESSION_COOKIE,
    SESSIONS_FILE,
    AccessError,
    RevokedLinks,
    ScopeError,
    TokenError,
    Tokens,
    bearer,
    case_scope,
)
from viewer.worklist import OpenCases

STATIC = Path(__file__).with_name("static")
# the pages' shared module (viewer-core.mjs): a system whose MIME table lacks .mjs would serve it as text/plain,
# which browsers refuse to run as a module
mimetypes.add_type("text/javascript", ".mjs")
IMMUTABLE = "private, max-age=31536000, immutable"  # private: access-controlled, no shared cache may keep it
# The largest request body read: the largest body the API takes is a report of three texts of MAX_TEXT characters,
# at most 12 bytes each as JSON escapes (an astral character is two \uXXXX), plus its keys.
MAX_BODY = 12 * (3 * MAX_TEXT + 2000 + 500) + 1024  # the report form: three texts, missing_seen, late_reason; 12 bytes a character at worst
PEOPLE_TTL = 1.0  # seconds a person's record may be stale: how soon a revocation takes effect
MAX_LEVEL = 63
MAX_TILE_INDEX = 2**31
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
        b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
]

CaseId = Annotated[str, PathParam(pattern=CASE_ID.pattern)]
SlideId = Annotated[str, PathParam(pattern=f"^{SLIDE_PATTERN.pattern}$")]
VersionId = Annotated[str, PathParam(pattern=f"^{VERSION_PATTERN.pattern}$")]
Authorization = Annotated[str | None, Header()]
SessionCookie = Annotated[str | None, Cookie(alias=SESSION_COOKIE)]
# what the pages ask by themselves, every few seconds: not their user's activity, so no reason to stay signed in
POLLED = re.compile(r"/api/(worklist|cases/[^/]+/(slides|annotations|gross|slides/[^/]+/[^/]+/status))")


@dataclass(frozen=True)
class Identity:
    """Who makes a request: a user (from their record; `by_session`: signed in, so they can sign out) or the holder
    of one case's link."""

    person: Person | None = None
    case: str | None = None
    by_session: bool = False

    def pathologist(self, action: str) -> Person:
        """The signed-in pathologist, or the refusal that says who may `action`."""
        if self.person is None:
            raise ScopeError(f"a case link cannot {action}; sign in as a pathologist")
        if self.person.role != PATHOLOGIST:
            raise ScopeError(f"user {self.person.id} is a {self.person.role}; only a pathologist may {action}")
        return self.person


class ViewerState:
    """What every request needs: the cases of one store, the token signer, the sessions, the case links revoked, the
    user records and the centre's keys (its signing key for what it writes, the keys it trusts for what it reads)."""

    def __init__(self, cases: Cases, tokens: Tokens, link_lifetime: timedelta, key: SigningKey, sessions: Sessions,
                 revoked_links: RevokedLinks) -> None:
        self.cases = cases
        self.open_cases = OpenCases(cases)  # the worklist's index: built at its first poll, then kept up to date
        self.storage = cases.storage
        self.trusted = cases.trusted
        self.tokens = tokens
        self.link_lifetime = link_lifetime
        self.key = key
        self.sessions = sessions
        self.revoked_links = revoked_links
        self._people: AsyncCache[str, Person | None] = AsyncCache(1024, PEOPLE_TTL)
        # the newest serial read of each user's record: a genuine but older record written back (a revocation
        # rolled back by a station replaying the record from before it) is refused while this process runs
        self._serials: dict[str, int] = {}
        self.annotations: AsyncCache[str, dict[str, Any] | str] = AsyncCache(16384)  # never replaced: kept once read

    async def audit(self, identity: Identity, action: str, case: str, slide: str | None = None, version: str | None = None,
                    report: int | None = None) -> None:
        await audit.record(self.storage, self.key, identity.person, action, case, slide, version, report)

    async def signed(self, person: Person, action: str, method: str) -> None:
        """A sign-in or sign-out in the audit log, with how the session was opened."""
        await record_sign_in(self.storage, self.key, person, action, method)

    def case_link(self, case: str) -> str:
        return f"/view/{case}#token={self.tokens.issue(case_scope(case), self.link_lifetime)}"

    async def identify(self, token: str | None, session_id: str | None = None, active: bool = True) -> Identity:
        """Who asks: the case link of the Bearer `token`, else the person of the session cookie; `TokenError` (401)
        for neither, a bad or revoked link, an ended or idle session; `RevokedError` (403) for a user who may no
        longer. `active`: a request of the person's own (not a page's poll), which keeps the session from idling."""
        if token is None:
            session = self.sessions.get(session_id, active)
            person = await self.person(session.user, session.serial, "the session of {name} ended: their sign-in link was replaced by a newer one")
            return Identity(person=person, by_session=True)
        claims = self.tokens.claims(token)
        if claims["scope"] == PERSON:
            raise TokenError("a sign-in link opens a session on its page (/worklist#token=...), once; it is not an access token")
        if str(claims["id"]) in self.revoked_links:
            raise TokenError("this case link was revoked")
        scope = str(claims["scope"])
        return Identity(case=scope.removeprefix("case:") if scope.startswith("case:") else None)

    async def person(self, user: str, serial: int, replaced: str) -> Person:
        """The user's record if it still grants what `serial` was given with; `replaced` ({name}: theirs) says why
        not when a newer serial (a new link, a revocation) ended it."""
        try:
            person = await self._people.get(user, lambda: get_person(self.storage, user, self.trusted))
        except DocumentError as error:  # a record the centre did not sign grants nothing
            raise RevokedError(f"user {user} is refused: {printable(str(error))}") from None
        if person is None:
            raise TokenError(f"no user {user} on this store")
        newest = self._serials.setdefault(user, person.serial)
        if person.serial < newest:
            raise RevokedError(f"user {user} is refused: {person_key(user)} is older than one this viewer read (serial {person.serial}, "
                               f"not {newest}): rolled back; refused")  # fmt: skip
        self._serials[user] = person.serial
        refusal = person.refusal(datetime.now(UTC))
        if refusal:
            raise RevokedError(refusal)
        if person.serial != serial:
            raise TokenError(replaced.format(name=person.name))
        return person

    async def open_session(self, token: str | None, session_id: str | None) -> tuple[Person, str | None]:
        """Spend the sign-in link `token` on a new session: (the person, the new session's ID); None for the ID when
        the browser holds a live session of that person already (a link opened twice keeps it)."""
        claims = self.tokens.claims(token)
        if claims["scope"] != PERSON:
            raise TokenError("not a sign-in link (a case link opens its case: /view/CASE#token=...)")
        user, link, expires = str(claims["user"]), str(claims["id"]), float(claims["exp"])  # type: ignore[arg-type]
        person = await self.person(user, int(claims["serial"]), "this sign-in link of {name} was replaced by a newer one")  # type: ignore[call-overload]
        try:
            held = self.sessions.get(session_id)
        except TokenError:
            held = None
        if held is not None and held.user == user and held.serial == person.serial:
            self.sessions.spend(link, expires)
            return person, None
        return person, self.sessions.open(user, person.serial, link, expires)

    async def may_open(self, identity: Identity, case: str) -> None:
        """A case link opens its case; a pathologist every case; a station the cases of its own folder (the station
        a case ID names: `caseformat.layout.station_of`, whatever its case.json says)."""
        if identity.person is None:
            if identity.case != case:
                raise ScopeError("this token does not open that")
            return
        if identity.person.role == STATION and station_of(case) != identity.person.station:
            raise ScopeError(f"station {identity.person.station} ({identity.person.name}) did not register case {case}")


async def _state(request: Request) -> ViewerState:  # async: sync dependencies cost a thread hop each
    return request.app.state.viewer  # type: ignore[no-any-return]


State = Annotated[ViewerState, Depends(_state)]


async def _identity(request: Request, state: State, authorization: Authorization = None, session: SessionCookie = None) -> Identity:
    polled = request.method == "GET" and POLLED.fullmatch(request.url.path) is not None
    return await state.identify(bearer(authorization), session, active=not polled)


Who = Annotated[Identity, Depends(_identity)]


async def _case_access(case: CaseId, state: State, identity: Who) -> str:
    await state.may_open(identity, case)
    return case


Case = Annotated[str, Depends(_case_access)]
router = APIRouter()


# -- pages -----------------------------------------------------------------------------------------------------
@router.get("/", include_in_schema=False)
async def root() -> RedirectResponse:
    return RedirectResponse("/worklist")  # browsers carry the #token fragment across the redirect


@router.get("/worklist", include_in_schema=False)
async def worklist_page() -> FileResponse:
    return FileResponse(STATIC / "worklist.html", headers={"Cache-Control": "no-cache"})


@router.get("/view/{case}", include_in_schema=False)
async def viewer_page(case: CaseId) -> FileResponse:
    return FileResponse(STATIC / "viewer.html", headers={"Cache-Control": "no-cache"})


# -- API -------------------------------------------------------------------------------------------------------
@router.post("/api/session")
async def open_session(request: Request, state: State, authorization: Authorization = None, session: SessionCookie = None) -> JSONResponse:
    """The sign-in link's token (Bearer), spent once for a session cookie: the page then forgets the token."""
    person, opened = await state.open_session(bearer(authorization), session)
    response = JSONResponse({"user": person.who}, headers={"Cache-Control": "no-store"})
    if opened is not None:
        await state.signed(person, SIGN_IN, LINK)
        response.set_cookie(SESSION_COOKIE, opened, max_age=int(state.sessions.lifetime.total_seconds()), path="/",
                            secure=request.url.scheme == "https", httponly=True, samesite="strict")  # fmt: skip
    return response


@router.post("/api/session/end")
async def sign_out(state: State, session: SessionCookie = None) -> JSONResponse:
    """Sign out: the session ends here, whoever still holds its cookie (in the audit log, while their record is
    the centre's)."""
    ended = state.sessions.end(session)
    if ended is not None:
        try:
            person = await get_person(state.storage, ended.user, state.trusted)
        except DocumentError:
            person = None
        if person is not None:
            await state.signed(person, SIGN_OUT, ended.method)
    response = JSONResponse({"signed_out": True}, headers={"Cache-Control": "no-store"})
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/api/me")
async def me(identity: Who) -> JSONResponse:
    """Who the page is signed in as: the user's name and role (and whether by a session: it can sign out), or the
    case a case link opens."""
    body = {"user": identity.person.who, "case": None, "session": identity.by_session} if identity.person else \
        {"user": None, "case": identity.case, "session": False}  # fmt: skip
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/api/worklist")
async def worklist(state: State, identity: Who, since: Annotated[str | None, Query(max_length=64)] = None) -> JSONResponse:
    """Every case, most urgent first ("cases"); with `since`, the token of the page's last answer, only the rows
    changed and the cases removed since ("changed", "removed"). From this process's index (viewer/worklist.py)."""
    identity.pathologist("open the worklist")
    body = await state.open_cases.poll(since, datetime.now(UTC))
    for rows in ("cases", "changed"):  # the session cookie opens a row's link: no token in any address
        if rows in body:
            body[rows] = [{**entry, "link": f"/view/{entry['case']}"} for entry in body[rows]]
    return JSONResponse({"now": utc_now(), **body}, headers={"Cache-Control": "no-store"})


@router.get("/api/cases/{case}")
async def case_info(case: Case, state: State, identity: Who) -> JSONResponse:
    """The case as its page opens it, with one line per document of the case that was refused (not the centre's)."""
    info, reports, requests, (_, marks) = await asyncio.gather(
        state.cases.case_info(case), state.cases.reports(case), numbered(state.storage, case, HospitalRequest, state.trusted),
        annotations.listed(state.storage, state.trusted, case, state.annotations))  # fmt: skip
    info["refused"] = [*reports.refused, *requests.refused, *marks]
    await state.audit(identity, "open-case", case)
    return JSONResponse(info, headers={"Cache-Control": "no-cache"})


@router.get("/api/cases/{case}/slides")
async def case_slides(case: Case, state: State) -> JSONResponse:
    """The case's slides as the open page polls them (a slide sent later, one that failed since), with each one's AI
    result (the header's case score follows them): not another opening of the case, so not audited."""
    info = await state.cases.case_info(case)
    return JSONResponse({"slides": info["slides"], "triages": info["triages"]}, headers={"Cache-Control": "no-store"})


@router.get("/api/cases/{case}/slides/{slide}/{version}/image")
async def image(case: Case, slide: SlideId, version: VersionId, state: State, identity: Who) -> JSONResponse:
    root = SlideRef(case, slide, version).root
    described = (await state.cases.tiles.image(root)).describe()
    await state.audit(identity, "open-slide", case, slide, version)
    return JSONResponse(described, headers={"Cache-Control": "no-cache"})


@router.get("/api/cases/{case}/slides/{slide}/{version}/status")
async def status(case: Case, slide: SlideId, version: VersionId, state: State,
                 if_none_match: Annotated[str | None, Header()] = None) -> Response:
    """Polled by the page: unchanged status answers 304, so idle viewers cost a header exchange."""
    body = json.dumps(await state.cases.status(SlideRef(case, slide, version).root), separators=(",", ":")).encode()
    return _revalidated(body, "application/json", "no-cache", if_none_match)


@router.get("/api/cases/{case}/slides/{slide}/{version}/thumbnail")
async def thumbnail(case: Case, slide: SlideId, version: VersionId, state: State,
                    if_none_match: Annotated[str | None, Header()] = None) -> Response:
    """The slide version's picture in the case's slide strip (not an opening of the slide: not audited)."""
    return _revalidated(await state.cases.tiles.thumbnail(SlideRef(case, slide, version).root), "image/jpeg", "private, no-cache", if_none_match)


@router.get("/api/cases/{case}/slides/{slide}/{version}/macro")
async def macro(case: Case, slide: SlideId, version: VersionId, state: State,
                if_none_match: Annotated[str | None, Header()] = None) -> Response:
    """The slide version's macro image (the whole glass, its label blanked by the station), beside the slide."""
    return _revalidated(await state.cases.macro(SlideRef(case, slide, version).root), "image/jpeg", "private, no-cache", if_none_match)


def _revalidated(body: bytes, media_type: str, cache_control: str, if_none_match: str | None) -> Response:
    """`body` with an ETag of its content: 304 when the page holds it already, so polling costs a header exchange."""
    etag = f'"{hashlib.sha256(body).hexdigest()[:20]}"'
    headers = {"ETag": etag, "Cache-Control": cache_control}
    if _matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


# -- tiles: plain Starlette endpoints ---------------------------------------------------------------------------
# Nearly every request is a tile. FastAPI's per-request parameter machinery about doubled their CPU cost (measured
# with bench/bench_viewer.py), so these two check their few parameters themselves.
async def tile(request: Request) -> Response:
    """GET /api/cases/{case}/slides/{slide}/{version}/tiles/{level}/{row}/{col}: one chunk, as stored (JPEG) or as PNG (lossless images).

    Level 0 is full resolution. Not-yet-arrived chunks are a 404 that is never cached; the page shows the coarser
    level meanwhile.
    """
    state, root, level, row, col = await _tile_request(request)
    chunk = await state.cases.tiles.locate(root, level, row, col)
    if chunk == PENDING:
        return JSONResponse({"detail": "not arrived yet"}, 404, headers={"Cache-Control": "no-store", "X-Tile": "pending"})
    if chunk == BACKGROUND:
        return JSONResponse({"detail": "background"}, 404, headers={"Cache-Control": "private, max-age=86400", "X-Tile": "background"})
    assert not isinstance(chunk, str)
    headers = {"ETag": chunk.etag, "Cache-Control": IMMUTABLE}
    if _matches(request.headers.get("if-none-match"), chunk.etag):
        return Response(status_code=304, headers=headers)
    data, media_type = await state.cases.tiles.chunk_bytes(chunk)
    return Response(data, media_type=media_type, headers=headers)


async def heatmap_tile(request: Request) -> Response:
    """GET /api/cases/{case}/slides/{slide}/{version}/heatmap/{level}/{row}/{col}.png?v=VERSION: the overlay tile, PNG with alpha.

    `v` names the heatmap version the page expects: that version is immutable, anything else is not cached.
    """
    state, root, level, row, col = await _tile_request(request)
    rendered = await state.cases.heatmaps.heatmap_tile(root, level, row, col)
    if rendered is None:
        return JSONResponse({"detail": "no heatmap yet"}, 404, headers={"Cache-Control": "no-store"})
    data, version = rendered
    cache = IMMUTABLE if request.query_params.get("v") == version else "no-store"
    return Response(data, media_type="image/png", headers={"Cache-Control": cache})


async def _tile_request(request: Request) -> tuple[ViewerState, str, int, int, int]:
    """Validate the address (the route's int convertors already refused anything but digits), then the token.
    Returns the slide version's root with the tile's address."""
    case, slide, version, level, row, col = (request.path_params[name] for name in ("case", "slide", "version", "level", "row", "col"))
    if (not CASE_ID.fullmatch(case) or not SLIDE_PATTERN.fullmatch(slide) or not VERSION_PATTERN.fullmatch(version)
            or level > MAX_LEVEL or row > MAX_TILE_INDEX or col > MAX_TILE_INDEX):
        raise TileNotFoundError("no such tile")
    state: ViewerState = request.app.state.viewer
    await state.may_open(await state.identify(bearer(request.headers.get("authorization")), request.cookies.get(SESSION_COOKIE)), case)
    return state, SlideRef(case, slide, version).root, level, row, col


@router.get("/api/cases/{case}/reports")
async def reports(case: Case, state: State) -> JSONResponse:
    """The signed report and every amendment that verify, in order: the history stays readable; refused objects
    are lines beside it."""
    versions = await state.cases.reports(case)
    body = {"reports": [version.signed for version in versions.verified], "refused": versions.refused}
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.post("/api/cases/{case}/reports")
async def sign_report(case: Case, form: ReportIn, state: State, identity: Who) -> JSONResponse:
    """Sign the report (or amend the newest version): final, create-only, copied to the registering station."""
    person = identity.pathologist("sign")  # an amendment is signed too
    info = await state.cases.case_info(case)
    read_on = [SlideRead(s["slide"], s["version"]) for s in info["slides"] if s["state"] not in ("failed", UNREADABLE)]
    if not read_on:
        reasons = "; ".join(f"{s['slide']}: {s['unreadable'] or ''}" if s["state"] == UNREADABLE else f"{s['slide']}: failed: {s['failed']}"
                            for s in info["slides"]) or "no slide has arrived"  # fmt: skip
        raise ReportConflict(f"case {case} has no slide that arrived to report on ({reasons})")
    try:
        document = await sign(state.storage, state.key, state.trusted, case, form, Author(person.id, person.name), read_on, station_of(case),
                              info["missing"], info["registered_at"])  # fmt: skip
    finally:
        state.cases.forget_reports(case)
    await state.audit(identity, "sign" if document["kind"] == "signed" else "amend", case, report=document["number"])
    return JSONResponse(document, headers={"Cache-Control": "no-store"})


@router.get("/api/cases/{case}/annotations")
async def case_annotations(case: Case, state: State) -> JSONResponse:
    """Every annotation of the case (the page draws those of the slide version it shows): whoever opens the case
    sees them, a case link and the registering station included."""
    marks, refused = await annotations.listed(state.storage, state.trusted, case, state.annotations)
    return JSONResponse({"annotations": marks, "refused": refused}, headers={"Cache-Control": "no-store"})


@router.post("/api/cases/{case}/annotations")
async def annotate(case: Case, form: annotations.AnnotationIn, state: State, identity: Who) -> JSONResponse:
    """Save an annotation with its author (a signed-in pathologist) on a slide version of the case that has an image."""
    person = identity.pathologist("annotate")
    await state.cases.tiles.image(SlideRef(case, form.slide, form.version).root)  # 404 for a slide version with no image
    document = await annotations.save(state.storage, state.key, case, form, person)
    await state.audit(identity, "annotate", case, form.slide, form.version)
    return JSONResponse(document, headers={"Cache-Control": "no-store"})


@router.get("/api/cases/{case}/gross")
async def gross_photos(case: Case, state: State) -> JSONResponse:
    """The case's gross photographs (their tokens) and the marks on them, polled by the page: a photo the station
    sends later shows, and whoever opens the case sees the marks."""
    tokens, (marks, refused) = await asyncio.gather(gross.photos(state.storage, case), gross.marks(state.storage, state.trusted, case))
    return JSONResponse({"photos": tokens, "marks": marks, "refused": refused}, headers={"Cache-Control": "no-store"})


@router.get("/api/cases/{case}/gross/{token}.jpg")
async def gross_photo(case: Case, token: Annotated[str, PathParam(pattern=f"^{GROSS_TOKEN.pattern}$")], state: State,
                      if_none_match: Annotated[str | None, Header()] = None) -> Response:
    """One gross photograph, its pixels only (re-encoded here)."""
    return _revalidated(await gross.photo(state.storage, case, token), "image/jpeg", "private, no-cache", if_none_match)


@router.post("/api/cases/{case}/gross/marks")
async def mark_gross_photo(case: Case, form: gross.GrossMarkIn, state: State, identity: Who) -> JSONResponse:
    """Mark a gross photograph ("sample here", a margin line): signed with its author, copied to the station."""
    person = identity.pathologist("mark a gross photograph")
    document = await gross.save(state.storage, state.key, case, form, person)
    await state.audit(identity, "annotate", case)
    return JSONResponse(document, headers={"Cache-Control": "no-store"})


@router.get("/api/cases/{case}/requests")
async def requests(case: Case, state: State) -> JSONResponse:
    """The requests to the hospital, and how far the station got with each rework order ("orders": number -> state)."""
    versions, (orders, unread) = await asyncio.gather(numbered(state.storage, case, HospitalRequest, state.trusted),
                                                      order_states(state.storage, case))  # fmt: skip
    body = {"requests": [version.signed for version in versions.verified], "orders": orders, "refused": [*versions.refused, *unread]}
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.post("/api/cases/{case}/requests")
async def ask_hospital(case: Case, form: RequestIn, state: State, identity: Who) -> JSONResponse:
    """Ask the hospital for something (another section, a deeper level): numbered, copied to the station."""
    person = identity.pathologist("ask the hospital")
    await state.cases.case_info(case)  # 404 for a case the store does not have
    document = await ask(state.storage, state.key, state.trusted, case, form, Author(person.id, person.name), station_of(case))
    await state.audit(identity, "request", case, form.slide, report=document["number"])
    return JSONResponse(document, headers={"Cache-Control": "no-store"})


def _matches(if_none_match: str | None, etag: str) -> bool:
    return bool(if_none_match) and (if_none_match.strip() == "*" or etag in (t.strip() for t in if_none_match.split(",")))


# -- errors: 4xx for the client's mistakes, 502 for the store's --------------------------------------------------
_STATUS: list[tuple[type[Exception], int]] = [
    (TokenError, 401),
    (ScopeError, 403),
    (RevokedError, 403),
    (ReportConflict, 409),
    (CaseNotFoundError, 404),
    (SendFailedError, 404),  # no image to show, only why: the page says it
    (TileNotFoundError, 404),
    (ObjectNotFoundError, 404),
    (InvalidKeyError, 400),
    (InvalidIdError, 400),
    (ImageError, 502),
    (DocumentError, 502),  # a document on the store that is malformed or not the centre's: the store's fault
    (StorageError, 502),
]


async def _error(request: Request, error: Exception) -> JSONResponse:
    return _error_response(error)


def _error_response(error: Exception) -> JSONResponse:
    status_code = next((code for kind, code in _STATUS if isinstance(error, kind)), 500)
    return _refusal(status_code, str(error))


def _refusal(status_code: int, detail: str) -> JSONResponse:
    headers = {"Cache-Control": "no-store"}
    if status_code == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse({"detail": detail}, status_code, headers=headers)


class SecurityHeaders:
    """Adds the same protective headers to every response (a plain ASGI wrapper: no per-request task overhead)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """Reads no request body before its sender has shown a token or a live session, and none larger than `limit`.

    FastAPI reads a body whole before any dependency checks the token, so without this anyone could make the server
    hold hundreds of MB. A declared Content-Length over the limit is refused at once (413); the token is checked
    (a person's, or a case link for the case of /api/cases/CASE/...) before a byte is read
    (401/403), or the session cookie's session; a chunked body is counted while it arrives and refused when it passes the limit. What is accepted is
    read here (at most `limit` bytes) and handed to the app as is; the routes check the token again as always."""

    def __init__(self, app: ASGIApp, tokens: Tokens, sessions: Sessions, limit: int = MAX_BODY) -> None:
        self.app = app
        self.tokens = tokens
        self.sessions = sessions
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if not chunked and declared in (None, "0"):
            await self.app(scope, receive, send)  # no body
            return
        if declared is not None and not declared.isdigit():
            await _refusal(400, "invalid Content-Length")(scope, receive, send)
            return
        if declared is not None and int(declared) > self.limit:
            await self._too_large(scope, receive, send)
            return
        try:
            token = bearer(headers.get("authorization"))
            if token is None:  # a person's record is checked by the route, once the body is in
                self.sessions.get(_cookie(headers, SESSION_COOKIE))
            else:
                self.tokens.check(token, _scope_of(scope["path"]))
        except AccessError as error:
            await _error_response(error)(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await self._too_large(scope, receive, send)
                return
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _refusal(413, f"request body over {self.limit} bytes")(scope, receive, send)


def _cookie(headers: Headers, name: str) -> str | None:
    """The value of cookie `name` in the request's Cookie header(s)."""
    for header in headers.getlist("cookie"):
        for pair in header.split(";"):
            key, _, value = pair.strip().partition("=")
            if key == name:
                return value
    return None


def _scope_of(path: str) -> str:
    """The token scope a case link needs for `path`: the case's for the case API, none for anything else."""
    parts = path.split("/")
    if len(parts) > 3 and parts[1:3] == ["api", "cases"] and CASE_ID.fullmatch(parts[3]):
        return case_scope(parts[3])
    return PERSON


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body read already, then waits for the client's disconnect as usual."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def create_app(storage: Storage, tokens: Tokens, key: SigningKey, trusted: TrustedKeys, link_lifetime: timedelta = timedelta(hours=12),
               tile_cache_bytes: int = TILE_CACHE_BYTES, session_lifetime: timedelta = timedelta(hours=12),
               folder: Path | None = None, idle: timedelta = IDLE, directory: OidcSettings | None = None) -> FastAPI:
    """The viewer application for one store, signing with the centre's `key` and believing only what `trusted` keys
    signed; `app.state.viewer` mints case links. `folder` (the centre's key folder) keeps the sessions across
    restarts and the case links revoked; without one, sessions live in memory and no case link is revoked. A session
    ends after `idle` without its user's requests; `directory`: people may sign in through the centre's OpenID
    Connect provider too (viewer/oidc.py)."""
    app = FastAPI(title="slidestream viewer", docs_url=None, redoc_url=None, openapi_url=None)
    sessions = Sessions(session_lifetime, folder / SESSIONS_FILE if folder else None, idle)
    revoked = RevokedLinks(folder / REVOKED_LINKS_FILE if folder else None)
    app.state.viewer = ViewerState(Cases(storage, trusted, tile_cache_bytes), tokens, link_lifetime, key, sessions, revoked)
    # the tile routes first: Starlette tries routes in order, and nearly every request is a tile
    app.add_route("/api/cases/{case}/slides/{slide}/{version}/tiles/{level:int}/{row:int}/{col:int}", tile, methods=["GET"])
    app.add_route("/api/cases/{case}/slides/{slide}/{version}/heatmap/{level:int}/{row:int}/{col:int}.png", heatmap_tile, methods=["GET"])
    app.include_router(router)
    if directory is not None:
        install_directory(app, directory)
    app.include_router(turnaround.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for kind, _ in _STATUS:
        app.add_exception_handler(kind, _error)  # type: ignore[arg-type]
    app.add_middleware(BodyLimit, tokens=tokens, sessions=sessions)
    app.add_middleware(SecurityHeaders)  # added last: the outermost, so BodyLimit's refusals carry the headers too
    return app

