"""`slidestream watch`: the technician's hot folder. Scanners drop slides in; each is sent once, when complete.

A slide counts as complete when no local process still has one of its files open for writing, and either its own
structure proves it whole (a TIFF-family file: every directory and tile it points to is there, see
`slides.fully_written`) and it did not change between two looks, or its files have not changed for `--settle`
seconds (MRXS, DICOM, and anything whose structure cannot tell; scanners that write over a network share have no
local writer to see). A frozen section thus starts within a poll of its last byte instead of seconds later.
Multi-file slides travel as one unit: an MRXS file with its companion folder, and a folder of DICOM files (one series).
A slide that cannot be read is moved to `failed/` beside a `.reason.txt`; a network failure leaves it in place to be
retried; a restart resumes interrupted sends through the transfer journal (nothing verified is sent twice).
Whatever one entry does (truncated, a link loop, a FIFO, a name that is not UTF-8, gone mid-read, or an exception
nobody foresaw) costs one log line and that entry only; a store that keeps failing (bucket missing, connection
refused) is retried with exponential backoff (1 s doubling to 60 s) and reported once, not once per retry.
A slide is known by its content (the case ID), not its name: the same bytes again under another name (a copy made
twice) are logged once as a duplicate and neither triaged nor sent again. A slide's edge triage finishes in the
background while the next slide is sent (one triage at a time).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from slidestream.send import EDGE_HELP, FULL_PYRAMID_HELP, SEND_DEFAULTS

SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".mrxs", ".dcm"}
PARTIAL_SUFFIXES = {".part", ".tmp", ".partial", ".crdownload", ".filepart"}
FAILED = "failed"
BACKOFF_FIRST, BACKOFF_CAP = 1.0, 60.0  # seconds between attempts while the store keeps failing

stderr = Console(stderr=True)


@dataclass(frozen=True)
class SlideUnit:
    """One slide in the hot folder: its main path and every file that belongs to it."""

    path: Path
    files: tuple[Path, ...]

    def signature(self) -> tuple[int, int, float]:
        """(file count, total bytes, newest mtime): changes while a scanner is still writing."""
        stats = []
        for file in self.files:
            try:
                stats.append(file.stat())
            except OSError:  # gone since the listing, or a link loop: not there
                continue
        return len(stats), sum(s.st_size for s in stats), max((s.st_mtime for s in stats), default=0.0)


def find_units(folder: Path) -> Iterator[SlideUnit]:
    """Slides in the hot folder (not recursive, skipping hidden, partial and failed entries)."""
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name == FAILED or entry.suffix.lower() in PARTIAL_SUFFIXES:
            continue
        try:
            unit = _unit(entry)
        except OSError:  # vanished or unreadable while we looked: the next look decides
            continue
        if unit is not None:
            yield unit


def _unit(entry: Path) -> SlideUnit | None:
    if entry.is_dir():
        companion = entry.with_suffix(".mrxs")
        dicoms = sorted(p for p in entry.iterdir() if p.is_file() and p.suffix.lower() == ".dcm")
        return SlideUnit(entry, tuple(dicoms)) if not companion.exists() and dicoms else None
    if entry.suffix.lower() in SLIDE_SUFFIXES:  # special files and link loops too: open_slide tells them apart
        extra = entry.with_suffix("")
        files = (entry, *sorted(p for p in extra.rglob("*") if p.is_file())) if entry.suffix.lower() == ".mrxs" and extra.is_dir() else (entry,)
        return SlideUnit(entry, files)
    return None


def open_for_writing(paths: set[Path]) -> bool:
    """Whether any process on this machine holds one of `paths` open for writing (Linux /proc)."""
    targets = {os.path.realpath(p) for p in paths}  # realpath: a link loop is no error here
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                if os.readlink(fd) in targets:
                    flags = int((fd_dir.parent / "fdinfo" / fd.name).read_text().split("flags:")[1].split()[0], 8)
                    if flags & (os.O_WRONLY | os.O_RDWR):
                        return True
        except (OSError, IndexError, ValueError):  # processes come and go while we look
            continue
    return False


class HotFolder:
    """Remembers which slides were sent (in the state dir) and which are still settling."""

    def __init__(self, folder: Path, state_dir: Path, settle: float) -> None:
        self.folder = folder
        self.settle = settle
        digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
        self.state_file = state_dir / f"watch-{digest}.json"
        self.log_file = state_dir / f"watch-{digest}.log"
        # slide name -> {"signature": [...], "case": ID}; a list is the signature alone (state files before case IDs)
        self.done: dict[str, Any] = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        self._seen: dict[Path, tuple[tuple[int, int, float], float]] = {}
        self._noted = ""
        self._lock = threading.Lock()  # a background triage logs from its own thread

    def _done_signature(self, name: str) -> list[Any] | None:
        entry = self.done.get(name)
        return entry.get("signature") if isinstance(entry, dict) else entry

    def sent_as(self, case: str, unit: SlideUnit) -> str | None:
        """The name under which another slide with this content (case ID) was sent, if one was."""
        return next((name for name, entry in self.done.items()
                     if name != unit.path.name and isinstance(entry, dict) and entry.get("case") == case), None)

    def ready(self, now: float, skip: set[Path]) -> list[SlideUnit]:
        """Slides not sent yet, not open for writing, and unchanged since the last look when their structure proves
        them whole, or for `settle` seconds when it cannot."""
        from slides import fully_written

        ready = []
        for unit in find_units(self.folder):
            signature = unit.signature()
            if unit.path in skip or self._done_signature(unit.path.name) == list(signature):
                continue
            previous = self._seen.get(unit.path)
            if previous is None or previous[0] != signature:
                self._seen[unit.path] = (signature, now)
            elif (now - previous[1] >= self.settle or fully_written(unit.path)) and not open_for_writing(set(unit.files)):
                ready.append(unit)
        return ready

    def forget(self, unit: SlideUnit) -> None:
        """Look at the slide afresh next time (its send failed for the network: it waits for the next attempt)."""
        self._seen.pop(unit.path, None)

    def note(self, line: str) -> None:
        """A line about the folder itself, said once until it changes."""
        from slides.errors import printable

        if line != self._noted:
            self._noted = line
            print(printable(f"{datetime.now(UTC).isoformat(timespec='seconds')} {line}"), flush=True)

    def settling(self) -> bool:
        """Whether a slide was seen changing and has not been handled yet."""
        return bool(self._seen)

    def record(self, unit: SlideUnit, line: str, sent: bool, case: str | None = None) -> None:
        """One log line per slide; sent slides are remembered by their signature (a re-scan of the same name resends)
        and their case ID (the same content under another name is a duplicate)."""
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        if sent:
            self.done[unit.path.name] = {"signature": list(unit.signature()), "case": case}
            temporary = self.state_file.with_suffix(".tmp")
            temporary.write_text(json.dumps(self.done))
            temporary.replace(self.state_file)
        self._seen.pop(unit.path, None)
        self.log(line)

    def log(self, line: str) -> None:
        """A line in the watch log and on stdout (also from a background triage's thread)."""
        from slides.errors import printable

        stamped = printable(f"{datetime.now(UTC).isoformat(timespec='seconds')} {line}")
        with self._lock:
            self.state_file.parent.mkdir(parents=True, exist_ok=True)
            with self.log_file.open("a") as log:
                log.write(stamped + "\n")
            print(stamped, flush=True)

    def set_aside(self, unit: SlideUnit, reason: str) -> str:
        """Move an unreadable slide (and its companion files) to failed/ with the reason beside it; says where it went
        (or that it is gone: a slide can vanish while it is read)."""
        if not os.path.lexists(unit.path):
            return "it is gone"
        failed = self.folder / FAILED
        failed.mkdir(exist_ok=True)
        moved = []
        for path in {unit.path, *(p for p in [unit.path.with_suffix("")] if unit.path.suffix.lower() == ".mrxs" and p.is_dir())}:
            target = failed / path.name
            if os.path.lexists(target):
                target = failed / f"{path.stem}-{int(time.time())}{path.suffix}"
            os.rename(path, target)  # the entry itself (a link stays a link, a FIFO is never opened); same file system
            moved.append(target)
        from slides.errors import printable

        (failed / f"{unit.path.name}.reason.txt").write_text(printable(reason) + "\n")
        return f"moved to {moved[0]}"


def watch_folder(
    folder: Path,
    send_one: Callable[[SlideUnit, HotFolder], str],
    state_dir: Path,
    settle: float,
    once: bool,
    poll: float = 0.25,
) -> int:
    """Send every complete slide in `folder` with `send_one` (returns a summary line); returns how many failed.

    A slide whose content (case ID) was sent before under another name is logged as a duplicate instead.
    `once` processes what is there (waiting for slides still being written), then returns.
    """
    from slides import SlidestreamError
    from transfer import TransferError

    hot = HotFolder(folder, state_dir, settle)
    backoff = Backoff()
    failures, given_up = 0, set[Path]()
    while True:
        for unit in _ready(hot, given_up) if backoff.due(time.monotonic()) else []:
            try:
                case = identify(unit.path)
                earlier = hot.sent_as(case, unit)
                if earlier is not None:
                    hot.record(unit, f"DUPLICATE {unit.path.name}: the same slide as {earlier} (case {case}), not triaged or sent again", sent=True, case=case)
                    continue
                summary = send_one(unit, hot)
            except TransferError as error:  # the network or the store, not the slide: keep it, retry later
                retry = backoff.failed(time.monotonic(), error)
                if retry is not None:
                    hot.record(unit, f"RETRY {unit.path.name}: {error} ({retry})", sent=False)
                hot.forget(unit)
                if once:
                    given_up.add(unit.path)
                    failures += 1
                else:
                    break  # the store is the problem: the other slides wait for the next attempt too
            except Exception as error:  # noqa: BLE001 - a bad slide, or a bug it triggers, costs that slide only
                reason = str(error) if isinstance(error, SlidestreamError) else _unexpected(error)
                where = _set_aside(hot, unit, reason)
                hot.record(unit, f"FAILED {unit.path.name}: {reason} ({where})", sent=False)
                if os.path.lexists(unit.path):  # it could not be moved: not tried again by this run
                    given_up.add(unit.path)
                failures += 1
            else:
                if backoff.succeeded():
                    hot.record(unit, "the store answers again", sent=False)
                hot.record(unit, f"SENT {unit.path.name}: {summary}", sent=True, case=case)
        if once and not hot.settling():
            return failures
        time.sleep(poll)


def identify(path: Path) -> str:
    """A slide's content identity, the case ID a send gives it (after the checks that keep a FIFO or a link loop
    from being opened)."""
    from slides.slide import slide_path_kind
    from transfer.target import case_id_for

    slide_path_kind(path)
    try:
        return case_id_for(path)
    except OSError as error:  # gone or unreadable between the look and now: one line, like a send's
        from slides import SlideNotFoundError, UnsupportedSlideError

        kind = SlideNotFoundError if isinstance(error, FileNotFoundError) else UnsupportedSlideError
        raise kind(f"{path.name}: cannot read it: {error.strerror or error}") from None


def _ready(hot: HotFolder, skip: set[Path]) -> list[SlideUnit]:
    """The slides ready now; a folder that cannot be listed this time (gone, unmounted share) has none."""
    try:
        return hot.ready(time.monotonic(), skip)
    except OSError as error:
        hot.note(f"cannot look into {hot.folder}: {error.strerror or error}")
        return []


def _set_aside(hot: HotFolder, unit: SlideUnit, reason: str) -> str:
    try:
        return hot.set_aside(unit, reason)
    except OSError as error:
        return f"left in place, cannot move it: {error.strerror or error}"


def _unexpected(error: BaseException) -> str:
    text = (str(error).strip().splitlines() or [""])[0]
    return f"unexpected {type(error).__name__}{': ' + text if text else ''}"


class Backoff:
    """Attempts against a store that keeps failing: the first retry after 1 s, then twice as long each time up to
    60 s, and one log line per kind of failure rather than one per attempt."""

    def __init__(self, first: float = BACKOFF_FIRST, cap: float = BACKOFF_CAP) -> None:
        self._first, self._cap = first, cap
        self._delay = first
        self._next = 0.0
        self._failing: type[BaseException] | None = None

    def due(self, now: float) -> bool:
        return now >= self._next

    def failed(self, now: float, error: BaseException) -> str | None:
        """Schedules the next attempt; returns what to log, or None when this failure was reported already."""
        self._next = now + self._delay
        said = f"retrying after {self._delay:g} s, then up to every {self._cap:g} s; said once"
        self._delay = min(self._delay * 2, self._cap)
        if type(error) is self._failing:
            return None
        self._failing = type(error)
        return said

    def succeeded(self) -> bool:
        """Resets the backoff; True when it ends a failure that was reported."""
        recovered = self._failing is not None
        self._delay, self._next, self._failing = self._first, 0.0, None
        return recovered


def watch(
    folder: Annotated[Path, typer.Argument(help="The hot folder the scanner writes into.", file_okay=False, exists=True)],
    destination: Annotated[str, typer.Argument(help="s3://BUCKET/PREFIX; each slide goes to PREFIX/CASE/.")],
    endpoint_url: Annotated[str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint; default AWS.")] = None,
    settle: Annotated[
        float, typer.Option("--settle", min=0, help="Seconds a slide must stay unchanged before it is sent, unless its structure proves it whole (TIFF family).")
    ] = 10,
    once: Annotated[bool, typer.Option("--once", help="Send what is in the folder now, then exit (for cron and tests).")] = False,
    concurrency: Annotated[str, typer.Option("--concurrency", help="Uploads in flight: 1-32 or 'auto'.")] = SEND_DEFAULTS["concurrency"],
    max_rate: Annotated[float | None, typer.Option("--max-rate", min=0.01, help="Cap on upload rate in Mbit/s.")] = SEND_DEFAULTS["max_rate"],
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality of re-encoded chunks.")] = SEND_DEFAULTS["quality"],
    keep_phi: Annotated[bool, typer.Option("--keep-phi", help="Keep label/macro images and identifying metadata.")] = SEND_DEFAULTS["keep_phi"],
    deadline: Annotated[float, typer.Option("--deadline", min=0, help="Seconds the link may stay down per slide before retrying later.")] = SEND_DEFAULTS["deadline"],
    edge: Annotated[bool, typer.Option("--edge/--no-edge", help=EDGE_HELP)] = SEND_DEFAULTS["edge"],
    full_pyramid: Annotated[bool, typer.Option("--full-pyramid", help=FULL_PYRAMID_HELP)] = SEND_DEFAULTS["full_pyramid"],
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="Journal and watch log (default $XDG_STATE_HOME/slidestream).")] = None,
) -> None:
    """Send every slide a scanner writes into FOLDER, once it is complete; unreadable ones go to FOLDER/failed/.

    A slide's edge triage finishes in the background while the next slide is sent."""
    from slides.errors import printable
    from slidestream.send import run_send, send_arguments
    from transfer.target import parse_endpoint, parse_store_url

    parse_store_url(destination)  # configuration errors stop it here, in one line, before it watches anything
    parse_endpoint(endpoint_url)
    import transfer.sender  # noqa: F401 - boto3 loads now (a third of a second), not while a frozen section waits
    from transfer import default_state_dir

    state = state_dir or default_state_dir()

    def send_one(unit: SlideUnit, hot: HotFolder) -> str:
        args = send_arguments(
            unit.path, destination, endpoint_url, concurrency=concurrency, max_rate=max_rate, quality=quality, keep_phi=keep_phi, deadline=deadline, edge=edge,
            full_pyramid=full_pyramid,
        )

        def triage_done(case: str, seconds: float | None) -> None:
            said = f"heatmap readable after {seconds:.1f} s" if seconds is not None else "no heatmap (edge triage unavailable)"
            hot.log(f"TRIAGED {unit.path.name}: case {case}: {said}")

        result = run_send(args, state_dir, triage_done)
        return (
            f"case {result.case}: {result.objects} objects ({result.bytes_sent / 1e6:.1f} MB) sent, "
            f"{result.objects_skipped} already there, in {result.seconds:.1f} s -> {result.url}"
        )

    stderr.print(printable(f"watching {folder} -> {destination} (log: {HotFolder(folder, state, settle).log_file})"), markup=False, highlight=False)
    failures = watch_folder(folder, send_one, state, settle, once)
    from slidestream.edge import join_triages

    join_triages()  # --once: the last slides' triages finish (and are published) before watch exits
    if failures:
        raise typer.Exit(1)
