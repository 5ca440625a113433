"""A send: slides -> tiling -> transfer for one slide file, as `slidestream send`, `resume` and the hot folder run it.

The local registry says which slide version a file is (`Resolver`), the pyramid's pieces stream out as they are
produced (`image_pieces`), edge triage runs beside the upload (`station.edge`), and progress shows on stderr
(`RichListener`). Heavy imports (boto3, zarr, the pyramid writer) happen inside, so the command line stays quick.
"""

from __future__ import annotations

from contextlib import closing
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from station.request import SendRequest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from slides import Slide, SlidestreamError
    from tiling import Piece, PyramidPlan, SendOrder
    from transfer import Progress as SendProgress
    from transfer import Sender, SendRecord, SendResult

stderr = Console(stderr=True)



RESEND_WINDOW_HOURS = 24  # a complete send's pieces the centre finds corrupt are sent again for this long after it
RESEND_CHECKS = 100  # complete sends looked at per check (newest first): one GET of corrupt.json each
MILESTONE_LINES = {
    "overview": "overview available",
    "tissue_full_resolution": "all tissue at full resolution available",
}


def warn(line: str) -> None:
    """One line from outside (a store's document) on stderr, made printable."""
    from slides.errors import printable

    stderr.print(printable(line), markup=False, highlight=False, soft_wrap=True)


def asked_again(journal: Any, say: Callable[[str], None], mine: Callable[[SendRecord], bool] | None = None) -> list[tuple[SendRecord, list[str]]]:
    """Complete sends of the last RESEND_WINDOW_HOURS (at most RESEND_CHECKS, newest first; `mine`: only those it
    accepts) whose slide is still here unchanged and whose pieces the centre found corrupt (`transfer.centre.corrupt_request`),
    with those pieces. A malformed corrupt.json costs one line and that send; a store that cannot be read, one line
    and the rest of this look (the next look tries again)."""
    from datetime import UTC, datetime, timedelta

    from caseformat.bounded import utc_now
    from caseformat.errors import DocumentError
    from objectstore.clients import make_client
    from transfer.centre import corrupt_request
    from transfer.errors import TransferError

    since = utc_now(datetime.now(UTC) - timedelta(hours=RESEND_WINDOW_HOURS))
    clients: dict[tuple[str | None, str | None], Any] = {}
    asked = []
    for record in journal.completed_since(since, RESEND_CHECKS):
        request = SendRequest.from_json(record.args)
        if not unchanged_since(request.slide, record.started_at) or (mine is not None and not mine(record)):
            continue
        where = (record.destination.endpoint, request.ca_bundle)
        try:
            client = clients[where] if where in clients else clients.setdefault(where, make_client(*where))
            keys = corrupt_request(client, record.destination)
        except DocumentError as error:
            say(f"{error} (ignored: nothing of case {record.destination.ref.label} is sent again for it)")
            continue
        except TransferError as error:
            say(f"cannot look for pieces the centre found corrupt: {error} (looked again later)")
            break
        if keys:
            asked.append((record, keys))
    return asked


def unchanged_since(slide: str, started_at: str) -> bool:
    """Whether the slide file is still there and not written since its send started: a rescan written in its place is
    another version, whose bytes must never be sent as this one's."""
    from datetime import datetime

    try:
        return Path(slide).stat().st_mtime <= datetime.fromisoformat(started_at).timestamp()
    except (OSError, ValueError):
        return False


def resent_line(result: SendResult) -> str:
    return f"RESENT {result.ref.label}: {result.resent} pieces the centre found corrupt"


def give_up(record: SendRecord, error: SlidestreamError, state_dir: Path | None) -> None:
    """A resumed send that failed for good before its sender could retract it (its slide is gone or unreadable now):
    retract it here, so the store says failed and the next `resume` does not fail on it again."""
    from transfer import Journal, default_state_dir
    from transfer.options import SendOptions
    from transfer.retraction import resumable
    from transfer.sender import Sender

    if resumable(error):
        return
    with Journal(state_dir or default_state_dir()) as journal:
        current = journal.send(record.destination)
        if current is None or current.finished_at is not None:
            return  # the sender retracted it already
        request = SendRequest.from_json(record.args)
        options = SendOptions(deadline=min(request.deadline, 60.0), ca_bundle=request.ca_bundle)
        Sender(record.destination, journal, options, private=slide_names(Path(request.slide))).retract(str(error))


