"""`slidestream users`: the centre's user list (pathologists, stations) on the store, their sign-in links, and
view-only links to one case.

Records live at `_people/{id}.json` (viewer/people.py), signed with the centre's key; a link is a token signed with
the viewer's secret, so run this where `slidestream serve` runs (or with the same --key-dir and --secret-file /
$SLIDESTREAM_SECRET). A record that does not verify is listed as "refused: reason" and gives no access. A sign-in
link is spent once on a session; a case link works until it expires or its ID is revoked (`revoke-link` adds the ID
to the `revoked-links` file in the key folder, which the viewer re-reads within a second).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from slidestream.keys import key_folder
from slidestream.serve import DEFAULT_PORT, KEY_DIR_HELP, centre_keys, trusted_keys

if TYPE_CHECKING:
    from objectstore import Storage

stdout = Console(highlight=False, soft_wrap=True)
users = typer.Typer(no_args_is_help=True, help="Add, list and revoke the centre's users, give them sign-in links, and make or "
                    "revoke a view-only link to one case.")

Store = Annotated[str, typer.Argument(metavar="s3://BUCKET/PREFIX", help="The case store the viewer serves.")]
User = Annotated[str, typer.Argument(metavar="ID", help="The user's ID, as `users list` shows it.")]
EndpointUrl = Annotated[str | None, typer.Option(envvar="AWS_ENDPOINT_URL", help="S3-compatible endpoint (MinIO, Ceph).")]
ViewerUrl = Annotated[str, typer.Option(help="The viewer's address, as its users reach it.")]
SecretFile = Annotated[Path | None, typer.Option(help="The viewer's token secret (else $SLIDESTREAM_SECRET, else the state dir's).")]
KeyDir = Annotated[Path | None, typer.Option(help=KEY_DIR_HELP)]
DEFAULT_VIEWER = f"http://127.0.0.1:{DEFAULT_PORT}"


def open_store(store: str, endpoint_url: str | None) -> Storage:
    """The store as the viewer reads it, its URL and endpoint checked first (one line, not a panic)."""
    from objectstore import open_storage
    from objectstore.clients import parse_endpoint
    from transfer.target import parse_store_url

    parse_store_url(store)
    parse_endpoint(endpoint_url)
    return open_storage(store, endpoint_url)


def _link(person: object, viewer_url: str, secret_file: Path | None) -> str:
    from viewer.people import sign_in_link
    from viewer.tokens import Tokens, load_secret

    return sign_in_link(Tokens(load_secret(secret_file)), person, viewer_url)  # type: ignore[arg-type]


@users.command("add")
def add(
    store: Store,
    name: Annotated[str, typer.Argument(help="The name reports and the audit log show, e.g. 'Dr Ana Ruiz'.")],
    role: Annotated[str, typer.Option(help="pathologist (views, signs, asks the hospital) or station (views its own cases).")] = "pathologist",
    station: Annotated[
        str | None, typer.Option(help="For --role station: the enrolled station ID whose cases the user sees (as case.json names it).")
    ] = None,
    expires: Annotated[str | None, typer.Option(help="Access ends after this long: 30m, 12h, 7d, 2w (default: until revoked).")] = None,
    viewer_url: ViewerUrl = DEFAULT_VIEWER,
    secret_file: SecretFile = None,
    key_dir: KeyDir = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Add a user; prints their ID and sign-in link (give it to them privately: opened once within 7 days, it signs
    them in for a session of `serve --session-hours`)."""
    from viewer.people import add_person, parse_duration

    lifetime = parse_duration(expires) if expires else None
    key, _ = centre_keys(key_dir)
    person = asyncio.run(add_person(open_store(store, endpoint_url), key, name, role, lifetime, station))
    where = f", station {person.station}" if person.station else ""
    until = f", until {person.expires_at}" if person.expires_at else ""
    stdout.print(f"added {person.id} ({person.name}, {person.role}{where}{until})", markup=False)
    stdout.print(f"link: {_link(person, viewer_url, secret_file)}", markup=False)


