"""Sign-in links become sessions (issue #25): a person's link is spent once on an HttpOnly, SameSite=Strict session
cookie, the page drops the token from its address, and the session ends when it expires, when its holder signs out,
or when the person is revoked or given a new link. Against the viewer in this process (a local store), and once in
Chromium."""

from __future__ import annotations

import asyncio
import stat
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from conftest import S3Server
from support import wait_for
from support.viewer import CENTRE_KEY, SECRET, TRUSTED, Bucket, Served, serving, wait_on

from caseformat.documents import PATHOLOGIST, Person
from viewer import LocalStorage, Tokens, create_app
from viewer.people import add_person, renew_link, revoke_person
from viewer.tokens import SESSION_COOKIE, SESSIONS_FILE


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    (tmp_path / "store").mkdir()
    return LocalStorage(tmp_path / "store")


def added(storage: LocalStorage, name: str = "Dr Ana Ruiz") -> Person:
    return asyncio.run(add_person(storage, CENTRE_KEY, name, PATHOLOGIST))


def link_of(served: Served, person: Person, lifetime: timedelta = timedelta(days=7)) -> str:
    return served.tokens.issue_person(person.id, person.serial, lifetime)


def sign_in(served: Served, link: str, cookie: str | None = None) -> httpx.Response:
    """What the worklist page does with its link's token."""
    headers = {"Authorization": f"Bearer {link}", **({"Cookie": f"{SESSION_COOKIE}={cookie}"} if cookie else {})}
    return httpx.post(f"{served.url}/api/session", headers=headers, timeout=30)


def me(served: Served, session: str) -> httpx.Response:
    return httpx.get(f"{served.url}/api/me", headers={"Cookie": f"{SESSION_COOKIE}={session}"}, timeout=30)


def test_a_sign_in_link_opens_one_session_once_with_a_private_cookie(store: LocalStorage) -> None:
    person = added(store)
    with serving(store) as served:
        link = link_of(served, person)
        opened = sign_in(served, link)
        assert opened.status_code == 200, opened.text
        assert opened.json()["user"] == {"id": person.id, "name": "Dr Ana Ruiz", "role": "pathologist"}
        cookie = opened.headers["set-cookie"]
        attributes = {part.strip().partition("=")[0].lower(): part.strip().partition("=")[2] for part in cookie.split(";")[1:]}
        assert "httponly" in attributes and attributes["samesite"].lower() == "strict" and attributes["path"] == "/"
        assert attributes["max-age"] == str(12 * 3600) and "secure" not in attributes  # plain http here: see the https test
        session = opened.cookies[SESSION_COOKIE]
        assert link not in cookie and session not in link
        assert me(served, session).json() == {"user": opened.json()["user"], "case": None, "session": True}
        assert httpx.get(f"{served.url}/api/worklist", headers={"Cookie": f"{SESSION_COOKIE}={session}"}).status_code == 200

        # the link is spent: not again, not as an access token; a browser already signed in as them keeps its session
        again = sign_in(served, link)
        assert again.status_code == 401 and again.json()["detail"].startswith("this sign-in link was used already")
        bearer = httpx.get(f"{served.url}/api/me", headers={"Authorization": f"Bearer {link}"})
        assert bearer.status_code == 401 and "sign-in link opens a session" in bearer.json()["detail"]
        kept = sign_in(served, link, cookie=session)
        assert kept.status_code == 200 and SESSION_COOKIE not in kept.cookies
        # a case link opens no session; nothing signs in without a cookie
        assert sign_in(served, served.token("h1.case1")).status_code == 401
        assert httpx.get(f"{served.url}/api/me").status_code == 401
        assert me(served, "made-up").status_code == 401


def test_an_expired_sign_in_link_opens_nothing(store: LocalStorage) -> None:
    with serving(store) as served:
        refused = sign_in(served, link_of(served, added(store), timedelta(seconds=-1)))
        assert refused.status_code == 401 and refused.json()["detail"] == "access token expired"


def test_the_cookie_is_secure_over_https(store: LocalStorage) -> None:
    person = added(store)
    tokens = Tokens(SECRET)
    app = create_app(store, tokens, CENTRE_KEY, TRUSTED)

    async def over_https() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://viewer.example") as client:
            link = tokens.issue_person(person.id, person.serial, timedelta(days=1))
            return await client.post("/api/session", headers={"Authorization": f"Bearer {link}"})

    opened = asyncio.run(over_https())
    assert opened.status_code == 200, opened.text
    assert "secure" in [part.strip().lower() for part in opened.headers["set-cookie"].split(";")]


