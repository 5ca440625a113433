"""Edge triage: a first heatmap computed on the sending machine while the slide streams.

It is routed first, by the same rule as the hub (`inference.routing`): the case's specimen site (its case.json on the
store), the stain of the slide's overview and its um/px must be inside the model package's intended use. A slide no
model is validated for gets a triage.json that says why ("no validated AI for skin") with QC only: never a score.
Otherwise SAMPLED_TILES tissue tiles (`inference.order.edge_sample`: half spread over the slide, half where it is
densest in hematoxylin) are scored at the model's own resolution and patch size,
each exactly the tile the hub scores (`AnalyzeOptions.sample`), on the hub's tile grid with the others unscored: the
first map means what the model means, and the hub takes it as the order to score in (`inference.edge_priority`).
It is published beside the image as soon as it exists (tiny: the remote side sees where to look before the
full-resolution upload is done), and it re-ranks the shards not sent yet so the hottest regions travel first
(`send_priority`; until then the shards densest in hematoxylin go first, `TissueMask.hematoxylin_priority`).
The model runs in a spawned process: its imports and inference would otherwise hold the sending process's GIL
against the upload threads (on 4g, the first 25 s of a send carried 20 MB instead of 55 MB).
A failure here never stops the send: the slide still arrives, only without the head start.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from caseformat.layout import EDGE, TRIAGE
from tiling import SendOrder, die_with_parent
from tiling.plan import PriorityMap, highest
from transfer import Destination

if TYPE_CHECKING:
    from collections.abc import Callable

    from inference import AnalyzeOptions, Heatmap
    from inference.packages import ModelPackage
    from inference.routing import Route
    from objectstore.location import Location
    from tiling.tissue import TissueMask

# the edge scores this many tissue tiles whatever the slide's size, so it takes seconds on a CPU (DenseNet-121 does
# ~5-9 tiles/s on 2 cores); small batches are faster per tile on a CPU
SAMPLED_TILES = 80
BATCH = 8
# triages at once in this process: `watch` lets a slide's triage finish while the next slide is sent, and two models
# on a 2-core machine would only slow both (and the sends beside them)
TRIAGE_SLOTS = threading.BoundedSemaphore(1)
_started: list[threading.Thread] = []


def join_triages() -> None:
    """Wait for every triage this process started (a `watch --once` ends only after its slides' heatmaps)."""
    for thread in list(_started):
        thread.join()


class EdgeTriage:
    """Runs in a thread beside the send; `join()` returns when the heatmap was readable (seconds), or None (none
    was made: refused, or unavailable); `on_done` (if given) is called with the case ID, the same and the refusal
    (`refused`) from the triage's thread when it ends, for a caller that does not wait (`watch`). `model`: the model package's folder
    (`send --model`), None for the default model."""

    def __init__(self, slide: Path, destination: Destination, order: SendOrder, console: Console,
                 on_done: Callable[[str, float | None, str | None], None] | None = None, model: str | None = None) -> None:
        self._slide = slide
        self._store = f"s3://{destination.bucket}/{destination.prefix}".rstrip("/")
        self._case_id = destination.case
        self._case = f"s3://{destination.bucket}/{destination.root.rstrip('/')}"
        self._model = model
        self._name = destination.ref.label  # what triage.json calls the slide: its case, slide and version, never the file name
        self._endpoint = destination.endpoint
        self._order = order
        self._console = console
        self._started = time.monotonic()
        self.seconds: float | None = None
        self.refused: str | None = None  # why no model may score the slide ("no validated AI for skin"), when so
        self._overview = threading.Event()
        self._cancelled = threading.Event()
        self._process: int | None = None  # the triage process's pid, once it runs
        self._process_lock = threading.Lock()
        self._on_done = on_done
        self._thread = threading.Thread(target=self._run_and_report, name="edge-triage", daemon=True)

    def start(self) -> EdgeTriage:
        _started.append(self._thread)
        self._thread.start()
        return self

    def overview_sent(self) -> None:
        """The overview is on the server: triage may now take the CPU (importing torch alone costs seconds)."""
        self._overview.set()

    def join(self) -> float | None:
        self._thread.join()
        return self.seconds

    def cancel(self) -> None:
        """The send failed for good: stop the triage (its process is killed), so it publishes nothing beside a
        retracted case, and wait until it has stopped."""
        with self._process_lock:
            self._cancelled.set()
            if self._process is not None:
                os.kill(self._process, signal.SIGKILL)
        self._overview.set()
        self._thread.join()

    def _run_and_report(self) -> None:
        try:
            self._run()
        finally:
            if self._on_done is not None:
                self._on_done(self._name, self.seconds, self.refused)

    def _run(self) -> None:
        self._overview.wait(timeout=30)
        from slides import SlidestreamError
        from slides.errors import printable

        plan = None
        for _ in range(300):  # the tissue is found right after the overview is built: 60 s at the most
            if self._cancelled.is_set():
                return
            if (plan := self._order.wait_settled(timeout=0.2)) is not None:
                break
        if plan is None or plan.tissue is None:
            self._console.print("edge triage unavailable: no tissue mask", markup=False, highlight=False)
            return
        try:
            spawn = multiprocessing.get_context("spawn")
            with TRIAGE_SLOTS, ProcessPoolExecutor(max_workers=1, mp_context=spawn, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
                with self._process_lock:
                    if self._cancelled.is_set():
                        return
                    self._process = pool.submit(os.getpid).result()
                result = pool.submit(triage, str(self._slide), self._case, self._store, self._case_id, self._endpoint,
                                     self._name, self._model).result()
        except (SlidestreamError, BrokenProcessPool) as error:
            if self._cancelled.is_set():
                return
            self._console.print(f"edge triage unavailable: {error or 'its process died'}", markup=False, highlight=False)
            return
        if result.heatmap is None:
            self.refused = result.refused
            self._console.print(printable(f"edge triage: {result.refused}"), markup=False, highlight=False)
            return
        self.seconds = round(time.monotonic() - self._started, 3)
        self._order.reprioritize(send_priority(result.heatmap, plan.tissue, result.threshold))
        score = result.heatmap.triage_score() or 0.0
        self._console.print(f"triage heatmap available after {self.seconds:.1f} s (score {score:.2f})", markup=False, highlight=False)


def send_priority(heatmap: Heatmap, tissue: TissueMask, threshold: float) -> PriorityMap:
    """The send order once the edge map is there, as the hub orders its work (`inference.order`): a shard holding a
    sampled tile scored at or above `threshold` first, the rest by their densest hematoxylin (below the threshold,
    `TissueMask.hematoxylin_priority`). Each tissue tile took its nearest sample's score before: the hub's order
    built that way reached the 50 MB bench slide's hottest region later than grid order (its 80 samples do not
    foretell a mosaic of 38 pieces)."""
    from inference import priority_from_heatmap

    return highest(priority_from_heatmap(heatmap), tissue.hematoxylin_priority(threshold))


@dataclass(frozen=True)
class EdgeResult:
    """What the triage process gives back: the sampled map and the package's threshold, or why no model may score
    the slide (`refused`)."""

    heatmap: Heatmap | None
    refused: str | None = None
    threshold: float = 0.5


def triage(slide: str, case: str, store: str, case_id: str, endpoint: str | None, name: str, model: str | None) -> EdgeResult:
    """Route `slide` and publish its edge triage beside the slide version `case` on S3 under `name` (runs in the
    spawned process): the sampled map of the package at folder `model` (None: the default model), or the refusal
    with QC only. A result of another stage there already (the hub's) is never replaced."""
    from inference import AnalyzeOptions, ModelRef, analyze_slide
    from inference.model import default_package
    from inference.packages import read_package
    from objectstore.location import Location

    package = default_package() if model is None else read_package(model)
    options = AnalyzeOptions(model=ModelRef.of_package(package), batch=BATCH, sample=SAMPLED_TILES, stage=EDGE, threshold=package.threshold)
    location = Location.parse(case, endpoint)
    route = route_slide(slide, Location.parse(store, endpoint), case_id, package)
    if route.refused is not None:
        publish_refusal(slide, location, name, package, route, options)
        return EdgeResult(None, route.refused)
    return EdgeResult(analyze_slide(slide, location, options, name=name, routed=route.routed, about=route.about()), None, package.threshold)


def route_slide(slide: str, store: Location, case_id: str, package: ModelPackage) -> Route:
    """The hub's routing, at the station: the specimen site from the case's registration (case.json, as the store
    has it: a resend or `resume` knows no other), the stain of the overview the send finds the tissue on, the
    slide's um/px."""
    from caseformat.documents import CaseRecord
    from caseformat.errors import DocumentError
    from caseformat.layout import CASE_RECORD, case_key
    from inference.routing import Routes, detect_stain
    from inference.sources import SlideFileRef, SlideSource, open_source
    from tiling.tissue import overview

    data = store.read_bytes(case_key(case_id, CASE_RECORD))
    try:
        site = None if data is None else dict(CaseRecord.read(data, CASE_RECORD).context).get("specimen_site")
    except DocumentError:  # as the hub reads it: the site is then not known
        site = None
    source = open_source(SlideFileRef.of(slide))
    assert isinstance(source, SlideSource)
    return Routes((package,)).choose(site, detect_stain(overview(source.slide)[0]), source.mpp)


def publish_refusal(slide: str, location: Location, name: str, package: ModelPackage, route: Route,
                    options: AnalyzeOptions) -> None:
    """triage.json in place of a score: why, and QC (focus, pen) of SAMPLED_TILES tissue tiles drawn at random."""
    from caseformat.results import Triage
    from inference import InferenceError, qc_slide
    from inference.heatmap import read_triage

    summary: dict[str, object] = {"mpp": route.mpp, "mpp_assumed": route.mpp is None, "tiles_scored": 0}
    try:
        qc = qc_slide(slide, options, sample=SAMPLED_TILES)
    except InferenceError:  # too coarse for the model's tiles: QC is the resolution alone
        qc = None
    if qc is not None:
        summary |= {"tissue_tiles": qc.pop("tissue_tiles"), "tiles_measured": qc.pop("tiles_sampled"),
                    "qc": {key: value for key, value in qc.items() if key not in ("mpp", "mpp_assumed")}}
    if (published := read_triage(location)) is not None and published.stage != EDGE:
        return
    location.write_bytes(TRIAGE, Triage(name, None, package.name, EDGE, True, summary, "", route.refused).to_json())
