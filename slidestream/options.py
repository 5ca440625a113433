"""Options more than one command takes, each declared once: a send's (`send`, `watch`: a `station.request.SendRequest`)
and the store's. A command's own options stay with it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from station.request import SendRequest, SendRequestError

_DEFAULT = SendRequest("", "")  # the defaults each option shows in --help

EndpointUrl = Annotated[str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint (MinIO, Ceph RGW, ...); default AWS.")]
Station = Annotated[str | None, typer.Option("--station", envvar="SLIDESTREAM_STATION", help=(
    "This station's ID, as the centre enrolled it (`slidestream stations add`): its folder on the store, the first part "
    "of its case IDs, where reports and requests come back (default: the host name)."))]
CentreKeys = Annotated[Path | None, typer.Option("--centre-keys", dir_okay=False, help=(
    "The centre's public keys (PEM, from `slidestream keys export` at the centre): only reports and requests they verify "
    "are read (default STATE_DIR/centre-keys.pem)."))]
Concurrency = Annotated[str, typer.Option("--concurrency", help="Uploads in flight: a number (1-32) or 'auto' (sized from throughput and round trip).")]
MaxRate = Annotated[float | None, typer.Option("--max-rate", min=0.01, help="Cap on upload rate in Mbit/s, to share the uplink.")]
Quality = Annotated[int, typer.Option("--quality", min=1, max=100, help="JPEG quality of re-encoded chunks.")]
Lossless = Annotated[bool, typer.Option("--lossless", help="zstd chunks instead of JPEG.")]
KeepBackground = Annotated[bool, typer.Option("--keep-background", help="Also send glass-only chunks.")]
KeepPhi = Annotated[bool, typer.Option("--keep-phi", help="Keep label/macro images and identifying metadata (off: de-identified).")]
Sse = Annotated[str | None, typer.Option("--sse", help="Server-side encryption: AES256 or aws:kms.")]
SseKmsKeyId = Annotated[str | None, typer.Option("--sse-kms-key-id", help="KMS key for --sse aws:kms.")]
CaBundle = Annotated[Path | None, typer.Option("--ca-bundle", help="PEM bundle of the CA that signed a TLS endpoint's certificate.")]
Deadline = Annotated[float, typer.Option("--deadline", min=0, help=(
    "Seconds the link may stay down before a send gives up (send: exit 3, resume later; watch: the slide is tried again later)."))]
Edge = Annotated[bool, typer.Option("--edge/--no-edge", help=(
    "Triage here first (default: on): where a model is validated for the slide, a heatmap of sampled tiles travels "
    "first and hot regions are sent first."))]
Model = Annotated[str | None, typer.Option("--model", metavar="PACKAGE", help=(
    "The model package edge triage scores with: a folder, or a name in the centre's models folder, as `analyze --model` "
    "(default: the Capricorn colorectal package)."))]
FullPyramid = Annotated[bool, typer.Option("--full-pyramid", help=(
    "Also send the in-between levels (2x, 8x, ...) that a hub would build from what arrived (for a store without `slidestream hub`)."))]
HubWait = Annotated[float, typer.Option("--hub-wait", min=0, help=(
    "Seconds to wait at the end for a hub to claim the slide before building and sending the in-between levels here "
    "(0: always here, as a station without a hub should)."))]


def send_options(concurrency: str = _DEFAULT.concurrency, max_rate: float | None = _DEFAULT.max_rate, quality: int = _DEFAULT.quality,
                 lossless: bool = _DEFAULT.lossless, keep_background: bool = _DEFAULT.keep_background, keep_phi: bool = _DEFAULT.keep_phi,
                 sse: str | None = _DEFAULT.sse, sse_kms_key_id: str | None = _DEFAULT.sse_kms_key_id, ca_bundle: Path | None = None,
                 deadline: float = _DEFAULT.deadline, edge: bool = _DEFAULT.edge, model: str | None = _DEFAULT.model,
                 full_pyramid: bool = _DEFAULT.full_pyramid, hub_wait: float = _DEFAULT.hub_wait) -> dict[str, Any]:
    """The send options as given on the command line, checked once (a bad one is one line naming the option, before
    any slide is opened), for `SendRequest.of`: the model package resolved to its folder, the CA bundle made absolute
    (so `resume` uses the same ones)."""
    options: dict[str, Any] = {"concurrency": concurrency, "max_rate": max_rate, "quality": quality, "lossless": lossless, "keep_background": keep_background,
               "keep_phi": keep_phi, "sse": sse, "sse_kms_key_id": sse_kms_key_id, "ca_bundle": str(ca_bundle.resolve()) if ca_bundle else None,
               "deadline": deadline, "edge": edge, "model": edge_model(model), "full_pyramid": full_pyramid, "hub_wait": hub_wait}  # fmt: skip
    try:
        SendRequest("", "", **options)
    except SendRequestError as error:
        raise typer.BadParameter(str(error), param_hint=error.option) from None
    return options


def edge_model(model: str | None) -> str | None:
    """`--model` as a send keeps it: the package's folder, so `resume` scores with the same package; checked now, so a
    package that cannot be used is one line before anything is sent, not a triage missing from every slide."""
    if model is None:
        return None
    from slidestream.analyze import model_package

    return str(model_package(model).folder.resolve())
