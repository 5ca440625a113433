"""`slidestream audit`: the viewer's audit log (who opened, signed, amended or asked what, and when) as a table."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated

import typer
from rich.console import Console

stdout = Console(highlight=False, soft_wrap=True)


def audit(
    store: Annotated[str, typer.Argument(metavar="s3://BUCKET/PREFIX", help="The case store the viewer serves.")],
    case: Annotated[str | None, typer.Option("--case", help="Only this case's events.")] = None,
    date: Annotated[str | None, typer.Option("--date", help="Only this day's events (YYYY-MM-DD, UTC).")] = None,
    endpoint_url: Annotated[str | None, typer.Option(envvar="AWS_ENDPOINT_URL", help="S3-compatible endpoint (MinIO, Ceph).")] = None,
) -> None:
    """Print the audit log: each case and slide opened, each report signed or amended, each request, with the user."""
    from slidestream.users import open_store
    from caseformat.layout import validate_case
    from viewer.audit import read, who_text

    if date is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        raise typer.BadParameter(f"{date!r}: expected YYYY-MM-DD", param_hint="--date")
    events = asyncio.run(read(open_store(store, endpoint_url), validate_case(case) if case else None, date))
    rows = [("at", "action", "case", "slide", "report", "user")]
    for event in events:
        slide = "/".join(part for part in (event.get("slide"), event.get("version")) if part) or "-"
        rows.append((str(event.get("at")), str(event.get("action")), str(event.get("case")), slide,
                     str(event.get("report") or "-"), who_text(event.get("user"))))
    print_rows(rows)
    stdout.print(f"{len(events)} event(s)")


def print_rows(rows: list[tuple[str, ...]]) -> None:
    """Columns padded to their widest cell, one line per row (greppable, unlike a wrapped table); the last column
    is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        stdout.print("  ".join([*(cell.ljust(width) for cell, width in zip(row, widths)), row[-1]]), markup=False)