def slide_names(path: Path) -> tuple[str, ...]:
    """What of a slide's path may identify the patient, longest first: never written to the store (its folder's name
    too: a hot folder's specimen folder is named after the accession)."""
    return (str(path), str(path.resolve()), path.name, path.stem, path.resolve().parent.name)


def image_pieces(slide: Slide, request: SendRequest, case: str) -> tuple[PyramidPlan, Iterator[Piece], SendOrder]:
    """The plan (the overview only, until the tissue is known), the pieces a send of `slide` with these arguments
    uploads (deterministic: tests rebuild them), and the order they are produced in (it settles once the tissue is
    known, and edge triage re-ranks it mid-stream).

    The image is named after the case, never the file (file names hold accession numbers); what it says of the
    source is the slide's own summary, de-identified unless the slide was opened with --keep-phi.
    """
    from tiling import ConvertOptions, SendOrder, plan_pyramid, produce

    options = ConvertOptions(
        quality=request.quality, lossless=request.lossless, keep_background=request.keep_background, hub_levels=not request.full_pyramid
    )
    plan = plan_pyramid(slide, options, defer_tissue=True)  # the overview goes out before the tissue is known
    order = SendOrder(plan)
    return plan, produce(slide, plan, case, slide.summary(), order), order


class Resolver:
    """Which slide version a send's file is, from the local registry (`station.station`), once the slide has
    opened (a file that is no slide registers nothing); remembers the answer for the caller."""

    def __init__(self, destination: str, endpoint_url: str | None, state_dir: Path, station: str | None = None, case: str | None = None,
                 context_file: Path | None = None, ca_bundle: str | None = None, specimen: Any = None, duplicates: bool = True) -> None:
        """`specimen`: a `station.SpecimenInfo` (watch's folder); `duplicates`: whether the same bytes at another
        path count as a resend (send) or are refused as `AlreadySent` (watch: logged, not sent again)."""
        self._where = (destination, endpoint_url, state_dir, station, ca_bundle)
        self._case, self._context_file, self._specimen, self._duplicates = case, context_file, specimen, duplicates
        self.resolution: Any = None

    def __call__(self, path: Path) -> Any:
        from station.registry import Registry
        from station.station import (
            DUPLICATE,
            AlreadySent,
            Station,
            Store,
            default_station,
            read_sidecar,
        )

        destination, endpoint_url, state_dir, station, ca_bundle = self._where
        info = self._specimen or (read_sidecar(self._context_file, self._context_file.parent.name) if self._context_file else None)
        with Registry(state_dir) as registry:
            hospital = Station(Store.parse(destination, endpoint_url), registry, station or default_station(), ca_bundle)
            self.resolution = hospital.resolve(path, info, self._case)
            if self.resolution.kind == DUPLICATE and not self._duplicates:
                raise AlreadySent(self.resolution)
            ref = self.resolution.ref
            return ref, hospital.case_record(ref.case), hospital.claim(ref)

    def forget(self) -> None:
        """The send could not start (the store refused it, another station took the slide number): the registry
        forgets the new version (and a specimen registered for it); the next send numbers anew."""
        self._station(lambda hospital: hospital.forget(self.resolution))

    def settle(self) -> None:
        """After the send: the registry learns the version's full SHA-256 (resends of copies are then known), and a new
        slide fulfils the rework order it answers."""

        self._station(lambda hospital: hospital.settle(self.resolution))

    def _station(self, use: Callable[[Any], None]) -> None:
        from station.registry import Registry
        from station.station import Station, Store, default_station

        destination, endpoint_url, state_dir, station, ca_bundle = self._where
        with Registry(state_dir) as registry:
            use(Station(Store.parse(destination, endpoint_url), registry, station or default_station(), ca_bundle))


