"""Scoring tiles with Dask: each task reads its own tiles and runs the model on them as one batch.

Tasks carry references (a path or URL, a model file and spec), never pixels or weights, so the same task runs on
a local thread pool or on a `dask.distributed` cluster; each process loads the model once and keeps it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from types import TracebackType
from typing import Protocol

import dask
import numpy as np
import torch
from dask.callbacks import Callback

from inference import packages
from inference.model import CAPRICORN, CAPRICORN_SHA256, ModelSpec, TileModel, capricorn_module, load_model, verify_sha256
from inference.packages import ModelPackage
from inference.sources import SourceRef, open_source, read_tiles
from inference.tiles import focus, pen_ink


class Scorer(Protocol):
    """A loaded model as the pipeline calls it: `inference.model.TileModel` or `inference.packages.PackageModel`."""

    spec: ModelSpec

    def predict(self, batch_uint8_nhwc: np.ndarray) -> np.ndarray: ...

    def score(self, probs: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ModelRef:
    """A model as a worker finds it: a model package's folder, else a file (None = the default Capricorn model),
    its spec and the device."""

    path: str | None = None
    spec: ModelSpec = CAPRICORN
    device: str = "cpu"
    package: str | None = None

    @classmethod
    def of_package(cls, package: ModelPackage, device: str = "cpu") -> ModelRef:
        return cls(spec=package.spec, device=device, package=str(package.folder))


_model_lock = threading.Lock()


@cache
def _load(ref: ModelRef) -> Scorer:
    if ref.package:
        package = packages.read_package(ref.package)
        if package.sha256 != CAPRICORN_SHA256 or package.resize is not None:
            return packages.load(package, ref.device)
        # the default model's weights: its Keras file converted once and cached, not at every load
        verify_sha256(package.weights, package.sha256)
        model = TileModel(capricorn_module(package.weights), package.spec, ref.device)
    else:
        model = load_model(ref.path, ref.device, spec=ref.spec)
    # tiles arrive NHWC, which is channels-last already: weights in the same layout cut the CPU time of the default
    # model by ~10% (215 -> 194 ms a tile on one AVX2 core) with identical outputs
    model.module.to(memory_format=torch.channels_last)
    return model


def get_model(ref: ModelRef) -> Scorer:
    """The model, loaded once per process (the lock keeps concurrent first tasks from loading it twice)."""
    with _model_lock:
        return _load(ref)


@dataclass(frozen=True)
class TileResults:
    """What one task found for its tiles; `tiles` is (n, 2) grid indices (row, col)."""

    tiles: np.ndarray
    score: np.ndarray  # triage score, NaN when run without a model (QC only)
    focus: np.ndarray
    pen: np.ndarray


def score_tiles(source: SourceRef, tile: float, level: int, size: int, tiles: np.ndarray, model: ModelRef | None) -> TileResults:
    """One Dask task: read `tiles` of the grid with side `tile` from `level`, measure focus and ink, run the model."""
    pixels = read_tiles(open_source(source), tile, level, size, tiles)
    score = np.full(len(tiles), np.nan, np.float32)
    if model is not None:
        loaded = get_model(model)
        score = loaded.score(loaded.predict(pixels)).astype(np.float32)
    return TileResults(tiles, score, focus(pixels), pen_ink(pixels))


Task = tuple[SourceRef, float, int, int, np.ndarray, "ModelRef | None"]


class Runner:
    """Runs scoring tasks with Dask and hands each result back as soon as it is done.

    Local (no scheduler): Dask's threaded scheduler with `threads` threads (default: one per core) and
    torch using the cores left per thread, so threads never oversubscribe the CPU. With a scheduler (an address
    such as ``tcp://10.0.0.5:8786`` or a `distributed.Client`): the cluster's workers; they keep their own
    thread settings (distributed starts workers with OMP_NUM_THREADS=1) unless `torch_threads` is given.
    """

    def __init__(self, scheduler: str | object | None = None, threads: int | None = None, torch_threads: int | None = None) -> None:
        self.threads = threads or os.cpu_count() or 1
        self.torch_threads = torch_threads
        self._own_client = isinstance(scheduler, str)
        self.client = None
        if scheduler is not None:
            from distributed import Client

            self.client = Client(scheduler) if isinstance(scheduler, str) else scheduler

    @property
    def slots(self) -> int:
        """How many tasks run at once: the local threads, or the cluster's worker threads."""
        if self.client is None:
            return self.threads
        return max(1, sum(self.client.nthreads().values()))

    def run(self, tasks: Sequence[Task], on_result: Callable[[TileResults], None]) -> None:
        if not tasks:
            return
        delayed = [dask.delayed(score_tiles, pure=False)(*task) for task in tasks]
        if self.client is not None:
            self._run_distributed(delayed, on_result)
            return
        keys = {d.key for d in delayed}

        def collect(key: object, result: object, *_: object) -> None:
            if key in keys:
                on_result(result)  # type: ignore[arg-type]

        previous = torch.get_num_threads()
        torch.set_num_threads(self.torch_threads or max(1, (os.cpu_count() or 1) // self.threads))
        try:
            with Callback(posttask=collect):
                dask.compute(*delayed, scheduler="threads", num_workers=self.threads)
        finally:
            torch.set_num_threads(previous)

    def _run_distributed(self, delayed: list, on_result: Callable[[TileResults], None]) -> None:  # type: ignore[type-arg]
        from distributed import as_completed

        if self.torch_threads:
            self.client.run(torch.set_num_threads, self.torch_threads)
        futures = self.client.compute(delayed)
        try:
            for future in as_completed(futures):
                on_result(future.result())
                future.release()
        except BaseException:
            self.client.cancel(futures)
            raise

    def close(self) -> None:
        if self._own_client and self.client is not None:
            self.client.close()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
