"""The technician's hot folder (`slidestream watch`). Scanners drop slides in; each is sent once, when complete.

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
Each subfolder of the hot folder is one specimen (one case): its slide files and DICOM series folders are that case's
slides s1, s2, ... (the local registry remembers which file is which), and an optional `specimen.json` in it gives
the patient's identity (kept in the registry only) and the clinical context; a specimen with one is registered, and
its clock started, as soon as it appears. A slide directly in the hot folder is a specimen of its own. The same
bytes again under another name (a copy made twice: same size and full SHA-256) are logged once as a duplicate and
neither triaged nor sent again; another file at a slide's place is a rescan (its next version). A slide's edge
triage finishes in the background while the next slide is sent (one triage at a time).
What the pathology centre sends back to this station (reports, requests) is polled every second, and the reports of
this station's open cases are read from the cases themselves every 30 s (a notice late or lost misses nothing); what
the centre signed for this station (`--centre-keys`) is printed and written to the outbox folder as text for the
operating room, once per case, kind and number, never over a report delivered before. The state folder, the watch log
and state hold local names: private (0700/0600). A state disk that is full stops nothing: a log line that cannot be
written is said once on stderr, and a specimen the registry cannot record waits (its clock kept from when it appeared).
Every `--resend-every` seconds (and when it starts) watch asks the store whether the centre found pieces of this
folder's complete sends of the last day corrupt (corrupt.json), and sends those pieces again from the slide while it is
still here, one RESENT line each (`station.pipeline.asked_again`).
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
from typing import IO, Any

from rich.console import Console

BACKOFF_FIRST, BACKOFF_CAP = 1.0, 60.0  # seconds between attempts while the store keeps failing
SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".mrxs", ".dcm"}
PARTIAL_SUFFIXES = {".part", ".tmp", ".partial", ".crdownload", ".filepart"}
FAILED = "failed"
OUTBOX = "outbox"
NOTICE_POLL = 1.0  # seconds between looks at centre/{station}/_notices/ while a case of the station awaits its report
IDLE_NOTICE_POLL = 30.0  # seconds between looks while none does (a request or amendment on a closed case may wait this)
IMAGES_EVERY = 10.0  # seconds between rounds of the PACS outbox (what is queued is sent when due)
RECONCILE_EVERY = 30.0  # seconds between reads of the open cases' own reports (`Station.reconcile`)
RESEND_EVERY = 60.0  # seconds between looks for pieces the centre found corrupt (one GET per recent complete send)


stderr = Console(stderr=True)


@dataclass(frozen=True)
class SlideUnit:
    """One slide in the hot folder: its main path, every file that belongs to it, and its specimen folder (None for
    a slide directly in the hot folder, a specimen of its own)."""

    path: Path
    files: tuple[Path, ...]
    specimen: Path | None = None

    @property
    def name(self) -> str:
        """How logs and the watch state name it: relative to the hot folder (specimen/slide.svs)."""
        return f"{self.specimen.name}/{self.path.name}" if self.specimen is not None else self.path.name

    def signature(self) -> tuple[int, int, float]:
        """(file count, total bytes, newest mtime): changes while a scanner is still writing."""
        stats = []
        for file in self.files:
            try:
                stats.append(file.stat())
            except OSError:  # gone since the listing, or a link loop: not there
                continue
        return len(stats), sum(s.st_size for s in stats), max((s.st_mtime for s in stats), default=0.0)


def find_units(folder: Path, skip: frozenset[Path] = frozenset()) -> Iterator[SlideUnit]:
    """Slides in the hot folder and in its specimen folders (one level down), skipping hidden, partial and failed
    entries and the folders in `skip` (the outbox)."""
    for entry in _entries(folder, skip):
        try:
            if specimen_folder(entry):
                yield from (unit for inner in _entries(entry, skip) if (unit := _unit(inner, entry)) is not None)
                continue
            unit = _unit(entry)
        except OSError:  # vanished or unreadable while we looked: the next look decides
            continue
        if unit is not None:
            yield unit


def _entries(folder: Path, skip: frozenset[Path]) -> list[Path]:
    return [entry for entry in sorted(folder.iterdir()) if not (entry.name.startswith(".") or entry.name == FAILED
            or entry.suffix.lower() in PARTIAL_SUFFIXES or Path(os.path.realpath(entry)) in skip)]  # fmt: skip


def specimen_folder(entry: Path) -> bool:
    """A subfolder of the hot folder that is a specimen: it has a sidecar, or it is neither a DICOM series (.dcm
    files directly in it) nor an MRXS slide's companion folder."""
    from station.station import SIDECAR

    if not entry.is_dir() or entry.with_suffix(".mrxs").exists():
        return False
    return (entry / SIDECAR).exists() or not any(p.is_file() and p.suffix.lower() == ".dcm" for p in entry.iterdir())


