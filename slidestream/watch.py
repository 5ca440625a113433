"""`slidestream watch`: the technician's hot folder. Scanners drop slides in; each is sent once, when complete.

A slide counts as complete when no local process still has one of its files open for writing, and either its own
structure proves it whole (a TIFF-family file: every directory and tile it points to is there, see
`slides.fully_written`) and it did not change between two looks, or its files have not changed for `--settle`
seconds (MRXS, DICOM, and anything whose structure cannot tell; scanners that write over a network share have no
local writer to see). A frozen section thus starts within a poll of its last byte instead of seconds later.
Multi-file slides travel as one unit: an MRXS file with its companion folder, and a folder of DICOM files (one series).
A slide that cannot be read is moved to `failed/` beside a `.reason.txt`; a network failure leaves it in place to be
retried; a restart resumes interrupted sends through the transfer journal (nothing verified is sent twice).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from slides import SlidestreamError, fully_written

SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".mrxs", ".dcm"}
PARTIAL_SUFFIXES = {".part", ".tmp", ".partial", ".crdownload", ".filepart"}
FAILED = "failed"

stderr = Console(stderr=True)


@dataclass(frozen=True)
class SlideUnit:
    """One slide in the hot folder: its main path and every file that belongs to it."""

    path: Path
    files: tuple[Path, ...]

    def signature(self) -> tuple[int, int, float]:
        """(file count, total bytes, newest mtime): changes while a scanner is still writing."""
        stats = [f.stat() for f in self.files if f.exists()]
        return len(stats), sum(s.st_size for s in stats), max((s.st_mtime for s in stats), default=0.0)


def find_units(folder: Path) -> Iterator[SlideUnit]:
    """Slides in the hot folder (not recursive, skipping hidden, partial and failed entries)."""
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name == FAILED or entry.suffix.lower() in PARTIAL_SUFFIXES:
            continue
        if entry.is_dir():
            companion = entry.with_suffix(".mrxs")
            dicoms = sorted(p for p in entry.iterdir() if p.is_file() and p.suffix.lower() == ".dcm")
            if not companion.exists() and dicoms:
                yield SlideUnit(entry, tuple(dicoms))
        elif entry.suffix.lower() in SLIDE_SUFFIXES:
            extra = entry.with_suffix("")
            files = (entry, *sorted(p for p in extra.rglob("*") if p.is_file())) if entry.suffix.lower() == ".mrxs" and extra.is_dir() else (entry,)
            yield SlideUnit(entry, files)


def open_for_writing(paths: set[Path]) -> bool:
    """Whether any process on this machine holds one of `paths` open for writing (Linux /proc)."""
    targets = {str(p.resolve()) for p in paths}
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
        self.done: dict[str, list[Any]] = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        self._seen: dict[Path, tuple[tuple[int, int, float], float]] = {}

    def ready(self, now: float, skip: set[Path]) -> list[SlideUnit]:
        """Slides not sent yet, not open for writing, and unchanged since the last look when their structure proves
        them whole, or for `settle` seconds when it cannot."""
        ready = []
        for unit in find_units(self.folder):
            signature = unit.signature()
            if unit.path in skip or self.done.get(unit.path.name) == list(signature):
                continue
            previous = self._seen.get(unit.path)
            if previous is None or previous[0] != signature:
                self._seen[unit.path] = (signature, now)
            elif (now - previous[1] >= self.settle or fully_written(unit.path)) and not open_for_writing(set(unit.files)):
                ready.append(unit)
        return ready

    def settling(self) -> bool:
        """Whether a slide was seen changing and has not been handled yet."""
        return bool(self._seen)

    def record(self, unit: SlideUnit, line: str, sent: bool) -> None:
        """One log line per slide; sent slides are remembered by their signature (a re-scan of the same name resends)."""
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        if sent:
            self.done[unit.path.name] = list(unit.signature())
            temporary = self.state_file.with_suffix(".tmp")
            temporary.write_text(json.dumps(self.done))
            temporary.replace(self.state_file)
        self._seen.pop(unit.path, None)
        stamped = f"{datetime.now(UTC).isoformat(timespec='seconds')} {line}"
        with self.log_file.open("a") as log:
            log.write(stamped + "\n")
        print(stamped, flush=True)

    def set_aside(self, unit: SlideUnit, reason: str) -> Path:
        """Move an unreadable slide (and its companion files) to failed/ with the reason beside it."""
        failed = self.folder / FAILED
        failed.mkdir(exist_ok=True)
        moved = []
        for path in {unit.path, *(p for p in [unit.path.with_suffix("")] if unit.path.suffix.lower() == ".mrxs" and p.is_dir())}:
            target = failed / path.name
            if target.exists():
                target = failed / f"{path.stem}-{int(time.time())}{path.suffix}"
            shutil.move(path, target)
            moved.append(target)
        (failed / f"{unit.path.name}.reason.txt").write_text(reason + "\n")
        return moved[0]


def watch_folder(
    folder: Path,
    send_one: Callable[[Path], str],
    state_dir: Path,
    settle: float,
    once: bool,
    poll: float = 0.25,
) -> int:
    """Send every complete slide in `folder` with `send_one` (returns a summary line); returns how many failed.

    `once` processes what is there (waiting for slides still being written), then returns.
    """
    from transfer import TransferError

    hot = HotFolder(folder, state_dir, settle)
    failures, given_up = 0, set[Path]()
    while True:
        for unit in hot.ready(time.monotonic(), given_up):
            try:
                summary = send_one(unit.path)
            except TransferError as error:  # the network or the store, not the slide: keep it, retry next round
                hot.record(unit, f"RETRY {unit.path.name}: {error}", sent=False)
                if once:
                    given_up.add(unit.path)
                    failures += 1
            except SlidestreamError as error:
                moved = hot.set_aside(unit, str(error))
                hot.record(unit, f"FAILED {unit.path.name}: {error} (moved to {moved})", sent=False)
                failures += 1
            else:
                hot.record(unit, f"SENT {unit.path.name}: {summary}", sent=True)
        if once and not hot.settling():
            return failures
        time.sleep(poll)


def watch(
    folder: Annotated[Path, typer.Argument(help="The hot folder the scanner writes into.", file_okay=False, exists=True)],
    destination: Annotated[str, typer.Argument(help="s3://BUCKET/PREFIX; each slide goes to PREFIX/CASE/.")],
    endpoint_url: Annotated[str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint; default AWS.")] = None,
    settle: Annotated[
        float, typer.Option("--settle", min=0, help="Seconds a slide must stay unchanged before it is sent, unless its structure proves it whole (TIFF family).")
    ] = 10,
    once: Annotated[bool, typer.Option("--once", help="Send what is in the folder now, then exit (for cron and tests).")] = False,
    concurrency: Annotated[str, typer.Option("--concurrency", help="Uploads in flight: 1-32 or 'auto'.")] = "auto",
    max_rate: Annotated[float | None, typer.Option("--max-rate", min=0.01, help="Cap on upload rate in Mbit/s.")] = None,
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality of re-encoded chunks.")] = 90,
    keep_phi: Annotated[bool, typer.Option("--keep-phi", help="Keep label/macro images and identifying metadata.")] = False,
    deadline: Annotated[float, typer.Option("--deadline", min=0, help="Seconds the link may stay down per slide before retrying later.")] = 600,
    edge: Annotated[bool, typer.Option("--edge/--no-edge", help="Triage each slide here first: its heatmap travels first, hot regions first.")] = True,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="Journal and watch log (default $XDG_STATE_HOME/slidestream).")] = None,
) -> None:
    """Send every slide a scanner writes into FOLDER, once it is complete; unreadable ones go to FOLDER/failed/."""
    from slidestream.send import run_send, send_arguments
    import transfer.sender  # noqa: F401 - boto3 loads now (a third of a second), not while a frozen section waits
    from transfer import default_state_dir

    state = state_dir or default_state_dir()

    def send_one(path: Path) -> str:
        args = send_arguments(
            path, destination, endpoint_url, concurrency=concurrency, max_rate=max_rate, quality=quality, keep_phi=keep_phi, deadline=deadline, edge=edge
        )
        result = run_send(args, state_dir)
        return (
            f"case {result.case}: {result.objects} objects ({result.bytes_sent / 1e6:.1f} MB) sent, "
            f"{result.objects_skipped} already there, in {result.seconds:.1f} s -> {result.url}"
        )

    stderr.print(f"watching {folder} -> {destination} (log: {HotFolder(folder, state, settle).log_file})", markup=False, highlight=False)
    failures = watch_folder(folder, send_one, state, settle, once)
    if failures:
        raise typer.Exit(1)
