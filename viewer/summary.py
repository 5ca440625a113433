"""What the worklist and the case page show of a case's documents: one rule for both, so they never disagree.

Every document is untrusted input (`caseformat.bounded`): one that is malformed costs only its own case or slide,
shown as "unreadable: reason" on the worklist and the case (`readable`), never the whole list. An AI result is shown
as a score only where `Triage.valid_score` allows it (`triage_summary`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable
from typing import Any, TypeVar

from caseformat.documents import UNSENT_KINDS, UnsentSlide
from caseformat.errors import DocumentError
from caseformat.results import COMPLETE, Manifest, Triage
from slides.errors import printable

UNREADABLE = "unreadable"  # the state of a slide or case whose document is malformed
UNROUTED = "no validated AI: this result was not held to a model's intended use"  # a triage without `routed`
T = TypeVar("T")


async def readable(reading: Awaitable[T]) -> T | str:
    """What `reading` gives, or "unreadable: reason" for a malformed document: it costs its own row, no more."""
    try:
        return await reading
    except DocumentError as error:
        return f"{UNREADABLE}: {printable(str(error))}"


def send_state(manifest: Manifest | None) -> tuple[str, str | None]:
    """(state, failure reason) of a slide version's send; no manifest (an image written by another tool, or a local
    conversion) counts as complete."""
    return (COMPLETE, None) if manifest is None else (manifest.state, manifest.failure)


def missing_slides(slides: list[dict[str, Any]], unsent: list[UnsentSlide | str]) -> str | None:
    """What the pathologist must know before reading the case as whole: "3 of 6 slides failed at the hospital: ...",
    counting the slides that failed on their way and those the station could not send; None when none did."""
    failed = [slide for slide in slides if slide["state"] == "failed"]
    if not failed and not unsent:
        return None
    total = len(slides) + len(unsent)
    reasons = Counter(UNSENT_KINDS["unreadable"] if isinstance(record, str) else record.reason for record in unsent)
    reasons.update({"the send failed": len(failed)} if failed else {})
    said = "; ".join(f"{reason} ({count})" if count > 1 else reason for reason, count in reasons.items())
    return f"{len(failed) + len(unsent)} of {total} slides failed at the hospital: {said}"


def triage_summary(triage: Triage | None) -> dict[str, Any] | None:
    """Score, what produced it and whether it is final: an edge triage's coarse map never is (`inference.heatmap`).
    With the model's words when the triage names them: what it detects and its validation record in one line. The
    score is only `Triage.valid_score`: a refused slide ("no validated AI for skin") and a score that was never
    routed (an old triage, an edge's made before routing) show the words "no validated AI" and QC, never a number."""
    if triage is None:
        return None
    if triage.valid_score is not None:
        about = {key: triage.summary[key] for key in ("detects", "validation") if triage.summary.get(key)}
        return {"score": triage.valid_score, "stage": triage.stage, "final": triage.final(), **about}
    if triage.refused is None and (triage.routed is not None or triage.score is None and not triage.tiles_scored):
        return None  # routed, nothing scored yet
    return {"score": None, "stage": triage.stage, "final": triage.final(), "refused": triage.refused or UNROUTED,
            "qc": _qc(triage), "tissue_tiles": triage.tissue_tiles}


def case_triage(slides: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """The case's AI result, on the worklist and in the case page's header alike: its most suspicious slide's (a
    refusal has no score: any scored slide comes first); None while no slide has one."""
    scored = [triage for triage in slides if triage]
    return max(scored, key=lambda t: -1.0 if t["score"] is None else t["score"]) if scored else None


def specimen_name(context: dict[str, str]) -> str | None:
    """What the specimen is, as the worklist and the case page name it: its type and site from case.json."""
    return " · ".join(context[name] for name in ("specimen_type", "specimen_site") if name in context) or None


def _qc(triage: Triage) -> dict[str, float | None]:
    """The QC shown in place of a score, as `Triage.read` checked it: blurry and pen-marked fractions of the tiles
    measured."""
    qc = triage.summary.get("qc") or {}
    return {"blur_fraction": qc.get("blur_fraction"), "pen_fraction": qc.get("pen_fraction"), "tiles": qc.get("focus_tiles")}