def _unit(entry: Path, specimen: Path | None = None) -> SlideUnit | None:
    if entry.is_dir():
        companion = entry.with_suffix(".mrxs")
        dicoms = sorted(p for p in entry.iterdir() if p.is_file() and p.suffix.lower() == ".dcm")
        return SlideUnit(entry, tuple(dicoms), specimen) if not companion.exists() and dicoms else None
    if entry.suffix.lower() in SLIDE_SUFFIXES:  # special files and link loops too: open_slide tells them apart
        extra = entry.with_suffix("")
        files = (entry, *sorted(p for p in extra.rglob("*") if p.is_file())) if entry.suffix.lower() == ".mrxs" and extra.is_dir() else (entry,)
        return SlideUnit(entry, files, specimen)
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

    def __init__(self, folder: Path, state_dir: Path, settle: float, outbox: Path | None = None) -> None:
        self.folder = folder
        self.settle = settle
        self.skip = frozenset({Path(os.path.realpath(outbox))}) if outbox is not None else frozenset()
        digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
        self.state_file = state_dir / f"watch-{digest}.json"
        self.log_file = state_dir / f"watch-{digest}.log"
        # slide name (SlideUnit.name) -> {"signature": [...]}; a list is the signature alone (older state files)
        self.done: dict[str, Any] = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        self.refused: dict[Path, tuple[float, str]] = {}  # specimen folder -> (its sidecar's mtime, why it is refused)
        self._seen: dict[Path, tuple[tuple[int, int, float], float]] = {}
        self._noted = ""
        self._unwritable: set[Path] = set()  # state files that failed to write (a full disk): said once until they work
        self._lock = threading.Lock()  # a background triage logs from its own thread

    def _done_signature(self, name: str) -> list[Any] | None:
        entry = self.done.get(name)
        return entry.get("signature") if isinstance(entry, dict) else entry

    def name_of(self, path: str | None) -> str:
        """A local path as the log names it: relative to the hot folder, where it is inside."""
        if path is None:
            return "?"
        try:
            return str(Path(path).relative_to(self.folder.resolve()))
        except ValueError:
            return Path(path).name

    def ready(self, now: float, skip: set[Path]) -> list[SlideUnit]:
        """Slides not sent yet, not open for writing, and unchanged since the last look when their structure proves
        them whole, or for `settle` seconds when it cannot."""
        from slides import fully_written

        ready = []
        for unit in find_units(self.folder, self.skip):
            signature = unit.signature()
            if unit.path in skip or self._done_signature(unit.name) == list(signature) or unit.specimen in self.refused:
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

    def record(self, unit: SlideUnit, line: str, sent: bool) -> None:
        """One log line per slide; sent slides are remembered by their signature (a changed file at the same name is
        looked at again: the registry tells a rescan from the same bytes)."""
        if sent:
            self.done[unit.name] = {"signature": list(unit.signature())}
            self._persist(self.state_file, self._save_done)
        self._seen.pop(unit.path, None)
        self.log(line)

    def _save_done(self) -> None:
        temporary = self.state_file.with_suffix(".tmp")
        try:
            with _private(temporary, "w") as state:
                state.write(json.dumps(self.done))
            temporary.replace(self.state_file)
        finally:
            temporary.unlink(missing_ok=True)

    def log(self, line: str) -> None:
        """A line on stdout and in the watch log (also from a background triage's thread)."""
        from slides.errors import printable

        stamped = printable(f"{datetime.now(UTC).isoformat(timespec='seconds')} {line}")
        with self._lock:
            print(stamped, flush=True)
            self._persist(self.log_file, lambda: _append(self.log_file, stamped + "\n"))

    def _persist(self, path: Path, write: Callable[[], None]) -> None:
        """A write to the state folder that must not stop the watch: one that fails (a full disk, a read-only
        mount) is said once on stderr, and the next write tries again; slides are still sent and reports delivered."""
        from slides.errors import printable

        try:
            write()
        except OSError as error:
            if path not in self._unwritable:
                self._unwritable.add(path)
                stderr.print(printable(f"cannot write {path}: {error.strerror or error}; watch goes on and tries again with each line (said once)"),
                             markup=False, highlight=False, soft_wrap=True)  # fmt: skip
        else:
            self._unwritable.discard(path)

    def set_aside(self, unit: SlideUnit, reason: str) -> str:
        """Move an unreadable slide (and its MRXS companion folder) to failed/ under the specimen folder it came from
        (two specimens' "block A.svs" stay apart), with one reason file named after it; a path that failed before gets
        a numbered name rather than replacing the earlier slide or its reason. Says where it went (or that it is gone:
        a slide can vanish while it is read)."""
        from slides.errors import printable

        if not os.path.lexists(unit.path):
            return "it is gone"
        companions = [folder for folder in [unit.path.with_suffix("")] if unit.path.suffix.lower() == ".mrxs" and folder.is_dir()]
        target = _unused_failed_place(self.folder / FAILED / unit.path.relative_to(self.folder), bool(companions))
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(unit.path, target)  # the entry itself (a link stays a link, a FIFO is never opened); same file system
        for companion in companions:
            os.rename(companion, target.with_suffix(""))  # the MRXS file finds its folder by its own name
        _reason_file(target).write_text(printable(reason) + "\n")
        return f"moved to {target}"


