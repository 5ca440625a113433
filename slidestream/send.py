"""`slidestream send` and `slidestream resume`: slides -> tiling -> transfer, with live progress on stderr.

Heavy imports (boto3, zarr, the pyramid writer) happen inside the commands so `slidestream info` stays quick.
"""

from __future__ import annotations

import json
from contextlib import closing
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Self

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from slides import Slide, SlidestreamError
    from tiling import Piece, PyramidPlan, SendOrder
    from transfer import Progress as SendProgress
    from transfer import Sender, SendRecord, SendResult

stderr = Console(stderr=True)
stdout = Console()

# A send's options and their defaults, the one copy `send`, `watch`, `demo` and the journal (`resume`) share.
# Edge triage is on: the hospital's hot folder is the main job and the heatmap travelling first is the point; on a
# 2-core machine it runs in one spawned process after the overview is out, and `watch` runs one triage at a time.
SEND_DEFAULTS: dict[str, Any] = {
    "case": None,
    "slide_id": None,  # the slide version the registry gave this file (s1, v1; journaled for `resume`)
    "version_id": None,
    "claim": None,  # the slide.json that takes the slide's number on the store, created by the send
    "concurrency": "auto",
    "max_rate": None,
    "quality": 90,
    "lossless": False,
    "keep_background": False,
    "keep_phi": False,
    "sse": None,
    "sse_kms_key_id": None,
    "ca_bundle": None,
    "deadline": 600.0,
    "edge": True,
    "model": None,  # the edge triage's model package (its folder; None: the default model)
    "full_pyramid": False,
    "hub_wait": 30.0,  # seconds a send waits at its end for a hub to claim the in-between levels before building them
}
FULL_PYRAMID_HELP = "Also send the in-between levels (2x, 8x, ...) that a hub would build from what arrived (for a store without `slidestream hub`)."
HUB_WAIT_HELP = ("Seconds to wait at the end for a hub to claim the slide before building and sending the in-between levels "
                 "here (0: always here, as a station without a hub should).")
EDGE_HELP = ("Triage here first (default: on, for send and watch alike): where a model is validated for the slide, a heatmap of "
             "sampled tiles travels first and hot regions are sent first.")
MODEL_HELP = ("The model package edge triage scores with: a folder, or a name in the centre's models folder, as `analyze --model` "
              "(default: the Capricorn colorectal package).")
CASE_HELP = ("Add the slide to this case of the store (a case ID as `status` and the viewer show it; one the store does "
             "not have yet is registered under it). Default: the registry's (a resend, a rescan) or a new specimen's random ID.")
STATION_HELP = ("This station's ID, as the centre enrolled it (`slidestream stations add`): its folder on the store, the "
                "first part of its case IDs, where reports and requests come back (default: the host name).")
CENTRE_KEYS_HELP = ("The centre's public keys (PEM, from `slidestream keys export` at the centre): only reports and requests they "
                    "verify are read (default STATE_DIR/centre-keys.pem).")
INTERRUPTED = "interrupted: `slidestream resume` (or the same send command) continues where this stopped"
RESEND_WINDOW_HOURS = 24  # a complete send's pieces the centre finds corrupt are sent again for this long after it
RESEND_CHECKS = 100  # complete sends looked at per check (newest first): one GET of corrupt.json each

MILESTONE_LINES = {
    "overview": "overview available",
    "tissue_full_resolution": "all tissue at full resolution available",
}


