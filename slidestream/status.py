"""`slidestream status`: this station's cases as the hospital knows them (local names from the registry), with their
state read from the store: arriving, being read, signed, and each failed slide's reason."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

stdout = Console(soft_wrap=True)
ARRIVING, BEING_READ, SIGNED = "arriving", "being read", "signed"


def status(
    destination: Annotated[str | None, typer.Argument(help="s3://BUCKET/PREFIX (default: every store this station sent to).")] = None,
    endpoint_url: Annotated[str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint; default AWS.")] = None,
    station: Annotated[str | None, typer.Option("--station", help="Only the cases this station registered (default: all in the registry).")] = None,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="Where the registry lives (default $XDG_STATE_HOME/slidestream).")] = None,
) -> None:
    """List this station's cases: arriving (a slide still sending), being read (all arrived, no signed report),
    signed (category and time), and failed slides with their reason."""
    from slides.errors import printable
    from slidestream.registry import Registry, store_key
    from slidestream.station import Station, Store, default_station
    from transfer import default_state_dir
    from caseformat.layout import validate_station

    wanted = store_key(Store.parse(destination, endpoint_url)) if destination else None
    name = validate_station(station) if station else None
    with Registry(state_dir or default_state_dir()) as registry:
        specimens = [(key, specimen) for key, specimen in registry.specimens(wanted) if name is None or specimen.station == name]
        if not specimens:
            stdout.print("no cases registered at this station", markup=False, highlight=False)
            return
        stations: dict[str, Station] = {}
        for key, specimen in specimens:
            hospital = stations.get(key) or stations.setdefault(key, Station(Store.from_key(key), registry, specimen.station or default_station()))
            state, lines = case_state(hospital, specimen.case)
            stdout.print(printable(f"{specimen.name} (case {specimen.case}, registered {specimen.registered_at}): {state}"), markup=False, highlight=False)
            for line in lines:
                stdout.print(printable(f"  {line}"), markup=False, highlight=False)


def case_state(station: Any, case: str) -> tuple[str, list[str]]:
    """(the case's state, one line per slide) from the store: each slide's newest version's manifest, and the
    case's reports."""
    from transfer.manifest import case_state as manifest_state
    from caseformat.layout import MANIFEST, SlideRef

    lines, sending = [], False
    for slide in sorted(station.registry.slides(station.key, case), key=lambda name: int(name[1:])):
        version = station.registry.versions(station.key, case, slide)[-1]
        manifest = station.read_json(station.store.key(f"{SlideRef(case, slide, version).root}/{MANIFEST}"))
        state, failed = manifest_state(manifest) if manifest is not None else ("not sent yet", None)
        sending |= state not in ("complete", "failed")
        lines.append(f"{slide} {version}: {state}" + (f": {failed}" if failed else ""))
    reports = station.reports(case)
    if reports:
        signed, latest = reports[0], reports[-1]
        amended = f", amended ({len(reports) - 1})" if len(reports) > 1 else ""
        return (f"{SIGNED}: {latest.get('category')} at {signed.get('signed_at')} by {(signed.get('author') or {}).get('name')}{amended}", lines)
    return (ARRIVING if sending or not lines else BEING_READ), lines
