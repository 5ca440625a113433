"""`slidestream send` and `slidestream resume`: a send's options (`station.request.SendRequest`) to the station's
send pipeline (`station.pipeline`), with live progress on stderr.

Heavy imports (boto3, zarr, the pyramid writer) happen inside the commands so `slidestream info` stays quick.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from slidestream import options as o

stderr = Console(stderr=True)
stdout = Console()

CASE_HELP = ("Add the slide to this case of the store (a case ID as `status` and the viewer show it; one the store does "
             "not have yet is registered under it). Default: the registry's (a resend, a rescan) or a new specimen's random ID.")
INTERRUPTED = "interrupted: `slidestream resume` (or the same send command) continues where this stopped"
StateDir = Annotated[Path | None, typer.Option("--state-dir", help="Where the journal lives (default $XDG_STATE_HOME/slidestream).")]
_DEFAULT = o.SendRequest("", "")


def send(
    slide: Annotated[Path, typer.Argument(help="The slide to send (a file, or a DICOM series folder).")],
    destination: Annotated[str, typer.Argument(help="s3://BUCKET/PREFIX; the slide goes to PREFIX/stations/STATION/CASE/slides/SLIDE/VERSION/.")],
    endpoint_url: o.EndpointUrl = None,
    case: Annotated[str | None, typer.Option("--case", help=CASE_HELP)] = None,
    context_file: Annotated[
        Path | None, typer.Option("--context-file", help="The specimen's specimen.json (identity kept here, clinical context sent), as in a hot folder.", dir_okay=False)
    ] = None,
    station: o.Station = None,
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
    state_dir: StateDir = None,
    edge: o.Edge = _DEFAULT.edge,
    model: o.Model = _DEFAULT.model,
    full_pyramid: o.FullPyramid = _DEFAULT.full_pyramid,
    hub_wait: o.HubWait = _DEFAULT.hub_wait,
    as_json: Annotated[bool, typer.Option("--json", help="Print a machine-readable summary on stdout.")] = False,
) -> None:
    """Convert a slide and stream it to S3 at the same time; a rerun (or `resume`) skips what already arrived."""
    from slides.slide import slide_path_kind

    slide_path_kind(slide)  # a link loop or a FIFO is one line here, before the path is resolved for the journal
    options = o.send_options(concurrency, max_rate, quality, lossless, keep_background, keep_phi, sse, sse_kms_key_id, ca_bundle, deadline,
                             edge, model, full_pyramid, hub_wait)  # fmt: skip
    from caseformat.layout import validate_name, validate_station
    from objectstore.clients import parse_endpoint
    from station.pipeline import Resolver, run_send
    from station.request import SendRequest
    from transfer import default_state_dir
    from transfer.target import parse_store_url

    parse_store_url(destination)  # a bad URL, endpoint, case or station is one line before the slide is opened
    parse_endpoint(endpoint_url)
    if case is not None:
        validate_name(case)  # the station's ID goes before it (`caseformat.layout.qualified_case`)
    if station is not None:
        validate_station(station)
    request = SendRequest.of(slide, destination, endpoint_url=endpoint_url, **options)
    state = state_dir or default_state_dir()
    try:
        result = run_send(request, state, resolver=Resolver(destination, endpoint_url, state, station, case, context_file, request.ca_bundle))
    except KeyboardInterrupt:
        interrupted()
    if as_json:
        stdout.print_json(json.dumps(result.summary()))


def resume(
    state_dir: StateDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of summaries on stdout.")] = False,
) -> None:
    """Finish every send the journal lists as unfinished, with the arguments it was started with."""
    from objectstore.clients import parse_endpoint
    from slides import SlidestreamError
    from station.pipeline import asked_again, give_up, run_send, warn
    from station.request import SendRequest
    from transfer import Journal, default_state_dir

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
            summaries.append(run_send(SendRequest.from_json(record.args), state_dir).summary())
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
            summaries.append(run_send(SendRequest.from_json(record.args), state_dir).summary())
        except KeyboardInterrupt:
            interrupted()
        except SlidestreamError as error:
            stderr.print(f"slidestream: error: {error}", markup=False, highlight=False, soft_wrap=True)
            failure = failure or error
    if as_json:
        stdout.print_json(json.dumps(summaries))
    if failure is not None:
        raise typer.Exit(getattr(failure, "exit_code", 2))


def interrupted() -> None:
    """Ctrl-C: the send stays in the journal (a stop is resumable), so say how to go on, as a shell would exit."""
    stderr.print(INTERRUPTED, markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(130)
