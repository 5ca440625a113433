"""`slidestream audit`: the viewer's audit log (who opened, signed, amended or asked what, and when) as a table.

Each record is verified against the centre's public keys (--key-dir): one that does not verify (a station wrote or
changed it) is one line "refused: reason" in its place, and the log goes on.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

stdout = Console(highlight=False, soft_wrap=True)


def audit(
    store: Annotated[str, typer.Argument(metavar="s3://BUCKET/PREFIX", help="The case store the viewer serves.")],
    case: Annotated[str | None, typer.Option("--case", help="Only this case's events.")] = None,
    date: Annotated[str | None, typer.Option("--date", help="Only this day's events (YYYY-MM-DD, UTC).")] = None,
    key_dir: Annotated[Path | None, typer.Option(help="Folder of the centre's public keys (centre-keys.pem; default: the state dir).")] = None,
    endpoint_url: Annotated[str | None, typer.Option(envvar="AWS_ENDPOINT_URL", help="S3-compatible endpoint (MinIO, Ceph).")] = None,
) -> None:
    """Print the audit log: each case and slide opened, each report signed or amended, each request, with the user."""
    from caseformat.layout import validate_case
    from slides.errors import printable
    from slidestream.serve import trusted_keys
    from slidestream.users import open_store
    from viewer.audit import read, who_text

    if date is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise typer.BadParameter(f"{date!r}: expected YYYY-MM-DD", param_hint="--date")
    found = asyncio.run(read(open_store(store, endpoint_url), trusted_keys(key_dir), validate_case(case) if case else None, date))
    rows: list[tuple[str, ...]] = [("at", "action", "case", "slide", "report", "user")]
    events = 0
    for event in found:
        if isinstance(event, str):
            rows.append((f"refused: {event}",))
            continue
        events += 1
        slide = "/".join(part for part in (event.slide, event.version) if part) or "-"
        action = f"{event.action}/{event.method}" if event.method else event.action  # sign-in/oidc: how they signed in
        rows.append((event.at, action, event.case or "-", slide, str(event.report or "-"), printable(who_text(event))))
    print_rows(rows)
    stdout.print(f"{events} event(s)" + (f", {len(found) - events} refused" if len(found) > events else ""))


def print_rows(rows: list[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell, one line per row (greppable, unlike a wrapped table); the last column
    is not padded. A row of one cell (a refusal) is printed as it is and sets no width."""
    table = [row for row in rows if len(row) == len(rows[0])]
    widths = [max(len(row[i]) for row in table) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]] if len(row) == len(rows[0]) else list(row)
        stdout.print("  ".join(cells), markup=False)
