"""`slidestream watch`: the options of the technician's hot folder (`station.hotfolder`), and the wiring of a send per slide."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from slidestream import options as o
from slidestream.config import FHIR_TABLE, HL7_TABLE
from station.hotfolder import OUTBOX, RESEND_EVERY, HotFolder, SlideUnit

stderr = Console(stderr=True)
_DEFAULT = o.SendRequest("", "")

LIS_HELP = "The LIS's MLLP endpoint: each signed report and amendment goes to it as HL7 v2.5.1 ORU^R01, queued while it is down."
FHIR_HELP = ("The hospital's FHIR server (base URL): each report goes to it as a DiagnosticReport with its PDF (bearer token from "
             "SLIDESTREAM_FHIR_TOKEN).")
PACS_HELP = ("The hospital's PACS (DICOMweb root): once a case's report is final, the slides it read go there as DICOM WSI, "
             "filed under the patient (credentials as pacs-send's).")
ORDERS_HELP = "Listen here for the LIS's orders (HL7 v2 OML^O21, ORM^O01 over MLLP): each registers its specimen and starts its clock."


def watch(
    ctx: typer.Context,
    folder: Annotated[Path, typer.Argument(help="The hot folder the scanner writes into.", file_okay=False, exists=True)],
    destination: Annotated[str, typer.Argument(help="s3://BUCKET/PREFIX; each slide goes to PREFIX/stations/STATION/CASE/slides/SLIDE/VERSION/.")],
    endpoint_url: o.EndpointUrl = None,
    settle: Annotated[
        float, typer.Option("--settle", min=0, help="Seconds a slide must stay unchanged before it is sent, unless its structure proves it whole (TIFF family).")
    ] = 10,
    once: Annotated[bool, typer.Option("--once", help="Send what is in the folder now, then exit (for cron and tests).")] = False,
    concurrency: o.Concurrency = _DEFAULT.concurrency,
    max_rate: o.MaxRate = _DEFAULT.max_rate,
    quality: o.Quality = _DEFAULT.quality,
    lossless: o.Lossless = _DEFAULT.lossless,
    keep_background: o.KeepBackground = _DEFAULT.keep_background,
    keep_phi: o.KeepPhi = _DEFAULT.keep_phi,
    sse: o.Sse = _DEFAULT.sse,
    sse_kms_key_id: o.SseKmsKeyId = _DEFAULT.sse_kms_key_id,
    ca_bundle: o.CaBundle = None,
    deadline: o.Deadline = _DEFAULT.deadline,
    edge: o.Edge = _DEFAULT.edge,
    model: o.Model = _DEFAULT.model,
    full_pyramid: o.FullPyramid = _DEFAULT.full_pyramid,
    hub_wait: o.HubWait = _DEFAULT.hub_wait,
    state_dir: Annotated[Path | None, typer.Option("--state-dir", help="Journal, registry and watch log (default $XDG_STATE_HOME/slidestream).")] = None,
    station: o.Station = None,
    outbox: Annotated[
        Path | None, typer.Option("--outbox", help="Where reports and requests for this station are written as text (default FOLDER/outbox).", file_okay=False)
    ] = None,
    centre_keys: o.CentreKeys = None,
    resend_every: Annotated[
        float, typer.Option("--resend-every", min=1, help="Seconds between looks for pieces of this folder's sends that the centre found corrupt.")
    ] = RESEND_EVERY,
    lis: Annotated[str | None, typer.Option("--lis", envvar="SLIDESTREAM_LIS", metavar="mllp://HOST:PORT", help=LIS_HELP)] = None,
    fhir_url: Annotated[str | None, typer.Option("--fhir", envvar="SLIDESTREAM_FHIR", metavar="URL", help=FHIR_HELP)] = None,
    orders: Annotated[str | None, typer.Option("--orders", envvar="SLIDESTREAM_ORDERS", metavar="HOST:PORT", help=ORDERS_HELP)] = None,
    pacs: Annotated[str | None, typer.Option("--pacs", envvar="SLIDESTREAM_PACS", metavar="URL", help=PACS_HELP)] = None,
) -> None:
    """Send every slide a scanner writes into FOLDER, once it is complete; unreadable ones go to FOLDER/failed/.

    A subfolder is a specimen (its slides one case; specimen.json its identity and clinical context). A slide's
    edge triage finishes in the background while the next slide is sent. Reports and requests for this station
    are printed and written to the outbox."""
    from caseformat.layout import validate_station
    from caseformat.signing import PUBLIC_KEYS_FILE
    from objectstore.clients import parse_endpoint
    from slides.errors import printable
    from station.hotfolder import Hospital, specimen_info, unexpected, watch_folder
    from station.pipeline import Resolver, run_send
    from station.request import SendRequest
    from station.station import default_station, load_trusted
    from transfer.target import parse_store_url

    parse_store_url(destination)  # configuration errors stop it here, in one line, before it watches anything
    parse_endpoint(endpoint_url)
    station = validate_station(station) if station is not None else default_station()
    options = o.send_options(concurrency, max_rate, quality, lossless, keep_background, keep_phi, sse, sse_kms_key_id, ca_bundle, deadline,
                             edge, model, full_pyramid, hub_wait)  # fmt: skip
    import transfer.sender  # noqa: F401 - boto3 loads now (a third of a second), not while a frozen section waits
    from transfer import default_state_dir

    state = state_dir or default_state_dir()
    outbox = (outbox or folder / OUTBOX).resolve()

    def send_one(unit: SlideUnit, hot: HotFolder) -> str:
        from slides.slide import slide_path_kind

        slide_path_kind(unit.path)  # a link loop or a FIFO is its one line, before the path is resolved
        request = SendRequest.of(unit.path, destination, endpoint_url=endpoint_url, **options)

        def triage_done(label: str, seconds: float | None, refused: str | None) -> None:
            if refused is not None:
                said = f"{refused} (QC only)"
            else:
                said = f"heatmap readable after {seconds:.1f} s" if seconds is not None else "no heatmap (edge triage unavailable)"
            hot.log(f"TRIAGED {unit.name}: {label}: {said}")

        resolver = Resolver(destination, endpoint_url, state, station, specimen=specimen_info(unit), duplicates=False)
        result = run_send(request, state, triage_done, resolver, advice=lambda line: hot.log(f"SCAN {unit.name}: {line}"))
        return (
            f"case {result.case} slide {result.ref.slide} {result.ref.version} ({resolver.resolution.kind}): {result.objects} objects "
            f"({result.bytes_sent / 1e6:.1f} MB) sent, {result.objects_skipped} already there, in {result.seconds:.1f} s -> {result.url}"
        )

    def resend_asked(hot: HotFolder) -> None:
        """Pieces of this folder's complete sends that the centre found corrupt: sent again, one line per slide; the
        store failing is said once (`HotFolder.note`) and looked at again in `resend_every` seconds."""
        from slides import SlidestreamError
        from station.pipeline import asked_again, resent_line
        from transfer import Journal, TransferError

        home = folder.resolve()

        def mine(record: Any) -> bool:
            sent = SendRequest.from_json(record.args)
            return sent.destination == destination and sent.endpoint_url == endpoint_url and Path(sent.slide).is_relative_to(home)

        try:
            with Journal(state) as journal:
                asked = asked_again(journal, hot.note, mine)
        except TransferError as error:  # the journal
            hot.note(f"cannot look for pieces the centre found corrupt: {error}")
            return
        for record, keys in asked:
            label = record.destination.ref.label
            try:
                result = run_send(SendRequest.from_json(record.args), state)
            except TransferError as error:  # the network or the store: the next look asks again
                hot.log(f"RETRY resending {len(keys)} pieces of {label}: {error} (looked at again in {resend_every:g} s)")
                return
            except Exception as error:  # noqa: BLE001 - the slide, or a bug: that slide only; the next look asks again
                hot.log(f"FAILED resending {len(keys)} pieces of {label}: {error if isinstance(error, SlidestreamError) else unexpected(error)}")
            else:
                hot.log(resent_line(result))

    trusted, no_key = load_trusted(centre_keys or state / PUBLIC_KEYS_FILE)
    interfaces = ctx.default_map or {}  # the config file's [watch.hl7] and [watch.fhir]
    systems = hospital_systems(state, lis, fhir_url, pacs and (pacs, destination, endpoint_url), interfaces.get(HL7_TABLE), interfaces.get(FHIR_TABLE))
    hospital = Hospital(destination, endpoint_url, state, station, outbox, trusted, systems, ca_bundle and str(ca_bundle))
    stderr.print(printable(f"watching {folder} -> {destination} as station {station} (outbox: {outbox}; log: {HotFolder(folder, state, settle).log_file})"),
                 markup=False, highlight=False)  # fmt: skip
    if trusted is None:
        stderr.print(f"{no_key}; reports and requests cannot be verified and are not read", markup=False, highlight=False, soft_wrap=True)
    poller = None if once or trusted is None else hospital.start_polling()
    listener = listen_for_orders(hospital, orders) if orders else None
    try:
        failures = watch_folder(folder, send_one, state, settle, once, register=hospital.register_specimens, outbox=outbox,
                                resend=resend_asked, resend_every=resend_every, unsent=hospital.report_unsent)
    finally:
        if poller is not None:
            hospital.stop.set()
        if listener is not None:
            listener.close()
    from station.edge import join_triages

    join_triages()  # --once: the last slides' triages finish (and are published) before watch exits
    if once:
        hospital.poll_once()  # what came back meanwhile
        hospital.deliver_images()
    if failures:
        raise typer.Exit(1)


def hospital_systems(state: Path, lis: str | None, fhir_url: str | None, pacs: tuple[str, str, str | None] | None = None,
                     hl7: dict[str, str] | None = None, fhir_profile: dict[str, str] | None = None) -> Any:
    """The hospital's systems the reports go to (`hospital.systems`), `pacs` as (its URL, the store, the store's
    endpoint), `hl7` and `fhir_profile` as the config file's [watch.hl7] and [watch.fhir] name them; a malformed
    endpoint or profile is one line at start."""
    from hospital import fhir, mllp
    from hospital.hl7 import Routing
    from hospital.systems import HospitalSystems
    from slidestream.pacs import station_images

    try:
        if fhir_profile and fhir_profile.get("patient", "contained") not in ("contained", "conditional"):
            raise fhir.FhirError("[watch.fhir] patient must be 'contained' or 'conditional'")
        return HospitalSystems(state, mllp.Endpoint.parse(lis) if lis else None,
                               fhir.Server.parse(fhir_url, os.environ.get("SLIDESTREAM_FHIR_TOKEN")) if fhir_url else None,
                               Routing(**(hl7 or {})), fhir.Profile(**(fhir_profile or {})),  # type: ignore[arg-type]
                               images=station_images(pacs[0], pacs[1], pacs[2], state) if pacs else None)  # fmt: skip
    except (mllp.MLLPError, fhir.FhirError, ValueError) as error:
        raise typer.BadParameter(str(error)) from None




def listen_for_orders(hospital: Any, address: str) -> Any:
    """--orders HOST:PORT: the LIS's orders registering specimens (`station.hotfolder.Hospital.listen_for_orders`)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise typer.BadParameter(f"{address!r} is not HOST:PORT", param_hint="--orders")
    return hospital.listen_for_orders(host or "0.0.0.0", int(port))
