"""Edge triage: a coarse heatmap computed on the sending machine while the slide streams.

It is published beside the image as soon as it exists (tiny: the remote side sees where to look before the
full-resolution upload is done), and it re-ranks the shards not sent yet so the hottest regions travel first.
The model runs in a spawned process: its imports and inference would otherwise hold the sending process's GIL
against the upload threads (on 4g, the first 25 s of a send carried 20 MB instead of 55 MB).
A failure here never stops the send: the slide still arrives, only without the head start.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from caseformat.layout import EDGE
from tiling import SendOrder, die_with_parent
from transfer import Destination

if TYPE_CHECKING:
    from collections.abc import Callable

    from inference import AnalyzeOptions, Heatmap

# the coarse pass scores about this many tiles whatever the slide's size, so it takes seconds on a CPU
# (DenseNet-121 does ~5-9 tiles/s on 2 cores); small batches are faster per tile on a CPU
COARSE_TILES = 80
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
    """Runs in a thread beside the send; `join()` returns when the heatmap was readable (seconds), or None;
    `on_done` (if given) is called with the case ID and the same from the triage's thread when it ends, for a caller
    that does not wait (`watch`)."""

    def __init__(self, slide: Path, destination: Destination, order: SendOrder, console: Console,
                 on_done: Callable[[str, float | None], None] | None = None) -> None:
        self._slide = slide
        self._case = f"s3://{destination.bucket}/{destination.root.rstrip('/')}"
        self._name = destination.ref.label  # what triage.json calls the slide: its case, slide and version, never the file name
        self._endpoint = destination.endpoint
        self._order = order
        self._console = console
        self._started = time.monotonic()
        self.seconds: float | None = None
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
                self._on_done(self._name, self.seconds)

    def _run(self) -> None:
        self._overview.wait(timeout=30)
        from inference import CAPRICORN, AnalyzeOptions, priority_from_heatmap
        from slides import SlidestreamError

        plan = None
        for _ in range(300):  # the tissue is found right after the overview is built: 60 s at the most
            if self._cancelled.is_set():
                return
            if (plan := self._order.wait_settled(timeout=0.2)) is not None:
                break
        if plan is None or plan.tissue is None:
            self._console.print("edge triage unavailable: no tissue mask", markup=False, highlight=False)
            return
        mpp = plan.mpp[0] if plan.mpp else CAPRICORN.mpp
        tile = CAPRICORN.input_size * CAPRICORN.mpp / mpp  # level-0 pixels per model tile
        width, height = plan.levels[0].width, plan.levels[0].height
        tissue_tiles = plan.tissue.fraction * width * height / tile**2
        factor = 2 ** max(1, math.ceil(math.log2(math.sqrt(max(tissue_tiles, 1) / COARSE_TILES))))
        options = AnalyzeOptions(coarse=True, coarse_factor=factor, refine=False, batch=BATCH, stage=EDGE)
        try:
            spawn = multiprocessing.get_context("spawn")
            with TRIAGE_SLOTS, ProcessPoolExecutor(max_workers=1, mp_context=spawn, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
                with self._process_lock:
                    if self._cancelled.is_set():
                        return
                    self._process = pool.submit(os.getpid).result()
                heatmap = pool.submit(triage, str(self._slide), self._case, self._endpoint, options, self._name).result()
        except (SlidestreamError, BrokenProcessPool) as error:
            if self._cancelled.is_set():
                return
            self._console.print(f"edge triage unavailable: {error or 'its process died'}", markup=False, highlight=False)
            return
        self.seconds = round(time.monotonic() - self._started, 3)
        self._order.reprioritize(priority_from_heatmap(heatmap))
        score = heatmap.triage_score()
        self._console.print(f"triage heatmap available after {self.seconds:.1f} s (score {score:.2f})", markup=False, highlight=False)


def triage(slide: str, case: str, endpoint: str | None, options: AnalyzeOptions, name: str) -> Heatmap:
    """The coarse heatmap of `slide`, written beside the case on S3 under `name` (runs in the spawned process),
    unless a full-magnification result (the hub's) is there already: that one is never replaced."""
    from inference import Location, analyze_slide

    return analyze_slide(slide, Location.parse(case, endpoint), options, name=name)