def run_send(request: SendRequest, state_dir: Path | None, triage_done: Callable[[str, float | None, str | None], None] | None = None,
             resolver: Resolver | None = None, advice: Callable[[str], None] | None = None) -> SendResult:
    """One send (as new, or as `resume` finds it in the journal), to the slide version it names, or to the one
    `resolver` gives the file once it has opened (a new send).

    With edge triage, the send waits for the triage before it returns, unless `triage_done` is given: then it
    returns once its objects are verified and the triage finishes in the background, calling `triage_done`. What
    the scan's checks advise ("rescan advised: ...") also goes to `advice` at once (watch's log).
    """
    from caseformat.bounded import utc_now
    from caseformat.documents import CaseRecord
    from slides import open_slide
    from station.edge import EdgeTriage
    from station.scan_check import ScanChecks
    from transfer import Journal, default_state_dir, parse_destination

    slide_path = Path(request.slide)
    with open_slide(slide_path, keep_phi=request.keep_phi) as slide:
        record = None
        if resolver is not None:
            ref, record, claim = resolver(slide_path)
            request = request.for_version(ref, claim)
        if not request.case:
            raise TypeError("run_send needs a case or a resolver")
        dest = parse_destination(request.destination, request.case, request.endpoint_url, request.slide_id or "s1", request.version_id or "v1")
        plan, produced, order = image_pieces(slide, request, dest.ref.label)
        # the first piece starts the shard builders (processes) on the overview: it builds while boto3 is imported,
        # the client is made and the preflight request travels
        pieces = chain([next(produced)], produced)
        from transfer import Sender, SendOptions
        from transfer.errors import SlideTakenError, TransferError

        options = SendOptions(
            concurrency=request.upload_concurrency,
            max_rate_mbit=request.max_rate,
            sse=request.sse,
            sse_kms_key_id=request.sse_kms_key_id,
            deadline=request.deadline,
            ca_bundle=request.ca_bundle,
            hub_wait=request.hub_wait,
        )
        with closing(produced), Journal(state_dir or default_state_dir()) as journal, RichListener(dest.ref.label) as listener:
            registration = (record or CaseRecord(dest.case, utc_now())).to_json()
            sender = Sender(dest, journal, options, listener, private=slide_names(slide_path), registration=registration)
            earlier = journal.send(dest)  # this version sent to the end before: a resend, which triages and checks nothing again
            first = not (earlier is not None and earlier.finished_at is not None and not earlier.failed)
            triage = request.edge and first
            try:
                sender.preflight(request.to_json())  # a link that is down: journaled, waits until --deadline
                sender.begin(request.to_json())
                if request.claim:
                    sender.claim(request.claim.encode())
            except TransferError as error:
                if resolver is not None and (isinstance(error, SlideTakenError) or sender.journal.send(dest) is None):
                    resolver.forget()  # refused before it was journaled (credentials, bucket), or its number taken
                raise
            resend = requested_resends(sender) if earlier is not None and not earlier.failed else []  # only what this station sent is asked for
            listener.start(len(plan.shards))
            checks = ScanChecks(slide_path, request.keep_phi, sender, listener.say, advice).start() if first else None  # "rescan advised: ..." within seconds
            edge = EdgeTriage(slide_path, dest, order, stderr, triage_done, request.model).start() if triage else None
            listener.on_overview = edge.overview_sent if edge else None
            if edge is not None and "overview" in sender.milestones:
                edge.overview_sent()  # a resend: the overview is on the server already
            try:
                result = sender.send(order, listener.counted(pieces), resend)
            except BaseException:
                if sender.retracted:  # nothing of a failed slide stays on the store
                    if edge is not None:
                        edge.cancel()
                    if checks is not None:
                        checks.join()  # its uploads end before the delete, so none lands after it
                    sender.retract_results()
                raise
            listener.finish(len(order.plan.shards))
            if checks is not None:
                checks.join()
            if edge is not None and triage_done is None:
                result.milestones["heatmap"] = edge.join()
    if resolver is not None:
        resolver.settle()
    empty = f", {listener.empty} empty" if listener.empty else ""
    stderr.print(
        f"{result.url}: {listener.shards}/{listener.shards} shards{empty}; {result.objects} objects ({result.bytes_sent / 1e6:.1f} MB) "
        f"sent, {result.objects_skipped} already there, in {result.seconds:.1f} s{f' ({resolver.resolution.kind})' if resolver else ''}",
        markup=False,
        highlight=False,
    )
    if result.resent:
        stderr.print(resent_line(result), markup=False, highlight=False)
    if sender.changed_since_sent:
        warn(f"NOT RESENT {result.ref.label}: the slide no longer gives the bytes first sent for "
             f"{', '.join(sender.changed_since_sent)} (the file changed or went bad here); kept listed as corrupt, rescan the slide")
    return result


