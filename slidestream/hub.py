"""`slidestream hub`: the options of the centre's hub (`hub.hub.Hub`), which torch and Dask load inside."""

from __future__ import annotations

import os
import socket
import uuid
from typing import Annotated

import typer

from slidestream import options as o


def hub(
    store: Annotated[str, typer.Argument(help="s3://BUCKET/PREFIX where the cases arrive.")],
    endpoint_url: o.EndpointUrl = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="A dask.distributed scheduler, e.g. tcp://10.0.0.5:8786 (default: threads on this machine).")] = None,
    device: Annotated[str, typer.Option("--device", help="Where the model runs: cpu, cuda, cuda:1, ...")] = "cpu",
    poll: Annotated[float, typer.Option("--poll", min=0.1, help="Seconds between looks at the prefix when there is nothing to do.")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Stop when every case found is analysed, failed or another hub's.")] = False,
    lease: Annotated[float, typer.Option("--lease", min=1, help="Seconds a claimed case stays this hub's without renewal: how long a dead hub's case waits for another.")] = 60.0,
    models: Annotated[list[str] | None, typer.Option("--model", metavar="PACKAGE", help="Model package: a folder, or a name in the centre's models folder (default: the Capricorn colorectal package). Repeat it for the centre's routing table: the first package validated for a slide's site, stain and resolution scores it; a slide none covers gets QC and no score.")] = None,
    events: Annotated[str | None, typer.Option("--events", metavar="HOST:PORT", help="Listen here for the store's events (Ceph RGW topics): a new arrival is found at once, and every station's arrivals are listed only each minute.")] = None,
    events_url: Annotated[str | None, typer.Option("--events-url", metavar="URL", help="Where the store reaches --events (default http://HOST:PORT).")] = None,
) -> None:
    """Triage every case arriving under the prefix at full magnification, publishing the heatmap as it grows."""
    from objectstore.clients import parse_endpoint
    from transfer.target import parse_store_url

    parse_endpoint(endpoint_url)  # before torch loads and before obstore sees it (a malformed one panics there)
    parse_store_url(store)
    import torch

    from caseformat.layout import HUB
    from hub.hub import Hub
    from inference import AnalyzeOptions, ModelRef, Runner
    from inference.routing import Routes
    from objectstore.location import Location
    from slidestream.analyze import routing_table

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise typer.BadParameter("no CUDA device is available to this torch build", param_hint="--device")
    packages = routing_table(models)
    first = packages[0]
    options = AnalyzeOptions(model=ModelRef.of_package(first, device), scheduler=scheduler, stage=HUB, threshold=first.threshold)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    with Runner(options.scheduler, options.threads, options.torch_threads) as runner:
        centre = Hub(Location.parse(store, endpoint_url), options, runner, owner, lease, Routes(tuple(packages)))
        if events is not None and not once:
            try:
                centre.listen(events, events_url)
            except ValueError as error:
                raise typer.BadParameter(str(error), param_hint="--events") from None
        centre.run(poll, once)