@users.command("list")
def list_users(store: Store, key_dir: KeyDir = None, endpoint_url: EndpointUrl = None) -> None:
    """Every user, with their role and whether their access works now; a record the centre did not sign (or that
    was changed since) is one line "refused: reason" after them."""
    from slides.errors import printable
    from slidestream.audit import print_rows
    from viewer.people import describe, list_people

    people, refused = asyncio.run(list_people(open_store(store, endpoint_url), trusted_keys(key_dir)))
    rows: list[tuple[str, ...]] = [("id", "role", "state", "created", "expires", "station", "name")]
    rows += [tuple(printable(str(describe(person)[column])) for column in rows[0]) for person in people]
    print_rows(rows)
    for refusal in refused:
        stdout.print(f"refused: {refusal}", markup=False)


@users.command("revoke")
def revoke(store: Store, user: User, key_dir: KeyDir = None, endpoint_url: EndpointUrl = None) -> None:
    """Revoke a user: each of their links is refused from the viewer's next check (within seconds)."""
    from viewer.people import revoke_person

    key, trusted = centre_keys(key_dir)
    person = asyncio.run(revoke_person(open_store(store, endpoint_url), key, trusted, user))
    stdout.print(f"revoked {person.id} ({person.name}) at {person.revoked_at}", markup=False)


@users.command("link")
def link(store: Store, user: User, viewer_url: ViewerUrl = DEFAULT_VIEWER, secret_file: SecretFile = None,
         key_dir: KeyDir = None, endpoint_url: EndpointUrl = None) -> None:
    """A new sign-in link for a user (a lost or leaked one, or a session that expired): their earlier links and
    sessions stop working."""
    from viewer.people import renew_link

    key, trusted = centre_keys(key_dir)
    person = asyncio.run(renew_link(open_store(store, endpoint_url), key, trusted, user))
    stdout.print(f"link: {_link(person, viewer_url, secret_file)}", markup=False)


@users.command("case-link")
def case_link(
    case: Annotated[str, typer.Argument(help="The case ID, as the store names its folder.")],
    hours: Annotated[float, typer.Option(min=0.01, help="How long the link works.")] = 12.0,
    viewer_url: ViewerUrl = DEFAULT_VIEWER,
    secret_file: SecretFile = None,
) -> None:
    """A view-only link to one case (for a second opinion, a tumour board): whoever holds it sees that case until it
    expires; it cannot sign. Prints the link's ID, which `users revoke-link ID` ends on its own."""
    from datetime import UTC, datetime, timedelta

    from viewer.tokens import CASE_ID, Tokens, case_scope, load_secret

    if not CASE_ID.fullmatch(case):
        raise typer.BadParameter(f"{case!r} is not a case ID (1-64 letters, digits, '.', '_' or '-')", param_hint="CASE")
    tokens = Tokens(load_secret(secret_file))
    token = tokens.issue(case_scope(case), timedelta(hours=hours))
    until = (datetime.now(UTC) + timedelta(hours=hours)).strftime("%Y-%m-%d %H:%M UTC")
    stdout.print(f"link {tokens.link_id(token)} to case {case}, valid until {until}", markup=False)
    stdout.print(f"link: {viewer_url.rstrip('/')}/view/{case}#token={token}", markup=False)


@users.command("revoke-link")
def revoke_link(
    link: Annotated[str, typer.Argument(metavar="LINK_ID", help="The ID `users case-link` printed (12 hex digits).")],
    key_dir: KeyDir = None,
) -> None:
    """End one case link: its ID is added to `revoked-links` in the key folder (--key-dir, else the state dir), which
    the viewer re-reads within a second. To end every case link at once, replace the viewer's secret."""
    from viewer.tokens import revoke_link as add_revoked

    path = add_revoked(key_folder(key_dir), link)
    stdout.print(f"revoked link {link} ({path})", markup=False)