def requested_resends(sender: Sender) -> list[str]:
    """The pieces the centre asks the sender's send for again; a request that cannot be read is one line, and the
    send goes on without it."""
    from caseformat.errors import DocumentError
    from transfer.errors import TransferError

    try:
        return sender.requested_resends()
    except DocumentError as error:
        warn(f"{error} (ignored: nothing is sent again for it)")
    except TransferError as error:
        warn(f"cannot look for pieces the centre found corrupt: {error} (looked again at the next send or resume)")
    return []


class RichListener:
    """Progress bar over shards with bytes, Mbit/s, ETA and link state; one line per milestone.

    The sender's planned count grows when the tissue plan settles and shrinks when shards turn out empty; the bar's
    total only grows (the most ever planned) and a shard that turned out empty counts as done, so the bar never runs
    backwards and ends full, at the count the final line states (`shards`, `empty`).

    Off a terminal (logs, pipes, tests) there is no bar, and the milestone lines wait for the send to succeed: a send
    that fails ends in its one error line alone (and what it published is retracted, so "overview available" would
    no longer be true).
    """

    def __init__(self, case: str) -> None:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[sent]}"),
            TimeElapsedColumn(),
        )
        self._bar = Progress(*columns, console=stderr, disable=not stderr.is_terminal)
        self._case = case
        self.on_overview: Callable[[], None] | None = None  # edge triage waits for the overview to be on the server
        self._task = self._bar.add_task(f"case {case}", total=None, sent="")
        self._held: list[str] = []
        self.shards = 0  # the bar's total: the most shards ever planned
        self.empty = 0  # of those, the ones that turned out empty
        self._done = 0  # the bar's count: shards verified, plus the empty ones
        self._produced = 0

    def __enter__(self) -> Self:
        self._bar.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self._bar.__exit__(None, None, None)
        if kind is None:
            for line in self._held:
                stderr.print(line, markup=False, highlight=False)

    def start(self, shards: int) -> None:
        self.shards = max(self.shards, shards)
        self._bar.update(self._task, total=self.shards, description=f"sending case {self._case}")

    def progress(self, state: SendProgress) -> None:
        eta = f", ETA {state.eta:.0f} s" if state.eta is not None else ""
        sent = f"{state.bytes_sent / 1e6:.1f} MB, {state.rate * 8 / 1e6:.1f} Mbit/s{eta}"
        status = "waiting for network" if state.waiting_for_network else f"sending case {self._case}"
        self.shards = max(self.shards, state.objects_planned)
        self.empty = self.shards - state.objects_planned
        self._done = min(self.shards, max(self._done, state.objects_done + self.empty))
        self._bar.update(self._task, completed=self._done, total=self.shards, description=status, sent=sent)

    def counted(self, pieces: Iterator[Piece]) -> Iterator[Piece]:
        """`pieces`, counting the shards among them (shards that turn out empty never come out of the writer)."""
        from tiling import PieceKind

        for piece in pieces:
            self._produced += piece.kind is PieceKind.SHARD
            yield piece

    def finish(self, planned: int) -> None:
        """The send succeeded: of the `planned` shards (the settled plan), those never produced were empty."""
        self.shards = max(self.shards, planned)
        self.empty = self.shards - self._produced
        self._done = self.shards
        self._bar.update(self._task, completed=self._done, total=self.shards)

    def say(self, line: str) -> None:
        """A line for the technician while the slide is sent (the scan's checks: "rescan advised: ..."): at once on a
        terminal, else held with the milestone lines (from any thread)."""
        from slides.errors import printable

        if stderr.is_terminal:
            self._bar.console.print(printable(line), markup=False, highlight=False)
        else:
            self._held.append(printable(line))

    def milestone(self, name: str, seconds: float) -> None:
        line = f"{MILESTONE_LINES.get(name, name)} after {seconds:.1f} s"
        if stderr.is_terminal:
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            self._held.append(line)
        if name == "overview" and self.on_overview is not None:
            self.on_overview()