def _unused_failed_place(target: Path, with_companion: bool) -> Path:
    """`target`, or "name (2).svs", "name (3).svs", ... where nothing failed before (neither the slide, its companion
    folder nor its reason file is there): a second failure of the same path keeps the first one's evidence."""
    def taken(candidate: Path) -> bool:
        places = [candidate, _reason_file(candidate), *([candidate.with_suffix("")] if with_companion else [])]
        return any(os.path.lexists(place) for place in places)

    candidate, number = target, 1
    while taken(candidate):
        number += 1
        candidate = target.with_name(f"{target.stem} ({number}){target.suffix}")
    return candidate


def _reason_file(failed_slide: Path) -> Path:
    """The reason file beside a failed slide, named after it ("block A (2).svs.reason.txt")."""
    return failed_slide.with_name(f"{failed_slide.name}.reason.txt")


def _append(path: Path, text: str) -> None:
    with _private(path, "a") as log:
        log.write(text)


def _private(path: Path, mode: str) -> IO[str]:
    """`path` opened for text, created 0600 in a 0700 folder: the log and state name the hospital's slides."""
    from caseformat.signing import private_folder

    private_folder(path.parent)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if mode == "a" else os.O_TRUNC), 0o600)
    os.fchmod(descriptor, 0o600)  # one made before this rule: private from now on
    return os.fdopen(descriptor, mode)


