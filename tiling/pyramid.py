"""The pyramid writer: a slide in, a stream of finished OME-Zarr objects (`Piece`s) out, in send order.

Every output level is computed straight from the nearest finer *source* level, never from another output level (an
in-between level reads that source level's JPEG tiles exactly as its pass-through copy stores them, so the hub can
build it from the store instead: `LevelPlan.downsampled_from`), so pieces can be produced in any order, and we
produce them in the order they should travel: metadata, the overview levels, then tissue shards from low to full
resolution (hottest first when a priority map is given). A streaming send plans the overview first and finds the
tissue while the overview travels (`plan_pyramid(..., defer_tissue=True)`), so the first view never waits for
tissue detection. A level whose size and JPEG tiles match the source is copied tile for tile without decoding
(pass-through). Memory stays bounded: a few shards are in flight at a time and each is built in bands.

On a dark-field slide the tissue mask cannot see faint signal, so it cannot decide what is background: every shard
is planned (those without mask tissue last), and a chunk the mask calls background is read at full resolution when
its shard is built and written where its own pixels hold signal (`ShardJob.checked`, `tissue.holds_signal`). A shard
left with no chunk is never produced, which the sender's manifest counts as empty, as for any planned shard.

Here: the stream and the worker processes that build it. The parts, one job each: the plan (`tiling.plan`), the
send order (`tiling.send_order`), the NGFF metadata (`tiling.ngff`), the tissue label (`tiling.label`), a shard's
chunks (`tiling.shard_jobs`), their pixels (`tiling.rendering`) and the shard's bytes (`tiling.shard_format`).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from slides import CorruptSlideError, Slide, open_slide
from tiling.label import label_cost, label_groups, label_level
from tiling.ngff import metadata_pieces
from tiling.pieces import Piece, PieceKind
from tiling.plan import PyramidPlan, ShardTask
from tiling.send_order import SendOrder
from tiling.shard_jobs import ShardJob, shard_job
from tiling.tissue import TissueMask, detect_tissue

LABEL_AT_ONCE = 16_000_000  # label levels up to this many pixels are built with the groups; larger ones beside the shards
T = TypeVar("T")
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def produce(slide: Slide, plan: PyramidPlan, name: str, source_summary: dict, order: SendOrder | None = None) -> Iterator[Piece]:  # type: ignore[type-arg]
    """Yield every object of the image in send order: metadata first, then shards as they are built.

    Shards are built by `workers` processes (plus a small lookahead) and yielded strictly in the order they are
    taken from `order` (default: the plan's order), so memory stays bounded and the send order holds. Processes,
    not threads: a shard is hundreds of short decode and encode calls, each of which waits for the GIL whenever
    another thread runs Python (uploads, start-up imports), which made building 2-5x slower in a send.
    The first shards are submitted before the first piece is yielded, so they build while the caller gets ready.
    For a deferred plan the tissue is detected once the overview shards are queued; the tissue label and the
    tissue shards follow the overview, the label's large levels among the shards (`label_level`).
    """
    order = order or SendOrder(plan)
    lookahead = max(1, plan.options.workers) * 2
    with _shard_pool(slide, plan.options.workers) as pool:
        pending: deque[tuple[ShardTask, Future[bytes | None]]] = deque()
        tissue: Future[TissueMask] | None = None
        labels: deque[Future[list[Piece]]] = deque()  # the tissue label's large levels, built beside the shards

        def label(settled: PyramidPlan) -> list[Piece]:
            """The label's groups and small levels now (readers use only those); its large levels go to the pool and
            follow as they are done, coarsest first: level 0 of a 1.6 GB slide is 5 Gpx, seconds of a core that
            would otherwise hold every shard back."""
            small = [level.index for level in reversed(settled.levels) if label_cost(settled, level.index) <= LABEL_AT_ONCE]
            large = [level.index for level in reversed(settled.levels) if level.index not in small]
            labels.extend(pool.submit(label_level, settled, index) for index in large)
            return label_groups(settled) + [piece for index in small for piece in label_level(settled, index)]

        def fill() -> None:
            nonlocal tissue
            while len(pending) < lookahead and (task := order.next()) is not None:
                job = shard_job(order.plan, task)
                pending.append((task, pool.submit(_build_in_worker, job) if job else _done(None)))
            if tissue is None and not order.plan.settled and len(pending) < lookahead:
                tissue = pool.submit(_tissue_in_worker, plan.darkfield)  # every overview shard is queued: it goes behind them

        fill()
        yield from metadata_pieces(plan, name, source_summary)
        if plan.settled:
            yield from label(plan)
        while True:
            fill()
            while labels and (labels[0].done() or not pending):
                yield from _result(labels.popleft(), slide)
            if not pending:
                if order.plan.settled:
                    if order.take_hub_levels():
                        continue  # no hub came for the in-between levels: built here after all
                    return
                assert tissue is not None
                yield from label(order.settle(_result(tissue, slide)))
                continue
            task, future = pending.popleft()
            data = _result(future, slide)
            if data is not None:
                yield Piece(task.key, data, PieceKind.SHARD, level=task.level, tissue=task.tissue, priority=int(task.priority * 1e6))


# -- shard building in worker processes --------------------------------------------------------------------------
_worker_slide: Slide | None = None  # the slide as a worker process opened it


def _shard_pool(slide: Slide, workers: int) -> Executor:
    """Forked processes that open the slide themselves (a file handle is not shared); threads off Linux."""
    workers = max(1, workers)
    if not sys.platform.startswith("linux"):
        return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="shard", initializer=_set_worker_slide, initargs=(slide,))
    context = multiprocessing.get_context("fork")
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_open_in_worker, initargs=(slide, os.getpid()))


def die_with_parent(parent: int) -> None:
    """Make this worker process (a shard builder, the edge triage) end with the send that started it (Linux).

    Ctrl-C is the parent's to handle: it shuts its pools down. A parent killed with -9 or SIGTERM cannot, so the
    kernel ends the workers with it; they would otherwise keep the CPU, and the parent's output pipes, for minutes.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def _open_in_worker(slide: Slide, parent: int) -> None:
    global _worker_slide
    die_with_parent(parent)
    _worker_slide = open_slide(slide.path, keep_phi=slide.keep_phi)  # the same view: its raw tiles are what leaves


def _build_in_worker(job: ShardJob) -> bytes | None:
    assert _worker_slide is not None
    return job.build(_worker_slide)


def _tissue_in_worker(darkfield: bool) -> TissueMask:
    assert _worker_slide is not None
    return detect_tissue(_worker_slide, darkfield)


def _set_worker_slide(slide: Slide) -> None:
    """Threads share the caller's slide."""
    global _worker_slide
    _worker_slide = slide


def _done(value: bytes | None) -> Future[bytes | None]:
    future: Future[bytes | None] = Future()
    future.set_result(value)
    return future


def _result(future: Future[T], slide: Slide) -> T:
    """A worker's result; a worker that died (a decoder crash on a broken file) is a one-line error too."""
    try:
        return future.result()
    except BrokenProcessPool:
        raise CorruptSlideError(f"{slide.path}: a process reading the slide died (the file may be corrupt)") from None