def send(
    slide: Annotated[Path, typer.Argument(help="The slide to send (a file, or a DICOM series folder).")],
    destination: Annotated[str, typer.Argument(help="s3://BUCKET/PREFIX; the slide goes to PREFIX/stations/STATION/CASE/slides/SLIDE/VERSION/.")],
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint (MinIO, Ceph RGW, ...); default AWS.")
    ] = None,
    case: Annotated[
        str | None, typer.Option("--case", help=CASE_HELP)
    ] = None,
    context_file: Annotated[
        Path | None, typer.Option("--context-file", help="The specimen's specimen.json (identity kept here, clinical context sent), as in a hot folder.", dir_okay=False)
    ] = None,
    station: Annotated[str | None, typer.Option("--station", envvar="SLIDESTREAM_STATION", help=STATION_HELP)] = None,
    concurrency: Annotated[
        str, typer.Option("--concurrency", help="Uploads in flight: a number (1-32) or 'auto' (sized from throughput and round trip).")
    ] = SEND_DEFAULTS["concurrency"],
    max_rate: Annotated[
        float | None, typer.Option("--max-rate", min=0.01, help="Cap on upload rate in Mbit/s, to share the uplink.")
    ] = None,
    quality: Annotated[int, typer.Option(min=1, max=100, help="JPEG quality of re-encoded chunks.")] = SEND_DEFAULTS["quality"],
    lossless: Annotated[bool, typer.Option("--lossless", help="zstd chunks instead of JPEG.")] = SEND_DEFAULTS["lossless"],
    keep_background: Annotated[bool, typer.Option("--keep-background", help="Also send glass-only chunks.")] = SEND_DEFAULTS["keep_background"],
    keep_phi: Annotated[
        bool, typer.Option("--keep-phi", help="Keep label/macro images and identifying metadata (off: de-identified).")
    ] = SEND_DEFAULTS["keep_phi"],
    sse: Annotated[str | None, typer.Option("--sse", help="Server-side encryption: AES256 or aws:kms.")] = None,
    sse_kms_key_id: Annotated[str | None, typer.Option("--sse-kms-key-id", help="KMS key for --sse aws:kms.")] = None,
    ca_bundle: Annotated[
        Path | None, typer.Option("--ca-bundle", help="PEM bundle of the CA that signed a TLS endpoint's certificate.")
    ] = None,
    deadline: Annotated[
        float, typer.Option("--deadline", min=0, help="Seconds the link may stay down before giving up (exit 3; resume later).")
    ] = SEND_DEFAULTS["deadline"],
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="Where the journal lives (default $XDG_STATE_HOME/slidestream).")
    ] = None,
    edge: Annotated[bool, typer.Option("--edge/--no-edge", help=EDGE_HELP)] = SEND_DEFAULTS["edge"],
    model: Annotated[str | None, typer.Option("--model", metavar="PACKAGE", help=MODEL_HELP)] = SEND_DEFAULTS["model"],
    full_pyramid: Annotated[bool, typer.Option("--full-pyramid", help=FULL_PYRAMID_HELP)] = SEND_DEFAULTS["full_pyramid"],
    hub_wait: Annotated[float, typer.Option("--hub-wait", min=0, help=HUB_WAIT_HELP)] = SEND_DEFAULTS["hub_wait"],
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")] = False,
) -> None:
    """Convert a slide and stream it to S3 at the same time; a rerun (or `resume`) skips what already arrived."""
    from slides.slide import slide_path_kind

    slide_path_kind(slide)  # a link loop or a FIFO is one line here, before the path is resolved for the journal
    if concurrency != "auto" and not (concurrency.isdigit() and 1 <= int(concurrency) <= 32):
        raise typer.BadParameter(f"{concurrency!r} is neither 'auto' nor a number from 1 to 32", param_hint="--concurrency")
    if sse not in (None, "AES256", "aws:kms"):
        raise typer.BadParameter(f"{sse!r} is not AES256 or aws:kms", param_hint="--sse")
    if sse_kms_key_id and sse != "aws:kms":
        raise typer.BadParameter("needs --sse aws:kms", param_hint="--sse-kms-key-id")
    from caseformat.layout import validate_name, validate_station
    from transfer import default_state_dir
    from transfer.target import parse_endpoint, parse_store_url

    parse_store_url(destination)  # a bad URL, endpoint, case or station is one line before the slide is opened
    parse_endpoint(endpoint_url)
    if case is not None:
        validate_name(case)  # the station's ID goes before it (`caseformat.layout.qualified_case`)
    if station is not None:
        validate_station(station)
    args = send_arguments(
        slide,
        destination,
        endpoint_url,
        concurrency=concurrency,
        max_rate=max_rate,
        quality=quality,
        lossless=lossless,
        keep_background=keep_background,
        keep_phi=keep_phi,
        sse=sse,
        sse_kms_key_id=sse_kms_key_id,
        ca_bundle=str(ca_bundle.resolve()) if ca_bundle else None,
        deadline=deadline,
        edge=edge,
        model=edge_model(model),
        full_pyramid=full_pyramid,
        hub_wait=hub_wait,
    )
    state = state_dir or default_state_dir()
    try:
        result = run_send(args, state, resolver=Resolver(destination, endpoint_url, state, station, case, context_file, args["ca_bundle"]))
    except KeyboardInterrupt:
        interrupted()
    if as_json:
        stdout.print_json(json.dumps(result.summary()))


