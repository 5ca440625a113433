"""Sign-in through the centre's directory (issue #29): OpenID Connect against a local provider (oidc-provider-mock,
with a registered client, nonces required), the groups claim mapped to a role by the config, sessions that expire
and idle out, and every sign-in and sign-out in the audit log with its method. In Chromium: a pathologist signs in,
reads and signs a case, and is signed out when the session ends; a user of a group without a role is refused."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import uvicorn
from conftest import S3Server
from support.viewer import CENTRE_KEY, SECRET, TRUSTED, Bucket, wait_on

from caseformat.bounded import dump
from caseformat.documents import PATHOLOGIST, SIGN_IN, SIGN_OUT, AuditEvent, Author, Report
from caseformat.errors import DocumentError
from caseformat.layout import report_key
from slidestream.config import OIDC_TABLE, load_config
from slidestream.errors import ConfigError
from viewer import LocalStorage, Tokens, create_app
from viewer.audit import read as read_audit
from viewer.oidc import OidcSettings, directory_user
from viewer.people import add_person, get_person, revoke_person
from viewer.tokens import SESSION_COOKIE

oidc_provider_mock = pytest.importorskip("oidc_provider_mock")

GROUPS = {"pathologists": PATHOLOGIST}
ANA = {"name": "Dr Ana Ruiz", "email": "ana.ruiz@centre.example", "groups": ["staff", "pathologists"]}
VIC = {"name": "Victor Visitor", "email": "victor@centre.example", "groups": ["visitors"]}


@pytest.fixture(scope="module")
def provider() -> Iterator[str]:
    """The directory: an OpenID provider on a free port that knows Ana (a pathologist) and Victor (a visitor)."""
    with oidc_provider_mock.run_server_in_thread(require_client_registration=True, require_nonce=True) as server:
        issuer = f"http://localhost:{server.server_port}"
        for subject, claims in (("ana", ANA), ("victor", VIC)):
            assert httpx.put(f"{issuer}/users/{quote(subject)}", json=claims, timeout=30).status_code == 204
        yield issuer


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    (tmp_path / "store").mkdir()
    return LocalStorage(tmp_path / "store")


@contextmanager
def viewer(storage: object, issuer: str, **options: object) -> Iterator[str]:
    """The viewer in a thread, registered at the provider as a client whose redirect URI is its callback."""
    sock = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    registered = httpx.post(f"{issuer}/oauth2/clients", json={"redirect_uris": [f"{url}/auth/oidc/callback"]}, timeout=30)
    assert registered.status_code == 201, registered.text
    client = registered.json()
    directory = OidcSettings(issuer, client["client_id"], client["client_secret"], GROUPS)
    app = create_app(storage, Tokens(SECRET), CENTRE_KEY, TRUSTED, directory=directory, **options)  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "viewer server did not start"
        time.sleep(0.02)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def signed_in(url: str, subject: str) -> tuple[httpx.Client, httpx.Response]:
    """What a browser does: the viewer's sign-in, the provider's form (who: `subject`), back to the callback."""
    client = httpx.Client(timeout=30)
    to_provider = client.get(f"{url}/auth/oidc/login")
    assert to_provider.status_code == 302, to_provider.text
    authorize = to_provider.headers["location"]
    assert "code_challenge=" in authorize and "code_challenge_method=S256" in authorize and "nonce=" in authorize and "state=" in authorize
    back = client.post(authorize, data={"sub": subject})
    assert back.status_code == 302 and back.headers["location"].startswith(f"{url}/auth/oidc/callback?"), back.text
    return client, client.get(back.headers["location"])


def audited(storage: object) -> list[AuditEvent]:
    """The audit log's events, every one verified (read in a thread of its own: Playwright's loop runs in this one)."""
    with ThreadPoolExecutor(1) as reader:
        events = reader.submit(asyncio.run, read_audit(storage, TRUSTED)).result()  # type: ignore[arg-type]
    assert all(isinstance(event, AuditEvent) for event in events)
    return events  # type: ignore[return-value]


def sign_ins(storage: object) -> list[tuple[str, str | None, str | None, str | None]]:
    """(action, method, user ID, case) of each sign-in and sign-out in the audit log, in order."""
    return [(e.action, e.method, e.user.id if e.user else None, e.case) for e in audited(storage) if e.action in (SIGN_IN, SIGN_OUT)]


def test_a_pathologist_of_the_directory_signs_in_as_a_named_user_and_out_again_both_audited(store: LocalStorage, provider: str) -> None:
    user = directory_user(provider, "ana")
    with viewer(store, provider) as url:
        client, landed = signed_in(url, "ana")
        assert landed.status_code == 303 and landed.headers["location"] == "/worklist"
        cookie = landed.headers["set-cookie"].lower()
        assert SESSION_COOKIE in cookie and "httponly" in cookie and "samesite=strict" in cookie
        me = client.get(f"{url}/api/me")
        assert me.status_code == 200 and me.json() == {"user": {"id": user, "name": "Dr Ana Ruiz", "role": "pathologist"}, "case": None, "session": True}
        assert client.get(f"{url}/api/worklist").status_code == 200
        # the same person at her next sign-in: the same user, one record on the store (signed by the centre)
        again, _ = signed_in(url, "ana")
        assert again.get(f"{url}/api/me").json()["user"]["id"] == user
        person = asyncio.run(get_person(store, user, TRUSTED))
        assert person is not None and (person.name, person.role) == ("Dr Ana Ruiz", PATHOLOGIST)

        assert client.post(f"{url}/api/session/end").status_code == 200
        assert client.get(f"{url}/api/me").status_code == 401
        assert again.get(f"{url}/api/me").status_code == 200  # her other session goes on
    assert sign_ins(store) == [(SIGN_IN, "oidc", user, None), (SIGN_IN, "oidc", user, None), (SIGN_OUT, "oidc", user, None)]


def test_a_user_of_a_group_without_a_role_is_refused_in_one_line_and_gets_no_session(store: LocalStorage, provider: str) -> None:
    with viewer(store, provider) as url:
        client, refused = signed_in(url, "victor")
        assert refused.status_code == 403
        assert refused.text == "Victor Visitor is in no group that may use this viewer (pathologists)"
        assert SESSION_COOKIE not in refused.headers.get("set-cookie", "") and client.get(f"{url}/api/me").status_code == 401
    assert asyncio.run(get_person(store, directory_user(provider, "victor"), TRUSTED)) is None
    assert sign_ins(store) == []


def test_a_forged_or_replayed_callback_opens_nothing(store: LocalStorage, provider: str) -> None:
    with viewer(store, provider) as url:
        client = httpx.Client(timeout=30)
        authorize = client.get(f"{url}/auth/oidc/login").headers["location"]
        callback = client.post(authorize, data={"sub": "ana"}).headers["location"]
        # another browser (an attacker's victim) handed this callback: it holds no sign-in of that state
        stolen = httpx.get(callback, timeout=30)
        assert stolen.status_code == 401 and stolen.text.startswith(f"sign-in through {provider} failed: ")
        assert client.get(callback).status_code == 303  # the browser that started it signs in
        replayed = client.get(callback)
        assert replayed.status_code == 401 and SESSION_COOKIE not in replayed.headers.get("set-cookie", "")
    assert [action for action, *_ in sign_ins(store)] == [SIGN_IN]


def test_a_directory_user_the_centre_revoked_is_refused_though_the_directory_lets_them_in(store: LocalStorage, provider: str) -> None:
    with viewer(store, provider) as url:
        client, _ = signed_in(url, "ana")
        revoke_person_now = asyncio.run(revoke_person(store, CENTRE_KEY, TRUSTED, directory_user(provider, "ana")))
        assert revoke_person_now.revoked_at
        time.sleep(1.1)  # the viewer reads a record at most a second old
        assert client.get(f"{url}/api/me").status_code == 403
        _, refused = signed_in(url, "ana")
        assert refused.status_code == 403 and "was revoked" in refused.text


def test_a_session_idles_out_and_the_pages_polls_do_not_keep_it(store: LocalStorage, provider: str) -> None:
    with viewer(store, provider, idle=timedelta(seconds=2)) as url:
        client, _ = signed_in(url, "ana")
        for _ in range(5):  # her requests keep her signed in
            time.sleep(0.6)
            assert client.get(f"{url}/api/me").status_code == 200
        quiet = time.monotonic()
        while (polled := client.get(f"{url}/api/worklist")).status_code == 200:  # the worklist polling by itself does not
            assert time.monotonic() - quiet < 4, "the polls kept the session"
            time.sleep(0.3)
        assert time.monotonic() - quiet >= 1.9
        assert polled.status_code == 401 and polled.json()["detail"] == "signed out after 0.0333333 minutes without activity: sign in again"
        assert client.get(f"{url}/api/me").status_code == 401


def test_a_sign_in_link_session_is_audited_with_its_method(store: LocalStorage, provider: str) -> None:
    person = asyncio.run(add_person(store, CENTRE_KEY, "Dr Ben Okoro", PATHOLOGIST))
    with viewer(store, provider) as url:
        link = Tokens(SECRET).issue_person(person.id, person.serial, timedelta(days=1))
        opened = httpx.post(f"{url}/api/session", headers={"Authorization": f"Bearer {link}"}, timeout=30)
        session = opened.cookies[SESSION_COOKIE]
        httpx.post(f"{url}/api/session/end", headers={"Cookie": f"{SESSION_COOKIE}={session}"}, timeout=30)
    assert sign_ins(store) == [(SIGN_IN, "link", person.id, None), (SIGN_OUT, "link", person.id, None)]


def test_a_sign_in_record_names_its_method_and_no_case_and_nothing_else_does() -> None:
    author = Author("u0123abcd", "Dr Ana Ruiz", PATHOLOGIST)
    event = AuditEvent("2026-12-05T21:00:00Z", SIGN_IN, None, author, method="oidc")
    assert AuditEvent.read(event.to_json(CENTRE_KEY), "audit", TRUSTED) == event
    written = {"format": AuditEvent.FORMAT, **event.to_dict()}
    for changed, words in (({"method": "password"}, "method"), ({"method": None}, "method"), ({"case": "h1.case1"}, "no case"),
                           ({"action": "open-case", "case": "h1.case1"}, "nothing else"), ({"user": {"case_token": "h1.case1"}}, "signs in")):  # fmt: skip
        with pytest.raises(DocumentError, match=words):
            AuditEvent.read(dump(CENTRE_KEY.sign({**written, **changed})), "audit", TRUSTED)


def test_the_config_file_names_the_directory_and_refuses_a_group_mapped_to_no_directory_role(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[viewer.oidc]\nissuer = "https://login.centre.example"\nclient_id = "slidestream"\n'
                      'groups = { "pathologists" = "pathologist" }\ngroups_claim = "roles"\n')  # fmt: skip
    loaded = load_config(config, {"serve": {"port"}, "send": {"port"}})
    assert loaded["serve"][OIDC_TABLE]["groups"] == GROUPS and OIDC_TABLE not in loaded["send"]
    for table, words in (('groups = { "hospital" = "station" }', "'hospital' maps to 'station'"), ("grups = {}", "did you mean 'groups'"),
                         ("", "needs groups")):  # fmt: skip
        config.write_text(f'[viewer.oidc]\nissuer = "https://login.centre.example"\nclient_id = "slidestream"\n{table}\n')
        with pytest.raises(ConfigError, match=words):
            load_config(config, {"serve": {"port"}})


def test_serve_takes_the_directory_from_the_config_file_and_its_secret_from_the_environment(tmp_path: Path, provider: str) -> None:
    config, store = tmp_path / "config.toml", tmp_path / "store"
    store.mkdir()
    config.write_text(f'[viewer.oidc]\nissuer = "{provider}"\nclient_id = "slidestream"\ngroups = {{ "pathologists" = "pathologist" }}\n')
    (tmp_path / "secret").write_bytes(SECRET)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "slidestream", "--config", str(config), "serve", "--store", str(store), "--port", str(port),
               "--secret-file", str(tmp_path / "secret"), "--key-dir", str(tmp_path / "keys")]  # fmt: skip
    environment = {key: value for key, value in os.environ.items() if key != "SLIDESTREAM_OIDC_SECRET"}
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120, env=environment)
    assert refused.returncode != 0 and refused.stderr.strip().splitlines()[-1].endswith("no client secret: set SLIDESTREAM_OIDC_SECRET (or client_secret in the table)")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={**environment, "SLIDESTREAM_OIDC_SECRET": "s3cret"})  # fmt: skip
    try:
        lines = [process.stdout.readline().strip() for _ in range(3)]  # type: ignore[union-attr]
        assert lines[2] == f"sign-in through {provider}: redirect URI http://127.0.0.1:{port}/auth/oidc/callback"
        assert httpx.get(f"http://127.0.0.1:{port}/auth/oidc", timeout=30).json()["issuer"] == provider
        assert httpx.get(f"http://127.0.0.1:{port}/auth/oidc/login", timeout=30).headers["location"].startswith(f"{provider}/oauth2/authorize?")
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.slow  # Chromium
def test_in_the_browser_a_pathologist_signs_in_reads_and_signs_a_case_and_the_session_ends(browser, s3_server: S3Server, provider: str) -> None:  # type: ignore[no-untyped-def]
    bucket, case = Bucket(s3_server), "h1.frozen-5"
    bucket.send(case)
    storage = bucket.storage()
    user = directory_user(provider, "ana")
    context = browser.new_context(viewport={"width": 1300, "height": 850})
    page = context.new_page()
    with viewer(storage, provider) as url:
        page.goto(f"{url}/worklist")
        wait_on(page, lambda: page.locator("#sign-in").is_visible(), "the Sign in button")
        page.locator("#sign-in").click()
        page.locator("input[name=sub]").fill("ana")  # the directory's own page
        page.get_by_role("button", name="Authorize").click()
        row = page.locator(f'#cases tbody tr[data-case="{case}"]')
        wait_on(page, lambda: row.count() == 1, "the worklist, signed in")
        assert page.url == f"{url}/worklist" and page.locator("#sign-in").is_hidden()
        row.locator("a").click()
        wait_on(page, lambda: page.locator("#who").text_content() == "Dr Ana Ruiz (pathologist)", "the case, signed in by name")
        wait_on(page, lambda: page.locator("#report-form").is_visible(), "the report form")
        page.locator("#category").select_option("benign")
        page.locator("#diagnosis").fill("Benign breast tissue; margins clear.")
        page.once("dialog", lambda dialog: dialog.accept())
        page.locator("#sign").click()
        wait_on(page, lambda: page.locator("#signed").is_visible(), "the signed report")
        assert page.locator("#signed-by").text_content().startswith("Signed by Dr Ana Ruiz")
        report = Report.read(bucket.get(report_key(case, 1)), "report", TRUSTED)
        assert (report.author.id, report.author.name, report.diagnosis) == (user, "Dr Ana Ruiz", "Benign breast tissue; margins clear.")

        # a visitor of the directory is refused, saying why, and sees no case
        visitor = browser.new_context().new_page()
        visitor.goto(f"{url}/auth/oidc/login")
        visitor.locator("input[name=sub]").fill("victor")
        with visitor.expect_response(lambda response: "/auth/oidc/callback" in response.url) as answered:
            visitor.get_by_role("button", name="Authorize").click()
        assert answered.value.status == 403
        wait_on(visitor, lambda: "no group that may use this viewer" in visitor.locator("body").text_content(), "the refusal")
        assert visitor.context.cookies(url) == []
        visitor.context.close()

    # a viewer whose sessions last four seconds: the worklist signs itself out when hers ends
    with viewer(storage, provider, session_lifetime=timedelta(seconds=4)) as url:
        page.goto(f"{url}/worklist")
        wait_on(page, lambda: page.locator("#sign-in").is_visible(), "the Sign in button")
        page.locator("#sign-in").click()
        page.locator("input[name=sub]").fill("ana")
        page.get_by_role("button", name="Authorize").click()
        wait_on(page, lambda: row.count() == 1, "the worklist, signed in")
        (session,) = [cookie["value"] for cookie in context.cookies(url) if cookie["name"] == SESSION_COOKIE]
        wait_on(page, lambda: page.locator("#sign-in").is_visible(), "the page signed out", timeout=20)
        assert page.locator("#message").text_content().startswith("Access refused") and row.count() == 0
        held = httpx.get(f"{url}/api/me", headers={"Cookie": f"{SESSION_COOKIE}={session}"}, timeout=30)  # the cookie kept past its end
        assert held.status_code == 401 and held.json()["detail"] == "this session has expired: sign in again"
    context.close()

    events = audited(storage)
    assert [(e.action, e.method, e.case) for e in events if e.action == SIGN_IN] == [(SIGN_IN, "oidc", None)] * 2
    assert all(e.user is not None and e.user.id == user for e in events if e.action in (SIGN_IN, "open-case", "sign"))
    assert [e.report for e in events if e.action == "sign"] == [1] and any(e.action == "open-case" and e.case == case for e in events)