def watch_folder(
    folder: Path,
    send_one: Callable[[SlideUnit, HotFolder], str],
    state_dir: Path,
    settle: float,
    once: bool,
    poll: float = 0.25,
    register: Callable[[HotFolder, bool], bool] | None = None,
    outbox: Path | None = None,
    resend: Callable[[HotFolder], None] | None = None,
    resend_every: float = RESEND_EVERY,
    unsent: Callable[[SlideUnit, str], None] | None = None,
) -> int:
    """Send every complete slide in `folder` with `send_one` (returns a summary line); returns how many failed.

    `send_one` raises `AlreadySent` for the same bytes sent before from another file: logged as a duplicate.
    `register` notes the specimen folders that appeared at every look (their clock starts then) and registers them
    (before their slides) when the store is due (its second argument; True when it registered one). `resend` sends again
    what the centre found corrupt, after the new slides, every `resend_every` seconds (`once`: one look). `once` processes
    what is there (waiting for slides still being written), then returns. `unsent` tells the centre of a slide that
    will not be sent (a duplicate, or one set aside), with its kind (`caseformat.documents.UNSENT_KINDS`).
    """
    from slides import SlidestreamError
    from station.station import AlreadySent
    from transfer import TransferError

    hot = HotFolder(folder, state_dir, settle, outbox)
    backoff = Backoff()
    failures, given_up = 0, set[Path]()
    next_resend = 0.0
    while True:
        if register is not None:
            try:
                if register(hot, backoff.due(time.monotonic())) and (recovered := backoff.succeeded()):
                    hot.log(f"registering specimens works again ({recovered} answers again)")
            except (TransferError, OSError) as error:  # the store, or the registry on a full disk: the slides wait
                retry = backoff.failed(time.monotonic(), error)
                if retry is not None:
                    hot.log(f"RETRY registering specimens: {error} ({retry})")
        for unit in _ready(hot, given_up) if backoff.due(time.monotonic()) else []:
            try:
                summary = send_one(unit, hot)
            except AlreadySent as duplicate:
                ref = duplicate.resolution.ref
                hot.record(unit, f"DUPLICATE {unit.name}: the same slide as {hot.name_of(duplicate.resolution.earlier)} (case {ref.case}), "
                                 "not triaged or sent again", sent=True)  # fmt: skip
                if unsent is not None:
                    unsent(unit, "duplicate")
                continue
            except TransferError as error:  # the network or the store, not the slide: keep it, retry later
                retry = backoff.failed(time.monotonic(), error)
                if retry is not None:
                    hot.record(unit, f"RETRY {unit.name}: {error} ({retry})", sent=False)
                hot.forget(unit)
                if once:
                    given_up.add(unit.path)
                    failures += 1
                else:
                    break  # the store is the problem: the other slides wait for the next attempt too
            except Exception as error:  # noqa: BLE001 - a bad slide, or a bug it triggers, costs that slide only
                reason = str(error) if isinstance(error, SlidestreamError) else unexpected(error)
                where = _set_aside(hot, unit, reason)
                hot.record(unit, f"FAILED {unit.name}: {reason} ({where})", sent=False)
                if os.path.lexists(unit.path):  # it could not be moved: not tried again by this run
                    given_up.add(unit.path)
                failures += 1
                if unsent is not None:
                    unsent(unit, unsent_kind(error))
            else:
                if recovered := backoff.succeeded():
                    hot.record(unit, f"{recovered} answers again", sent=False)
                hot.record(unit, f"SENT {unit.name}: {summary}", sent=True)
        if resend is not None and time.monotonic() >= next_resend and backoff.due(time.monotonic()):
            resend(hot)
            next_resend = time.monotonic() + resend_every
        if once and not hot.settling():
            return failures
        time.sleep(poll)


def unsent_kind(error: BaseException) -> str:
    """Why a slide set aside is not sent, in the words the centre shows (`caseformat.documents.UNSENT_KINDS`)."""
    from slides import UnsupportedSlideError
    from station.station import SpecimenError

    return "unsupported" if isinstance(error, UnsupportedSlideError) else "refused" if isinstance(error, SpecimenError) else "unreadable"


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