def test_sign_out_ends_the_session_on_the_server(store: LocalStorage) -> None:
    with serving(store) as served:
        session = sign_in(served, link_of(served, added(store))).cookies[SESSION_COOKIE]
        assert me(served, session).status_code == 200
        out = httpx.post(f"{served.url}/api/session/end", headers={"Cookie": f"{SESSION_COOKIE}={session}"})
        assert out.status_code == 200 and SESSION_COOKIE in out.headers["set-cookie"]
        assert "max-age=0" in out.headers["set-cookie"].lower()  # the browser forgets it too
        after = me(served, session)  # a copy of the cookie kept elsewhere is refused as well
        assert after.status_code == 401 and after.json()["detail"].startswith("this session has ended")


def test_revocation_or_a_new_link_ends_every_session_of_the_person(store: LocalStorage) -> None:
    ana, ben = added(store), added(store, "Dr Ben Okafor")
    with serving(store) as served:
        # two browsers of Ana's (two links, one serial), one of Ben's
        anas = [sign_in(served, link_of(served, ana)).cookies[SESSION_COOKIE] for _ in range(2)]
        bens = sign_in(served, link_of(served, ben)).cookies[SESSION_COOKIE]
        assert [me(served, session).status_code for session in [*anas, bens]] == [200, 200, 200]
        asyncio.run(revoke_person(store, CENTRE_KEY, TRUSTED, ana.id))
        wait_for(lambda: all(me(served, session).status_code == 403 for session in anas), "Ana's sessions refused")
        assert "was revoked" in me(served, anas[0]).json()["detail"]
        assert me(served, bens).status_code == 200
        asyncio.run(renew_link(store, CENTRE_KEY, TRUSTED, ben.id))  # a new link: the sessions of the old one end
        wait_for(lambda: me(served, bens).status_code == 401, "Ben's old session refused")
        assert "replaced by a newer one" in me(served, bens).json()["detail"]


def test_an_expired_session_is_refused(store: LocalStorage) -> None:
    with serving(store, session_lifetime=timedelta(seconds=1)) as served:  # type: ignore[arg-type]
        session = sign_in(served, link_of(served, added(store))).cookies[SESSION_COOKIE]
        assert me(served, session).status_code == 200
        time.sleep(1.2)
        expired = me(served, session)
        assert expired.status_code == 401 and expired.json()["detail"].startswith("this session has expired")


def test_sessions_outlive_a_restart_and_their_file_holds_no_cookie(store: LocalStorage, tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    person = added(store)
    with serving(store, folder=folder) as served:  # type: ignore[arg-type]
        link = link_of(served, person)
        session = sign_in(served, link).cookies[SESSION_COOKIE]
    kept = folder / SESSIONS_FILE
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and session not in kept.read_text() and link not in kept.read_text()
    with serving(store, folder=folder) as served:  # type: ignore[arg-type]
        assert me(served, session).status_code == 200
        assert sign_in(served, link).status_code == 401  # still spent
        httpx.post(f"{served.url}/api/session/end", headers={"Cookie": f"{SESSION_COOKIE}={session}"})
    with serving(store, folder=folder) as served:  # type: ignore[arg-type]
        assert me(served, session).status_code == 401  # still signed out


@pytest.fixture
def case_store(s3_server: S3Server) -> Iterator[Bucket]:
    bucket = Bucket(s3_server)
    bucket.send("h1.case1")
    yield bucket


def test_in_the_browser_the_link_leaves_the_address_and_a_copied_case_address_holds_no_token(page, case_store: Bucket) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    with serving(case_store.storage()) as served:
        link = served.person(case_store.storage())
        page.goto(f"{served.url}/worklist#token={link}")
        rows = page.locator("#cases tbody tr")
        wait_on(page, lambda: rows.count() == 1, "the worklist signed in")
        assert page.evaluate("location.href") == f"{served.url}/worklist"
        assert link not in page.content() and page.evaluate("document.cookie") == ""  # HttpOnly: no script reads it
        (cookie,) = page.context.cookies()
        assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (SESSION_COOKIE, True, "Strict")
        assert all("token" not in href for href in page.locator("a").evaluate_all("links => links.map(a => a.href)"))

        rows.first.locator("a").click()
        wait_on(page, lambda: page.locator("#who").text_content() == "Dr Test Pathologist (pathologist)", "the case, signed in")
        assert page.url == f"{served.url}/view/h1.case1"  # what a copied address holds: no token
        page.go_back()
        wait_on(page, lambda: rows.count() == 1, "the worklist again")
        assert page.url == f"{served.url}/worklist"  # the history entry holds no token either

        page.locator("#sign-out").click()
        wait_on(page, lambda: page.locator("#message").is_visible(), "the page signed out")
        assert page.locator("#message").text_content().startswith("Access refused")
        status = page.evaluate("fetch('/api/me').then(response => response.status)")
        assert status == 401
        page.goto("about:blank")  # a new load: a changed #fragment alone would not reload the page
        page.goto(f"{served.url}/worklist#token={link}")  # the link again: spent
        wait_on(page, lambda: page.locator("#message").is_visible(), "the spent link's refusal")
        assert "used already" in page.locator("#message").text_content()
        assert page.evaluate("location.href") == f"{served.url}/worklist"