def resume(
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="Where the journal lives (default $XDG_STATE_HOME/slidestream).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of summaries on stdout.")] = False,
) -> None:
    """Finish every send the journal lists as unfinished, with the arguments it was started with."""
    from slides import SlidestreamError
    from transfer import Journal, default_state_dir
    from transfer.target import parse_endpoint

    parse_endpoint(None)  # a malformed $AWS_ENDPOINT_URL (which boto3 reads for sends without one) is one line here
    with Journal(state_dir or default_state_dir()) as journal:
        records = journal.unfinished()
        asked = asked_again(journal, warn)
    if not records and not asked:
        stderr.print("nothing to resume", highlight=False)
    summaries, failure = [], None
    for record in records:
        stopped = f" (stopped by: {record.error})" if record.error else ""
        stderr.print(f"resuming case {record.destination.case} -> {record.destination.url}{stopped}", markup=False, highlight=False)
        try:
            summaries.append(run_send(record.args, state_dir).summary())
        except KeyboardInterrupt:
            interrupted()
        except SlidestreamError as error:  # report it and go on with the next case
            stderr.print(f"slidestream: error: {error}", markup=False, highlight=False, soft_wrap=True)
            failure = failure or error
            give_up(record, error, state_dir)
    for record, keys in asked:  # complete sends: a failure leaves the image as it is, and corrupt.json asks again
        stderr.print(f"resending {len(keys)} pieces of case {record.destination.ref.label} the centre found corrupt -> {record.destination.url}",
                     markup=False, highlight=False)  # fmt: skip
        try:
            summaries.append(run_send(record.args, state_dir).summary())
        except KeyboardInterrupt:
            interrupted()
        except SlidestreamError as error:
            stderr.print(f"slidestream: error: {error}", markup=False, highlight=False, soft_wrap=True)
            failure = failure or error
    if as_json:
        stdout.print_json(json.dumps(summaries))
    if failure is not None:
        raise typer.Exit(getattr(failure, "exit_code", 2))


def warn(line: str) -> None:
    """One line from outside (a store's document) on stderr, made printable."""
    from slides.errors import printable

    stderr.print(printable(line), markup=False, highlight=False, soft_wrap=True)


def asked_again(journal: Any, say: Callable[[str], None], mine: Callable[[SendRecord], bool] | None = None) -> list[tuple[SendRecord, list[str]]]:
    """Complete sends of the last RESEND_WINDOW_HOURS (at most RESEND_CHECKS, newest first; `mine`: only those it
    accepts) whose slide is still here unchanged and whose pieces the centre found corrupt (`transfer.sender.corrupt_request`),
    with those pieces. A malformed corrupt.json costs one line and that send; a store that cannot be read, one line
    and the rest of this look (the next look tries again)."""
    from datetime import UTC, datetime, timedelta

    from caseformat.bounded import utc_now
    from caseformat.errors import DocumentError
    from transfer.errors import TransferError
    from transfer.network import make_client
    from transfer.sender import corrupt_request

    since = utc_now(datetime.now(UTC) - timedelta(hours=RESEND_WINDOW_HOURS))
    clients: dict[tuple[str | None, str | None], Any] = {}
    asked = []
    for record in journal.completed_since(since, RESEND_CHECKS):
        if not unchanged_since(record.args.get("slide"), record.started_at) or (mine is not None and not mine(record)):
            continue
        where = (record.destination.endpoint, record.args.get("ca_bundle"))
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


def unchanged_since(slide: str | None, started_at: str) -> bool:
    """Whether the slide file is still there and not written since its send started: a rescan written in its place is
    another version, whose bytes must never be sent as this one's."""
    from datetime import datetime

    try:
        return slide is not None and Path(slide).stat().st_mtime <= datetime.fromisoformat(started_at).timestamp()
    except (OSError, ValueError):
        return False


def resent_line(result: SendResult) -> str:
    return f"RESENT {result.ref.label}: {result.resent} pieces the centre found corrupt"


