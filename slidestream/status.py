"""`slidestream status`: this station's cases as the hospital knows them (local names from the registry), with their
state read from the store: arriving, being read, signed (only reports the centre signed: `--centre-keys`), and each
failed slide's reason. Everything read from the store is shown as text (no escape sequence reaches the terminal)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from slidestream import options as o

stdout = Console(soft_wrap=True)
ARRIVING, BEING_READ, SIGNED, FAILED = "arriving", "being read", "signed", "failed"


def status(
    destination: Annotated[str | None, typer.Argument(help="s3://BUCKET/PREFIX (default: every store this station sent to).")] = None,
    endpoint_url: o.EndpointUrl = None,
    station: Annotated[str | None, typer.Option("--station", help="Only the cases this station registered (default: all in the registry).")] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="Where the registry lives (default $XDG_STATE_HOME/slidestream).")] = None,
    centre_keys: o.CentreKeys = None,
    ca_bundle: o.CaBundle = None,
) -> None:
    """List this station's cases: arriving (a slide still sending), being read (all arrived, no signed report),
    signed (category and time), and failed slides with their reason."""
    from caseformat.layout import validate_station
    from caseformat.signing import PUBLIC_KEYS_FILE
    from slides.errors import printable
    from station.registry import Registry, store_key
    from station.station import Station, Store, default_station, load_trusted
    from transfer import default_state_dir

    wanted = store_key(Store.parse(destination, endpoint_url)) if destination else None
    name = validate_station(station) if station else None
    state = state_dir or default_state_dir()
    trusted, no_key = load_trusted(centre_keys or state / PUBLIC_KEYS_FILE)
    with Registry(state) as registry:
        specimens = [(key, specimen) for key, specimen in registry.specimens(wanted) if name is None or specimen.station == name]
        if not specimens:
            stdout.print("no cases registered at this station", markup=False, highlight=False)
            return
        stations: dict[str, Station] = {}
        for key, specimen in specimens:
            hospital = stations.get(key) or stations.setdefault(key, Station(Store.from_key(key), registry, specimen.station or default_station(), ca_bundle and str(ca_bundle)))
            shown, lines = case_state(hospital, specimen.case, trusted)
            stdout.print(printable(f"{specimen.name} (case {specimen.case}, registered {specimen.registered_at}): {shown}"), markup=False, highlight=False)
            lines += [] if trusted is not None else [f"{no_key}; its reports cannot be verified and are not read"]
            for line in lines:
                stdout.print(printable(f"  {line}"), markup=False, highlight=False)


def case_state(station: Any, case: str, trusted: Any) -> tuple[str, list[str]]:
    """(the case's state, one line per slide and per refused report) from the store: each slide's newest version's
    manifest, the slide files this station could not send, and the case's reports that the centre signed (`trusted`:
    its keys; None reads none). A case with no slide that can still arrive is failed, never arriving for ever."""
    from caseformat.errors import DocumentError
    from caseformat.layout import MANIFEST, SlideRef, version_key
    from caseformat.results import Manifest

    lines, states = [], []
    for slide in sorted(station.registry.slides(station.key, case), key=lambda name: int(name[1:])):
        version = station.registry.versions(station.key, case, slide)[-1]
        key = station.store.key(version_key(SlideRef(case, slide, version), MANIFEST))
        data = station.read_bytes(key)
        try:
            manifest = Manifest.read(data, key) if data is not None else None
            state, failed = (manifest.state, manifest.failure) if manifest is not None else ("not sent yet", None)
        except DocumentError as error:
            state, failed = "unreadable", str(error)
        states.append(state)
        lines.append(f"{slide} {version}: {state}" + (f": {failed}" if failed else ""))
    unsent, unreadable = station.unsent(case)
    lines += [f"not sent: {record.reason}" for record in unsent] + unreadable
    reports, refused = station.reports(case, trusted) if trusted is not None else ([], [])
    if reports:
        signed, latest = reports[0], reports[-1]
        amended = f", amended ({len(reports) - 1})" if len(reports) > 1 else ""
        return f"{SIGNED}: {latest.category} at {signed.signed_at} by {signed.author.name}{amended}", lines + refused
    if (unsent or states) and all(state == "failed" for state in states):
        return FAILED, lines + refused
    sending = any(state not in ("complete", "failed") for state in states)
    return (ARRIVING if sending or not states else BEING_READ), lines + refused