def unexpected(error: BaseException) -> str:
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

    def succeeded(self) -> str | None:
        """Resets the backoff; when it ends a failure that was reported, what had failed ("the store", or "the state
        disk" for a local error such as a full disk), so the line that says it works again names the right thing."""
        from transfer import TransferError
        from transfer.errors import JournalError

        failing = self._failing
        self._delay, self._next, self._failing = self._first, 0.0, None
        if failing is None:
            return None
        local = issubclass(failing, JournalError) or (issubclass(failing, OSError) and not issubclass(failing, TransferError))
        return "the state disk" if local else "the store"


def specimen_info(unit: SlideUnit) -> Any:
    """The `station.SpecimenInfo` of a unit's specimen folder (with the sidecar, when there is one); None for a slide
    directly in the hot folder (a specimen of its own)."""
    from station.station import SIDECAR, SpecimenInfo, read_sidecar

    if unit.specimen is None:
        return None  # the slide's own: the station names it by the file
    sidecar = unit.specimen / SIDECAR
    if sidecar.exists():
        return read_sidecar(sidecar, unit.specimen.name, unit.specimen)
    return SpecimenInfo(unit.specimen.name, f"folder:{unit.specimen.resolve()}")


class Hospital:
    """The station's side of watch apart from sending: specimen folders registered as they appear, and what comes
    back (reports, requests) polled every second in a thread of its own, so a report shows while a slide sends.

    Only what the centre signed, for this station, is read (`trusted`: its public keys; None: nothing is read);
    anything else in the station's folder is refused in one line and passed over."""

    def __init__(self, destination: str, endpoint_url: str | None, state_dir: Path, station: str, outbox: Path, trusted: Any,
                 systems: Any = None, ca_bundle: str | None = None) -> None:
        from station.gross import GrossPhotos

        self._where = (destination, endpoint_url, state_dir, station)
        self._ca_bundle = ca_bundle  # a private CA the store's TLS certificate is signed by (`--ca-bundle`)
        self.systems = systems  # `hospital.systems.HospitalSystems`: where reports go besides the outbox
        self.outbox = outbox
        self.trusted = trusted
        self.stop = threading.Event()
        self._hot: HotFolder | None = None
        self._main: Any = None  # the main thread's Station (the poller makes its own: one SQLite connection each)
        self._found: dict[str | None, str] = {}  # specimen source -> when it was first seen, until the registry has it
        self._next_reconcile = 0.0  # monotonic time of the next `Station.reconcile` round (the first poll does one)
        self.gross = GrossPhotos()  # the specimens' gross photographs (station/gross.py)

    def _station(self) -> Any:
        from station.registry import Registry
        from station.station import Station, Store

        destination, endpoint_url, state_dir, station = self._where
        made = Station(Store.parse(destination, endpoint_url), Registry(state_dir), station, self._ca_bundle)
        made.systems = self.systems
        return made

    def _main_station(self) -> Any:
        """The main thread's Station, opened at first need (a registry on a full disk may not open: that raises)."""
        self._main = self._main or self._station()
        return self._main

    def listen_for_orders(self, host: str, port: int) -> Any:
        """The LIS's orders over MLLP (`hospital.mllp.OrderListener`), each registering its specimen (`register_order`)."""
        from hospital.hl7 import Routing
        from hospital.mllp import OrderListener

        routing = self.systems.routing if self.systems is not None else Routing()  # the ACK's MSH as [watch.hl7] names it
        listener = OrderListener(host, port, self.register_order, routing, self._say).start()
        self._say(f"listening for the LIS's orders on {host}:{listener.port}")
        return listener

    def register_order(self, order: Any) -> None:
        """An order from the LIS registers its specimen (its clock starts now), known by its placer order number: the
        hot folder's specimen.json naming that accession joins it, and the LIS sending it again registers nothing
        new. The identity stays in the registry; the clinical question and site pass the identity gate and go to the
        store. A refusal raises (the LIS gets AE with the reason, naming no patient)."""
        from caseformat.bounded import utc_now
        from station.station import SpecimenInfo, check_context
        from transfer import TransferError

        info = SpecimenInfo(order.placer_order, f"accession:{order.placer_order}", tuple(order.patient.to_identity().items()),
                            tuple(order.context().items()))  # fmt: skip
        check_context(info.context, dict(info.identity), f"order {order.control_id}")
        station = self._station()  # the listener's thread: a registry connection of its own
        if station.registry.specimen(station.key, source=info.source) is not None:
            return
        specimen = station.register(info, publish=False, found_at=utc_now())
        self._say(f"ORDER {order.placer_order}: case {specimen.case} registered, clock started at {specimen.registered_at}")
        try:
            station.publish(specimen)
        except TransferError as error:  # the case is registered here; case.json goes with its first slide
            self._say(f"RETRY publishing case {specimen.case}: {error}")

    def report_unsent(self, unit: SlideUnit, kind: str) -> None:
        """The centre hears of a slide this station will not send (`Station.report_unsent`); the store failing costs
        one line: the slide's record is missing until it fails again (the next run, or its next copy)."""
        from slides import SlidestreamError
        from station.registry import storable
        from station.station import SpecimenInfo
        from transfer import TransferError

        # a slide alone in the hot folder is a specimen of its own, named as `Station.resolve` names it
        info = specimen_info(unit) or SpecimenInfo(unit.path.name, f"file:{storable(str(unit.path.resolve()))}")
        try:
            station = self._main = self._main or self._station()
            case = station.report_unsent(info, unit.path, kind)
        except (SlidestreamError, TransferError, OSError) as error:
            if self._hot is not None:
                self._hot.note(f"cannot tell the centre that {unit.name} is not sent: {error}")
            return
        if self._hot is not None:
            self._hot.log(f"UNSENT {unit.name}: the centre sees case {case}'s slide as not sent ({kind})")

    def register_specimens(self, hot: HotFolder, due: bool = True) -> bool:
        """Each specimen folder with a sidecar that the registry does not know yet: its clock starts when the folder
        is first seen (at every look; kept here until the registry records it, so a store outage or a full disk
        delays the case, not its clock), and when `due` (not waiting out a failure) it is registered and its case.json
        published; one whose case.json the store has not confirmed is published again. A sidecar that is refused is
        said once (until it changes) and its slides wait. The registry or the store failing raises (watch says it
        once and tries again later). True when a specimen was registered."""
        from caseformat.bounded import utc_now
        from station.station import SIDECAR, SpecimenError

        self._hot = hot
        registered = False
        for entry in _entries(hot.folder, hot.skip):
            sidecar = entry / SIDECAR
            try:
                if not (specimen_folder(entry) and sidecar.exists()):
                    continue
                changed = sidecar.stat().st_mtime
            except OSError:
                continue
            if hot.refused.get(entry, (None,))[0] == changed:
                continue
            hot.refused.pop(entry, None)
            try:
                info = specimen_info(SlideUnit(sidecar, (), entry))
                found = self._found.setdefault(info.source, utc_now())
                if not due:
                    continue
                station = self._main = self._main or self._station()
                known = station.registry.specimen(station.key, source=info.source)
                if known is None or station.registry.unpublished(station.key, known.case):
                    specimen = station.register(info, found_at=found)
                    hot.log(f"REGISTERED {entry.name}: case {specimen.case}, clock started at {specimen.registered_at}")
                    registered = True
                self._found.pop(info.source, None)
            except SpecimenError as error:
                hot.refused[entry] = (changed, str(error))
                hot.log(f"REFUSED {entry.name}: {error} (not registered; its slides wait for a corrected {SIDECAR})")
        if due:  # the gross photographs of the specimens registered (station/gross.py)
            self.gross.send(_entries(hot.folder, hot.skip), self._main_station, lambda folder: specimen_info(SlideUnit(folder / SIDECAR, (), folder)), hot.log)
        return registered

    def start_polling(self) -> threading.Thread:
        thread = threading.Thread(target=self._poll_loop, name="notices", daemon=True)
        thread.start()
        if self.systems is not None and self.systems.images is not None:  # a series takes minutes: not in the reports' thread
            threading.Thread(target=self._images_loop, name="pacs", daemon=True).start()
        return thread

    def _images_loop(self) -> None:
        while not self.stop.wait(IMAGES_EVERY):
            self.deliver_images()

    def deliver_images(self) -> None:
        """One round of the PACS outbox (`hospital.pacs`): signed cases' slides into the hospital's PACS."""
        from slides.errors import one_line

        if self.systems is None or self.systems.images is None:
            return
        try:
            self.systems.deliver_images(self._say)
        except Exception as error:  # noqa: BLE001 - its outbox or disk: said once, the next round tries again
            if self._hot is not None:
                self._hot.note(f"cannot send slides to the PACS: {one_line(error)}")

    def _poll_loop(self) -> None:
        """Poll every NOTICE_POLL seconds while a case of this station awaits its report, every IDLE_NOTICE_POLL
        otherwise: most of an alliance's stations are idle most of the day, and each poll is a LIST (a billed request)."""
        station = None  # made at the first poll that can open the registry (a busy or full disk must not end the thread)
        polled = -IDLE_NOTICE_POLL
        while not self.stop.is_set():
            if station is None or time.monotonic() - polled >= IDLE_NOTICE_POLL or station.awaiting_report():
                station, polled = self.poll_once(station), time.monotonic()
            self.stop.wait(NOTICE_POLL)

    def _say(self, line: str) -> None:
        from slides.errors import printable

        if self._hot is not None:
            self._hot.log(line)
        else:
            print(printable(line), flush=True)

    def poll_once(self, station: Any = None) -> Any:
        """One LIST of centre/{station}/_notices/ after the last key handled (the fast path), and every RECONCILE_EVERY
        seconds the reports of this station's open cases read from the cases themselves (so a notice that lands late
        or never is no report missed): each report or request not delivered yet printed, logged and written to the
        outbox, or refused in one line. A store or an outbox that cannot be used is said once and tried again at
        the next poll. Returns the station used, None when its registry could not be opened (tried next time)."""
        from slides.errors import one_line

        if self.trusted is None:
            return station
        try:
            station = station or self._station()
            for key, data in station.new_notices():
                self._deliver(station, key, data)
                station.handled(key)
            if time.monotonic() >= self._next_reconcile:
                station.reconcile(self.trusted, self.outbox, self._say,
                                  marks=lambda mark: self.gross.deliver(station, self.outbox, mark, self._say))
                self._next_reconcile = time.monotonic() + RECONCILE_EVERY
            if self.systems is not None:
                self.systems.deliver(self._say)
        except OSError as error:  # the outbox or the state disk (the store's errors are TransferErrors): said once
            if self._hot is not None:
                self._hot.note(f"cannot deliver what comes back to station {self._where[3]} (outbox {self.outbox}): {one_line(error)}")
        except Exception as error:  # noqa: BLE001 - the store, or a bug: said once, the thread goes on
            if self._hot is not None:
                self._hot.note(f"cannot read what comes back to station {self._where[3]}: {one_line(error)}")
        return station

    def _deliver(self, station: Any, key: str, data: bytes | None) -> None:
        """One notice to the operating room (once per case, kind and number: `Station.deliver`), or one line saying
        why it is refused. A registry or outbox that cannot be used raises: the notice is tried again."""
        from caseformat.documents import GrossMark
        from caseformat.errors import DocumentError
        from station.gross import is_mark, read_mark

        try:
            notice = read_mark(station, key, data, self.trusted) if is_mark(key) else station.notice(key, data, self.trusted)
        except DocumentError as error:
            self._say(f"REFUSED notice {key}: {str(error).removeprefix(f'{key}: ')}")
            return
        except Exception as error:  # noqa: BLE001 - whatever a notice holds, it costs that notice only
            self._say(f"REFUSED notice {key}: {unexpected(error)}")
            return
        if isinstance(notice, GrossMark):
            self.gross.deliver(station, self.outbox, notice, self._say)
        else:
            station.deliver(self.outbox, notice, key, self._say)