def interrupted() -> None:
    """Ctrl-C: the send stays in the journal (a stop is resumable), so say how to go on, as a shell would exit."""
    stderr.print(INTERRUPTED, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(130)


def give_up(record: SendRecord, error: SlidestreamError, state_dir: Path | None) -> None:
    """A resumed send that failed for good before its sender could retract it (its slide is gone or unreadable now):
    retract it here, so the store says failed and the next `resume` does not fail on it again."""
    from transfer import Journal, default_state_dir
    from transfer.sender import Sender, SendOptions, resumable

    if resumable(error):
        return
    with Journal(state_dir or default_state_dir()) as journal:
        current = journal.send(record.destination)
        if current is None or current.finished_at is not None:
            return  # the sender retracted it already
        options = SendOptions(deadline=min(float(record.args.get("deadline", 600.0)), 60.0), ca_bundle=record.args.get("ca_bundle"))
        Sender(record.destination, journal, options, private=slide_names(Path(record.args["slide"]))).retract(str(error))


def slide_names(path: Path) -> tuple[str, ...]:
    """What of a slide's path may identify the patient, longest first: never written to the store (its folder's name
    too: a hot folder's specimen folder is named after the accession)."""
    return (str(path), str(path.resolve()), path.name, path.stem, path.resolve().parent.name)


def edge_model(model: str | None) -> str | None:
    """`--model` as a send keeps it: the package's folder, so `resume` scores with the same package; checked now, so a
    package that cannot be used is one line before anything is sent, not a triage missing from every slide."""
    if model is None:
        return None
    from slidestream.analyze import model_package

    return str(model_package(model).folder.resolve())


def send_arguments(slide: Path, destination: str, endpoint_url: str | None, **options: Any) -> dict[str, Any]:
    """A send's complete arguments, as the journal stores them for `resume`: `send`'s defaults plus `options`."""
    unknown = set(options) - set(SEND_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown send options: {sorted(unknown)}")
    return {"slide": str(slide.resolve()), "destination": destination, "endpoint_url": endpoint_url, **SEND_DEFAULTS, **options}


def image_pieces(slide: Slide, args: dict[str, Any], case: str) -> tuple[PyramidPlan, Iterator[Piece], SendOrder]:
    """The plan (the overview only, until the tissue is known), the pieces a send of `slide` with these arguments
    uploads (deterministic: tests rebuild them), and the order they are produced in (it settles once the tissue is
    known, and edge triage re-ranks it mid-stream).

    The image is named after the case, never the file (file names hold accession numbers); what it says of the
    source is the slide's own summary, de-identified unless the slide was opened with --keep-phi.
    """
    from tiling import ConvertOptions, SendOrder, plan_pyramid, produce

    options = ConvertOptions(
        quality=args["quality"], lossless=args["lossless"], keep_background=args["keep_background"], hub_levels=not args.get("full_pyramid", SEND_DEFAULTS["full_pyramid"])
    )
    plan = plan_pyramid(slide, options, defer_tissue=True)  # the overview goes out before the tissue is known
    order = SendOrder(plan)
    return plan, produce(slide, plan, case, slide.summary(), order), order


class Resolver:
    """Which slide version a send's file is, from the local registry (slidestream/station.py), once the slide has
    opened (a file that is no slide registers nothing); remembers the answer for the caller."""

    def __init__(self, destination: str, endpoint_url: str | None, state_dir: Path, station: str | None = None, case: str | None = None,
                 context_file: Path | None = None, ca_bundle: str | None = None, specimen: Any = None, duplicates: bool = True) -> None:
        """`specimen`: a `station.SpecimenInfo` (watch's folder); `duplicates`: whether the same bytes at another
        path count as a resend (send) or are refused as `AlreadySent` (watch: logged, not sent again)."""
        self._where = (destination, endpoint_url, state_dir, station, ca_bundle)
        self._case, self._context_file, self._specimen, self._duplicates = case, context_file, specimen, duplicates
        self.resolution: Any = None

    def __call__(self, path: Path) -> Any:
        from slidestream.registry import Registry
        from slidestream.station import (
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
        """After the send: the registry learns the version's full SHA-256 (resends of copies are then known)."""

        self._station(lambda hospital: hospital.settle(self.resolution.ref))

    def _station(self, use: Callable[[Any], None]) -> None:
        from slidestream.registry import Registry
        from slidestream.station import Station, Store, default_station

        destination, endpoint_url, state_dir, station, ca_bundle = self._where
        with Registry(state_dir) as registry:
            use(Station(Store.parse(destination, endpoint_url), registry, station or default_station(), ca_bundle))


def run_send(args: dict[str, Any], state_dir: Path | None, triage_done: Callable[[str, float | None, str | None], None] | None = None,
             resolver: Resolver | None = None) -> SendResult:
    """One send from its stored arguments (the same dict `resume` finds in the journal), to the slide version they
    name, or to the one `resolver` gives the file once it has opened (a new send).

    With edge triage, the send waits for the triage before it returns, unless `triage_done` is given: then it
    returns once its objects are verified and the triage finishes in the background, calling `triage_done`.
    """
    from caseformat.documents import CaseRecord
    from slides import open_slide
    from slidestream.edge import EdgeTriage
    from transfer import Journal, default_state_dir, parse_destination
    from transfer.journal import utc_now

    slide_path = Path(args["slide"])
    with open_slide(slide_path, keep_phi=args["keep_phi"]) as slide:
        record = None
        if resolver is not None:
            ref, record, claim = resolver(slide_path)
            args = {**args, "case": ref.case, "slide_id": ref.slide, "version_id": ref.version, "claim": claim.decode()}
        if not args["case"]:
            raise TypeError("run_send needs a case or a resolver")
        dest = parse_destination(args["destination"], args["case"], args["endpoint_url"], args.get("slide_id") or "s1", args.get("version_id") or "v1")
        plan, produced, order = image_pieces(slide, args, dest.ref.label)
        # the first piece starts the shard builders (processes) on the overview: it builds while boto3 is imported,
        # the client is made and the preflight request travels
        pieces = chain([next(produced)], produced)
        from transfer import Sender, SendOptions
        from transfer.errors import SlideTakenError, TransferError

        options = SendOptions(
            concurrency=None if args["concurrency"] == "auto" else int(args["concurrency"]),
            max_rate_mbit=args["max_rate"],
            sse=args["sse"],
            sse_kms_key_id=args["sse_kms_key_id"],
            deadline=args["deadline"],
            ca_bundle=args["ca_bundle"],
            hub_wait=args.get("hub_wait", SEND_DEFAULTS["hub_wait"]),
        )
        with closing(produced), Journal(state_dir or default_state_dir()) as journal, RichListener(dest.ref.label) as listener:
            registration = (record or CaseRecord(dest.case, utc_now())).to_json()
            sender = Sender(dest, journal, options, listener, private=slide_names(slide_path), registration=registration)
            earlier = journal.send(dest)  # this version sent to the end before: a resend, which triages nothing again
            triage = args.get("edge") and not (earlier is not None and earlier.finished_at is not None and not earlier.failed)
            try:
                sender.preflight(args)  # a link that is down: journaled, waits until --deadline
                sender.begin(args)
                if args.get("claim"):
                    sender.claim(args["claim"].encode())
            except TransferError as error:
                if resolver is not None and (isinstance(error, SlideTakenError) or sender.journal.send(dest) is None):
                    resolver.forget()  # refused before it was journaled (credentials, bucket), or its number taken
                raise
            resend = requested_resends(sender) if earlier is not None and not earlier.failed else []  # only what this station sent is asked for
            listener.start(len(plan.shards))
            edge = EdgeTriage(slide_path, dest, order, stderr, triage_done, args.get("model")).start() if triage else None
            listener.on_overview = edge.overview_sent if edge else None
            if edge is not None and "overview" in sender.milestones:
                edge.overview_sent()  # a resend: the overview is on the server already
            try:
                result = sender.send(order, listener.counted(pieces), resend)
            except BaseException:
                if edge is not None and sender.retracted:  # nothing of a failed slide stays on the store
                    edge.cancel()
                    sender.retract_results()
                raise
            listener.finish(len(order.plan.shards))
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

    def milestone(self, name: str, seconds: float) -> None:
        line = f"{MILESTONE_LINES.get(name, name)} after {seconds:.1f} s"
        if stderr.is_terminal:
            self._bar.console.print(line, markup=False, highlight=False)
        else:
            self._held.append(line)
        if name == "overview" and self.on_overview is not None:
            self.on_overview()
