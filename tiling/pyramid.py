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
"""

from __future__ import annotations

import ctypes
import io
import json
import math
import multiprocessing
import os
import signal
import struct
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import google_crc32c
import imagecodecs
import numpy as np
from PIL import Image

from caseformat.image import CHUNK_CHECKSUMS, CODEC_NAME
from slides import CorruptSlideError, RawTile, Slide, open_slide
from slides import Level as SlideLevel
from tiling.jpeg import DEFAULT_QUALITY, encode_jpeg, self_contained_jpeg
from tiling.pieces import Piece, PieceKind
from tiling.tissue import SIGNAL_ABOVE_DARK, TissueMask, background_value, detect_tissue, holds_signal, slide_is_darkfield

FORMAT_VERSION = 1
OVERVIEW_SIDE = 1024  # the smallest level fits in this many pixels
COMPLETE_SIDE = 4096  # levels up to this size are written whole (background included): the overview never has holes
# the multiscales `type` and `metadata` NGFF 0.5 asks for: how the levels were made
IMAGE_DOWNSCALING = {
    "type": "box",
    "metadata": {
        "description": "each level from the nearest finer level of the source slide by box averaging "
        "(PIL.Image.resize BOX); levels the scanner stored at this size are its own JPEG tiles (passthrough_levels)",
        "method": "PIL.Image.resize",
        "kwargs": {"resample": "BOX"},
    },
}
LABEL_DOWNSCALING = {
    "type": "any",
    "metadata": {
        "description": "a pixel is tissue where any part of it is tissue in the detected mask (where a pixel is smaller than "
        "a mask pixel: where the mask pixel it starts in is)",
        "method": "numpy.maximum.reduceat, numpy.repeat",
    },
}
TISSUE_LABEL = "labels/tissue"  # inside the image: the NGFF label image of the tissue mask (1 = tissue)
LABEL_SHARD, LABEL_CHUNK = 8192, 1024  # label objects of at most 64 MB in memory; all-background chunks are not written
LABEL_AT_ONCE = 16_000_000  # label levels up to this many pixels are built with the groups; larger ones beside the shards
EMPTY = 2**64 - 1  # shard-index marker of an absent chunk (Zarr v3 sharding spec)
MAX_CANVAS = 16_000_000  # pixels decoded at once while building a shard band
T = TypeVar("T")
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class ConvertOptions:
    """How to build the pyramid.

    quality: JPEG quality of re-encoded chunks (pass-through chunks keep the scanner's own encoding).
    lossless: zstd chunks instead of JPEG (bigger; for quantitative work).
    passthrough: copy matching source JPEG tiles without re-encoding (off: re-encode everything at `quality`).
    keep_background: also write chunks without tissue at full-resolution levels.
    chunk: chunk side in pixels; None picks the source tile size (for pass-through) or 256.
    shard_chunks: chunks per shard side; 8 x 240-256 px chunks make ~1-2 MB objects (see README).
    workers: shards built in parallel.
    hub_levels: leave the levels downsampled from a stored level (`LevelPlan.downsampled_from`) to the receiving
        hub: the writer does not produce their shards (`PyramidPlan.hub_shards` lists them), so they never use the
        uplink. A send sets it, and builds them at its end after all where no hub came for them
        (`SendOrder.decide_hub_levels`); `convert` builds them itself. Same code, same bytes, whoever builds them.
    """

    quality: int = DEFAULT_QUALITY
    lossless: bool = False
    passthrough: bool = True
    keep_background: bool = False
    chunk: int | None = None
    shard_chunks: int = 8
    workers: int = field(default_factory=lambda: os.cpu_count() or 2)
    hub_levels: bool = False


@dataclass(frozen=True)
class LevelPlan:
    """One output level and where its pixels come from."""

    index: int
    width: int
    height: int
    downsample: float  # level-0 pixels per pixel of this level
    source_level: int
    scale: float  # source-level pixels per pixel of this level
    passthrough: bool  # copy the source's JPEG tiles as chunks
    complete: bool  # background chunks written too
    # the output level (a pass-through copy of a scanner level) whose stored chunks this level is downsampled from,
    # so that whoever holds those chunks (the writer, or the hub from the store) builds the same bytes; None: read
    # from the slide
    downsampled_from: int | None = None
    at_hub: bool = False  # built by the receiving hub from the store, not by the writer (ConvertOptions.hub_levels)


@dataclass(frozen=True)
class ShardTask:
    level: int
    row: int
    col: int
    tissue: bool
    priority: float

    @property
    def key(self) -> str:
        return f"{self.level}/c/0/{self.row}/{self.col}"


def shard_address(key: str) -> tuple[int, int, int] | None:
    """(level, row, col) of a shard key as `ShardTask.key` writes it ("0/c/0/3/5"); None for any other key."""
    parts = key.split("/")
    if len(parts) == 5 and parts[1:3] == ["c", "0"] and all(p.isascii() and p.isdigit() for p in (parts[0], parts[3], parts[4])):
        return int(parts[0]), int(parts[3]), int(parts[4])
    return None


@dataclass(frozen=True)
class PyramidPlan:
    """Everything decided before the first pixel is read: geometry, sources, and the send order of shards.

    `tissue` is None while the tissue is not known yet: `shards` then lists only the complete (overview) levels.
    """

    chunk: int
    shard_chunks: int
    levels: list[LevelPlan]
    shards: list[ShardTask]
    tissue: TissueMask | None
    options: ConvertOptions
    mpp: tuple[float, float] | None
    darkfield: bool  # fluorescence: background reads dark, not glass-white

    @property
    def fill(self) -> int:
        """What omitted (background) chunks read as, and what pads the slide's edges."""
        return background_value(self.darkfield)

    @property
    def shard_side(self) -> int:
        return self.chunk * self.shard_chunks

    @property
    def settled(self) -> bool:
        """Whether `shards` is the whole plan (the tissue is known)."""
        return self.tissue is not None

    @property
    def hub_shards(self) -> list[ShardTask]:
        """The tissue shards of the levels left to the hub (`LevelPlan.at_hub`); empty until the tissue is known."""
        if self.tissue is None:
            return []
        return _shard_tasks(self.levels, self.shard_side, self.tissue, None, self.options, at_hub=True)

    def with_tissue(self, tissue: TissueMask, priority: PriorityMap | None = None) -> PyramidPlan:
        """The whole plan: overview shards plus the shards that hold tissue (or all, with keep_background)."""
        return replace(self, shards=_shard_tasks(self.levels, self.shard_side, tissue, priority, self.options), tissue=tissue)

    def without_hub_levels(self) -> PyramidPlan:
        """The plan with the levels it left to the hub built by the writer after all (no hub came for them: see
        `SendOrder.take_hub_levels`): their shards follow the others, with the same bytes the hub would write."""
        levels = [replace(level, at_hub=False) for level in self.levels]
        options = replace(self.options, hub_levels=False)
        return replace(self, levels=levels, shards=self.shards + self.hub_shards, options=options)


PriorityMap = Callable[[float, float, float, float], float]


def plan_pyramid(
    slide: Slide, options: ConvertOptions = ConvertOptions(), priority: PriorityMap | None = None, *, defer_tissue: bool = False
) -> PyramidPlan:
    """Decide levels, sources and the send order; reads only a low-resolution view (for the tissue mask).

    defer_tissue: plan only the overview levels, reading just a small view (bright- or dark-field, which the
    metadata's fill value needs); `produce` detects the tissue after the overview shards are under way and
    completes the plan then (see `SendOrder.settle`).
    """
    chunk = options.chunk or _natural_chunk(slide)
    levels = _plan_levels(slide, chunk, options)
    side = chunk * options.shard_chunks
    darkfield = slide_is_darkfield(slide)
    tasks = _shard_tasks(levels, side, None, None, options)
    plan = PyramidPlan(chunk, options.shard_chunks, levels, tasks, None, options, slide.mpp, darkfield)
    return plan if defer_tissue else plan.with_tissue(detect_tissue(slide, darkfield), priority)


def _shard_tasks(
    levels: list[LevelPlan], side: int, tissue: TissueMask | None, priority: PriorityMap | None, options: ConvertOptions,
    at_hub: bool = False,
) -> list[ShardTask]:
    """The shards to write, in send order; without a tissue mask only those of the complete levels. `at_hub`: those
    of the levels left to the hub instead (which the writer does not produce)."""
    tasks = []
    for level in levels:
        if (tissue is None and not level.complete) or level.at_hub != at_hub:
            continue
        for row in range(-(-level.height // side)):
            for col in range(-(-level.width // side)):
                box = _level0_box(level, col * side, row * side, (col + 1) * side, (row + 1) * side)
                has_tissue = tissue.any_in(*box) if tissue is not None else True
                score = priority(*box) if (priority and has_tissue) else 0.0
                tasks.append(ShardTask(level.index, row, col, has_tissue, score))
    # dark-field: the mask's background may hold faint signal, which only the shard's own pixels can tell (`shard_job`)
    checked = tissue is not None and tissue.darkfield
    wanted = [t for t in tasks if levels[t.level].complete or t.tissue or options.keep_background or checked]
    return sorted(wanted, key=lambda t: _send_rank(levels, t))


def _send_rank(levels: list[LevelPlan], task: ShardTask) -> tuple[int, int, float, int, int]:
    """Send order, lower resolution first within each phase:
    0. the complete overview levels, row by row: the whole slide is viewable at once;
    1. tissue of the levels the scanner itself stored (level 0 and the source's own lower levels), hottest first;
    2. tissue of the in-between levels we computed by downsampling: they add ~25% bytes but no information, so
       they fill in after full resolution has arrived (a viewer shows the next stored level meanwhile);
    3. background: when kept, and on dark-field slides the shards the mask calls background (written where their
       own pixels hold signal)."""
    level = levels[task.level]
    if level.complete:
        return (0, -task.level, 0.0, task.row, task.col)
    phase = 3 if not task.tissue else 1 if level.scale == 1.0 else 2
    return (phase, -task.level, -task.priority, task.row, task.col)


class SendOrder:
    """The shards still to produce, in send order; thread-safe, so a heatmap that arrives while the slide is
    already streaming can re-rank what has not been built yet (`reprioritize`), and a plan made before the tissue
    was known grows by the tissue shards once it is (`settle`)."""

    def __init__(self, plan: PyramidPlan) -> None:
        self._plan = plan
        self._pending = list(plan.shards)
        self._priority: PriorityMap | None = None
        self._lock = threading.Lock()
        self._settled = threading.Event()
        if plan.settled:
            self._settled.set()
        self._hub_decision: Callable[[list[ShardTask]], bool] | None = None

    @property
    def plan(self) -> PyramidPlan:
        """The plan as known now: settled once the tissue is known."""
        return self._plan

    def next(self) -> ShardTask | None:
        with self._lock:
            return self._pending.pop(0) if self._pending else None

    def settle(self, tissue: TissueMask) -> PyramidPlan:
        """Complete a deferred plan with the tissue mask: its tissue shards join the shards still to produce."""
        with self._lock:
            known = {task.key for task in self._plan.shards}
            self._plan = self._plan.with_tissue(tissue, self._priority)
            added = [task for task in self._plan.shards if task.key not in known]
            self._pending = sorted(self._pending + added, key=lambda t: _send_rank(self._plan.levels, t))
        self._settled.set()
        return self._plan

    def decide_hub_levels(self, decide: Callable[[list[ShardTask]], bool]) -> None:
        """Let `decide` say, once every other shard is produced, whether the writer builds the shards the plan left
        to the hub (it gets them) after all: True where no hub came for them. Without it they stay the hub's."""
        self._hub_decision = decide

    def take_hub_levels(self) -> bool:
        """`produce` asks this once nothing else is pending: whether the hub levels' shards became the writer's
        (`decide_hub_levels` said so) and joined the shards still to produce. Asks once; False ever after."""
        decide, self._hub_decision = self._hub_decision, None
        tasks = self._plan.hub_shards
        if decide is None or not tasks or not decide(tasks):
            return False
        with self._lock:
            self._plan = self._plan.without_hub_levels()
            self._pending = sorted(self._pending + tasks, key=lambda t: _send_rank(self._plan.levels, t))
        return True

    def wait_settled(self, timeout: float | None = None) -> PyramidPlan | None:
        """The whole plan once the tissue is known, or None after `timeout` seconds."""
        return self._plan if self._settled.wait(timeout) else None

    def reprioritize(self, priority: PriorityMap) -> None:
        """Re-rank the shards not yet started by `priority` (hottest first within each level)."""
        levels, side = self._plan.levels, self._plan.shard_side
        with self._lock:
            self._priority = priority
            ranked = []
            for task in self._pending:
                level = levels[task.level]
                box = _level0_box(level, task.col * side, task.row * side, (task.col + 1) * side, (task.row + 1) * side)
                ranked.append(replace(task, priority=priority(*box) if task.tissue else 0.0))
            self._pending = sorted(ranked, key=lambda t: _send_rank(levels, t))


def _natural_chunk(slide: Slide) -> int:
    """The source tile size when its JPEG tiles can be passed through, else 256."""
    tile = slide.levels[0].tile_width
    if slide.raw_codec(0) == "jpeg" and tile == slide.levels[0].tile_height and tile and 128 <= tile <= 1024:
        return tile
    return 256


def _plan_levels(slide: Slide, chunk: int, options: ConvertOptions) -> list[LevelPlan]:
    width0, height0 = slide.dimensions
    count = 1 + max(0, math.ceil(math.log2(max(width0, height0) / OVERVIEW_SIDE)))
    levels = []
    for index in range(count):
        nominal = 2**index
        width, height = -(-width0 // nominal), -(-height0 // nominal)
        source, passthrough = _finest_source(slide, nominal), False
        src = slide.levels[source]
        if abs(src.width - width0 / nominal) <= 1 and abs(src.height - height0 / nominal) <= 1:
            width, height = src.width, src.height  # use the source's own rounding so its tiles line up
            passthrough = (
                options.passthrough
                and not options.lossless
                and slide.raw_codec(source) == "jpeg"
                and src.tile_width == chunk == src.tile_height
            )
        complete = options.keep_background or max(width, height) <= COMPLETE_SIDE
        scale = 1.0 if (width, height) == (src.width, src.height) else nominal / _nominal(src.downsample)
        levels.append(LevelPlan(index, width, height, width0 / width, source, scale, passthrough, complete))
    return [_with_origin(level, levels, options) for level in levels]


def _with_origin(level: LevelPlan, levels: list[LevelPlan], options: ConvertOptions) -> LevelPlan:
    """An in-between level (not complete, a power-of-two step below a level stored as the scanner's own JPEG
    tiles) is downsampled from that stored level's chunks: what the store holds is then all it needs, and the hub
    can build it instead of the uplink carrying it. The overview levels stay the writer's: they are the first view."""
    if level.complete or level.scale < 2 or not math.log2(level.scale).is_integer():
        return level
    stored = [other.index for other in levels if other.passthrough and other.scale == 1.0 and other.source_level == level.source_level]
    if not stored:
        return level
    return replace(level, downsampled_from=stored[0], at_hub=options.hub_levels)


def _nominal(downsample: float) -> float:
    """Vendors round level sizes, so a "4x" level reports 3.998 or 4.0003: snap to the power of two it stands for."""
    power = 2 ** round(math.log2(downsample))
    return float(power) if abs(downsample / power - 1) < 0.02 else downsample


def _finest_source(slide: Slide, downsample: float) -> int:
    """The coarsest source level that is still at least as fine as `downsample` (cheapest to read)."""
    return max(i for i, level in enumerate(slide.levels) if level.downsample <= downsample * 1.01 or i == 0)


def _level0_box(level: LevelPlan, x0: int, y0: int, x1: int, y1: int) -> tuple[float, float, float, float]:
    ds = level.downsample
    return x0 * ds, y0 * ds, min(x1, level.width) * ds, min(y1, level.height) * ds


# -- metadata ----------------------------------------------------------------------------------------------------
def metadata_pieces(plan: PyramidPlan, name: str, source_summary: dict) -> list[Piece]:  # type: ignore[type-arg]
    """zarr.json of the image group and of each level array.

    Plain JSON, written without importing zarr: that import alone costs a third of a second on the way to the first
    view. Tests check these documents equal what zarr.create_group / zarr.create_array write.
    """
    datasets = [
        {"path": str(level.index), "coordinateTransformations": [{"type": "scale", "scale": [1.0, *_scale(plan, level.downsample)]}]}
        for level in plan.levels
    ]
    attributes = {
        "ome": {
            "version": "0.5",
            "multiscales": [{"name": name, "axes": _axes(plan), "datasets": datasets, **IMAGE_DOWNSCALING}],
            "omero": {
                "channels": [
                    {"label": label, "color": color, "window": {"start": 0, "end": 255, "min": 0, "max": 255}, "active": True}
                    for label, color in (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))
                ],
                "rdefs": {"model": "color"},
            },
        },
        "slidestream": {
            "format_version": FORMAT_VERSION,
            "chunk_checksums": CHUNK_CHECKSUMS,
            "chunk": plan.chunk,
            "shard_chunks": plan.shard_chunks,
            "background": {
                "field": "dark-field" if plan.darkfield else "bright-field",
                "fill_value": plan.fill,
                "chunks": _background_chunks(plan),
            },
            "complete_levels": [level.index for level in plan.levels if level.complete],
            "downsampled_levels": {str(level.index): level.downsampled_from for level in plan.levels if level.downsampled_from is not None},
            "passthrough_levels": [level.index for level in plan.levels if level.passthrough],
            "source": source_summary,
        },
    }
    group = {"attributes": attributes, "zarr_format": 3, "node_type": "group"}
    return [_json_piece("zarr.json", group)] + [_json_piece(f"{level.index}/zarr.json", array_metadata(plan, level)) for level in plan.levels]


def _background_chunks(plan: PyramidPlan) -> str:
    """Which chunks the image leaves out, for a reader who wonders whether an absent chunk could hold anything."""
    if plan.options.keep_background:
        return "written"
    if plan.darkfield:
        return f"omitted above the overview levels where no pixel reads more than {SIGNAL_ABOVE_DARK} over the fill value"
    return "omitted above the overview levels"


def array_metadata(plan: PyramidPlan, level: LevelPlan) -> dict[str, Any]:
    """A level's Zarr v3 array: (c, y, x) uint8, one shard per object, JPEG (or zstd) chunks inside."""
    if plan.options.lossless:
        chunk_codecs = [{"name": "bytes"}, {"name": "zstd", "configuration": {"level": 5, "checksum": False}}]
    else:
        chunk_codecs = [
            {"name": "transpose", "configuration": {"order": [1, 2, 0]}},
            {"name": CODEC_NAME, "configuration": {"level": plan.options.quality}},  # imagecodecs.zarr.Jpeg's key
        ]
    sharding = {
        "chunk_shape": [3, plan.chunk, plan.chunk],
        "codecs": chunk_codecs,
        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
        "index_location": "end",
    }
    return {
        "shape": [3, level.height, level.width],
        "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [3, plan.shard_side, plan.shard_side]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": plan.fill,
        "codecs": [{"name": "sharding_indexed", "configuration": sharding}],
        "attributes": {},
        "dimension_names": ["c", "y", "x"],
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def _json_piece(key: str, document: dict[str, Any]) -> Piece:
    return Piece(key, json.dumps(document, indent=2).encode(), PieceKind.METADATA)


def label_groups(plan: PyramidPlan) -> list[Piece]:
    """The tissue mask as an NGFF label image (`labels/tissue`, 1 = tissue), so any OME-Zarr reader can show it:
    its two groups. Each level's array follows from `label_level` (coarsest first: readers use the small ones).

    NGFF wants a label image with the image's levels: level k has the shape and scale of image level k, a pixel
    being tissue where any of the detected mask's pixels under it is. Zarr leaves all-background chunks unwritten.
    """
    import zarr  # only here: the mask's chunks are encoded by zarr itself

    tissue = plan.tissue
    assert tissue is not None, "the plan's tissue is not known yet"
    store = zarr.storage.MemoryStore()
    zarr.create_group(store, path="labels", zarr_format=3, attributes={"ome": {"version": "0.5", "labels": ["tissue"]}})
    datasets = [
        {"path": str(level.index), "coordinateTransformations": [{"type": "scale", "scale": _scale(plan, level.downsample)}]}
        for level in plan.levels
    ]
    attributes = {
        "ome": {
            "version": "0.5",
            "image-label": {"colors": [{"label-value": 1, "rgba": [0, 160, 0, 255]}], "source": {"image": "../../"}},
            "multiscales": [{"name": "tissue", "axes": _axes(plan)[1:], "datasets": datasets, **LABEL_DOWNSCALING}],
        },
        "slidestream": {"tissue_fraction": round(tissue.fraction, 4), "mask_downsample": tissue.downsample},
    }
    zarr.create_group(store, path=TISSUE_LABEL, zarr_format=3, attributes=attributes)
    # zarr also writes the parent groups it implies: the root zarr.json here would replace the image's own
    return [piece for piece in _pieces(store) if piece.key.startswith("labels/")]


def label_level(plan: PyramidPlan, index: int) -> list[Piece]:
    """Level `index` of the tissue label (see `label_groups`): its zarr.json and its shards with tissue."""
    import zarr

    tissue = plan.tissue
    assert tissue is not None, "the plan's tissue is not known yet"
    level = plan.levels[index]
    store = zarr.storage.MemoryStore()
    mask = tissue.mask.astype(np.uint8)
    shape = (level.height, level.width)
    chunk = tuple(min(LABEL_CHUNK, side) for side in shape)
    shard = tuple(min(LABEL_SHARD, -(-side // c) * c) for side, c in zip(shape, chunk))
    array = zarr.create_array(
        store, name=f"{TISSUE_LABEL}/{level.index}", shape=shape, dtype="uint8", chunks=chunk, shards=shard,
        dimension_names=["y", "x"], fill_value=0,
    )  # fmt: skip
    ratio = level.downsample / tissue.downsample  # mask pixels per label pixel
    for y0 in range(0, shape[0], shard[0]):
        for x0 in range(0, shape[1], shard[1]):
            y1, x1 = min(shape[0], y0 + shard[0]), min(shape[1], x0 + shard[1])
            pixels = _any_tissue(mask, ratio, y0, y1, x0, x1)
            if pixels is not None:  # None: no tissue under this shard, which zarr would leave unwritten anyway
                array[y0:y1, x0:x1] = pixels
    # only the array's own objects: the groups zarr implies above it are `label_groups`'s, with their attributes
    return [piece for piece in _pieces(store) if piece.key.startswith(f"{TISSUE_LABEL}/{level.index}/")]


def label_cost(plan: PyramidPlan, index: int) -> int:
    """Pixels of label level `index`: what building it costs (level 0 of a 1.6 GB slide: 5 Gpx, ~10 s of a core)."""
    return plan.levels[index].width * plan.levels[index].height


def _any_tissue(mask: np.ndarray, ratio: float, y0: int, y1: int, x0: int, x1: int) -> np.ndarray | None:
    """Label pixels [y0, y1) x [x0, x1) of pixels `ratio` mask pixels wide: the maximum of the mask pixels each
    covers (the nearest one where a label pixel is smaller than a mask pixel); None where that is all 0."""
    window = []
    for start, stop, size in ((y0, y1, mask.shape[0]), (x0, x1, mask.shape[1])):
        first = np.minimum((np.arange(start, stop) * ratio).astype(np.int64), size - 1)
        window.append((first, min(size, max(int(first[-1]) + 1, math.ceil(stop * ratio)))))
    (rows, row_end), (cols, col_end) = window
    part = mask[rows[0] : row_end, cols[0] : col_end]
    if not part.any():
        return None
    if ratio <= 1:  # each label pixel takes its mask pixel's value: repeats, 40x faster than reduceat's equal runs
        columns = np.repeat(part, np.bincount(cols - cols[0], minlength=part.shape[1]), axis=1)
        return np.repeat(columns, np.bincount(rows - rows[0], minlength=part.shape[0]), axis=0)
    part = np.maximum.reduceat(part, rows - rows[0], axis=0)
    return np.maximum.reduceat(part, cols - cols[0], axis=1)


def _pieces(store: Any) -> list[Piece]:
    """A store's objects as pieces, parents before children."""
    return [
        Piece(key, buffer.to_bytes(), PieceKind.METADATA if key.endswith("zarr.json") else PieceKind.SIDECAR)
        for key, buffer in sorted(store._store_dict.items(), key=lambda item: (item[0].count("/"), item[0]))
    ]


def _axes(plan: PyramidPlan) -> list[dict[str, str]]:
    unit = {"unit": "micrometer"} if plan.mpp else {}
    return [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]


def _scale(plan: PyramidPlan, downsample: float) -> list[float]:
    """(y, x) size of a pixel `downsample` level-0 pixels wide, in micrometres when the mpp is known."""
    return [s * downsample for s in ((plan.mpp[1], plan.mpp[0]) if plan.mpp else (1.0, 1.0))]


# -- pixels ----------------------------------------------------------------------------------------------------
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


@dataclass(frozen=True)
class ShardJob:
    """One shard to build, with everything a worker needs and nothing big: the chunks worth writing are chosen
    here, where the tissue mask is, except on a dark-field slide, where a chunk the mask calls background is
    `checked`: written only where its own pixels hold signal (`holds_signal`), which only the worker reads."""

    level: LevelPlan
    task: ShardTask
    chunk: int
    shard_chunks: int
    wanted: tuple[tuple[int, int], ...]  # (row, column) of chunks inside the shard
    options: ConvertOptions
    fill: int  # what pads the slide's edges and stands in for missing source tiles
    # a downsampled level: the (row, column) of the chunks of its stored level under this shard that are written
    sources: tuple[tuple[int, int], ...] = ()
    checked: tuple[tuple[int, int], ...] = ()  # like `wanted`, written only where their own pixels hold signal
    checked_sources: tuple[tuple[int, int], ...] = ()  # like `sources`, as the stored level decides them

    def build(self, slide: Slide) -> bytes | None:
        """The complete bytes of the shard object (None: no chunk of it is worth writing)."""
        level, task, n, c = self.level, self.task, self.shard_chunks, self.chunk
        if level.downsampled_from is not None:
            stored = {}
            for check, tiles in ((False, self.sources), (True, self.checked_sources)):
                for row, col in tiles:
                    if (data := _stored_chunk(slide, level.source_level, row, col, check)) is not None:
                        stored[(row, col)] = data
            src = slide.levels[level.source_level]
            source = StoredLevel(level.source_level, src.width, src.height, c, stored, str(slide.path))
            return downsample_shard(level, task.row, task.col, c, n, source, self.fill, self.options)
        chunks: dict[tuple[int, int], bytes] = {}
        checked = self.checked
        if level.passthrough:
            for check, cells in ((False, self.wanted), (True, self.checked)):
                for i, j in cells:
                    if (data := _stored_chunk(slide, level.source_level, task.row * n + i, task.col * n + j, check)) is not None:
                        chunks[(i, j)] = data
            checked = ()  # decided: a stored tile that is absent or dark is not written
        _render_chunks(slide, level, task.row, task.col, c, n, self.wanted, chunks, self.fill, self.options, checked)
        return assemble_shard(chunks, n) if chunks else None


def _stored_chunk(slide: Slide, level: int, row: int, col: int, check: bool) -> bytes | None:
    """A source tile as the self-contained JPEG chunk a pass-through level writes; None where the file has none or,
    when `check`ed (dark-field, outside the tissue mask), where its own pixels hold no signal. The stored level and
    the level downsampled from it decide alike, so the writer builds what the hub builds from the store."""
    raw = slide.raw_tile(level, row, col)
    if raw is None:
        return None
    if check:
        src = slide.levels[level]  # the tile's padding beyond the level's edge is not image
        if not holds_signal(slide.decode_raw_tile(level, raw)[: src.height - row * raw.height, : src.width - col * raw.width]):
            return None
    try:
        return self_contained_jpeg(raw.data, raw.jpeg_tables, rgb=raw.photometric == "rgb")
    except ValueError as error:
        raise CorruptSlideError(f"{slide.path}: tile ({row}, {col}) of level {level}: {error}") from None


def _render_chunks(
    slide: Slide | StoredLevel, level: LevelPlan, row: int, col: int, c: int, n: int,
    wanted: tuple[tuple[int, int], ...], chunks: dict[tuple[int, int], bytes], fill: int, options: ConvertOptions,
    checked: tuple[tuple[int, int], ...] = (),
) -> None:
    """Encode the `wanted` chunks of shard (row, col) not in `chunks` yet, and the `checked` ones whose pixels hold
    signal (`holds_signal`: they are read anyway, to be judged), band by band of chunk rows."""
    for band in sorted({i for i, _ in wanted + checked}):
        columns = sorted(j for i, j in wanted + checked if i == band and (i, j) not in chunks)
        if not columns:
            continue
        y0 = (row * n + band) * c
        x0, x1 = (col * n + columns[0]) * c, (col * n + columns[-1] + 1) * c
        pixels = render(slide, level, x0, y0, x1, y0 + c, fill)  # type: ignore[arg-type]
        for j in columns:
            offset = (col * n + j) * c - x0
            chunk = pixels[:, offset : offset + c]
            if (band, j) not in checked or holds_signal(chunk):  # past the level's edge reads as the fill: dark
                chunks[(band, j)] = encode_chunk(chunk, options)


@dataclass(frozen=True)
class StoredLevel:
    """The chunks of a stored pass-through level (self-contained JPEGs by chunk (row, column)), read the way
    `render` reads a slide's JPEG tiles. A downsampled level is built from this, by the writer from the slide's
    tiles and by the hub from the store alike, so both make the same bytes; an absent chunk reads as the fill."""

    source_level: int
    width: int
    height: int
    chunk: int
    chunks: Mapping[tuple[int, int], bytes]
    path: str = "the stored image"

    @property
    def levels(self) -> dict[int, SlideLevel]:
        return {self.source_level: SlideLevel(self.width, self.height, 1.0, self.chunk, self.chunk)}

    def has_raw_tiles(self, level: int) -> bool:
        return True

    def raw_codec(self, level: int) -> str:
        return "jpeg"

    def raw_tile(self, level: int, row: int, col: int) -> RawTile | None:
        data = self.chunks.get((row, col))
        return None if data is None else RawTile(data, "jpeg", None, "ycbcr", self.chunk, self.chunk)


def downsample_shard(
    level: LevelPlan, row: int, col: int, c: int, n: int, source: StoredLevel, fill: int, options: ConvertOptions
) -> bytes | None:
    """Shard (row, col) of a downsampled level from its stored level's chunks; a chunk is written where any stored
    chunk under it is (so it shows what the finer level shows), and the shard is None when none is."""
    step = int(level.scale)  # stored chunks per chunk side
    wanted = tuple(
        (i, j)
        for i in range(n)
        for j in range(n)
        if (row * n + i) * c < level.height and (col * n + j) * c < level.width
        and any(((row * n + i) * step + a, (col * n + j) * step + b) in source.chunks for a in range(step) for b in range(step))
    )
    if not wanted:
        return None
    chunks: dict[tuple[int, int], bytes] = {}
    _render_chunks(source, level, row, col, c, n, wanted, chunks, fill, options)
    return assemble_shard(chunks, n)


def shard_job(plan: PyramidPlan, task: ShardTask) -> ShardJob | None:
    """The job for one shard, or None when it holds no chunk worth writing or checking."""
    level = plan.levels[task.level]
    n, c = plan.shard_chunks, plan.chunk
    if level.downsampled_from is not None:
        return _downsampled_job(plan, level, task)
    wanted, checked = [], []
    for i in range(n):
        for j in range(n):
            y0, x0 = (task.row * n + i) * c, (task.col * n + j) * c
            if y0 >= level.height or x0 >= level.width:
                continue
            if level.complete or (plan.tissue is not None and plan.tissue.any_in(*_level0_box(level, x0, y0, x0 + c, y0 + c))):
                wanted.append((i, j))
            elif plan.darkfield:
                checked.append((i, j))
    if not (wanted or checked):
        return None
    return ShardJob(level, task, c, n, tuple(wanted), plan.options, plan.fill, checked=tuple(checked))


def _downsampled_job(plan: PyramidPlan, level: LevelPlan, task: ShardTask) -> ShardJob | None:
    """A downsampled level's shard: the chunks its stored level writes under it (tissue, and on a dark-field slide
    the chunks it writes for their signal) are what it is built from."""
    assert level.downsampled_from is not None and plan.tissue is not None
    stored, n, c = plan.levels[level.downsampled_from], plan.shard_chunks, plan.chunk
    step, sources, checked = int(level.scale), [], []
    for row in range(task.row * n * step, (task.row + 1) * n * step):
        for col in range(task.col * n * step, (task.col + 1) * n * step):
            y0, x0 = row * c, col * c
            if y0 >= stored.height or x0 >= stored.width:
                continue
            if plan.tissue.any_in(*_level0_box(stored, x0, y0, x0 + c, y0 + c)):
                sources.append((row, col))
            elif plan.darkfield:
                checked.append((row, col))
    if not (sources or checked):
        return None
    return ShardJob(level, task, c, n, (), plan.options, plan.fill, tuple(sources), checked_sources=tuple(checked))


def encode_chunk(pixels: np.ndarray, options: ConvertOptions) -> bytes:
    """Bytes of one chunk as the array's codecs expect them."""
    if options.lossless:
        return bytes(imagecodecs.zstd_encode(np.ascontiguousarray(pixels.transpose(2, 0, 1)).tobytes(), level=5))
    return encode_jpeg(np.ascontiguousarray(pixels), options.quality)


def assemble_shard(chunks: dict[tuple[int, int], bytes], n: int) -> bytes:
    """A Zarr v3 shard: chunk bytes, the chunks' CRC32C table (`CHUNK_CHECKSUMS`), then the (offset, nbytes) index
    with its CRC32C, little-endian, at the end. Zarr reads chunks by the index alone, so the table is invisible to it."""
    index = np.full((1, n, n, 2), EMPTY, dtype="<u8")
    checksums = np.zeros((n, n), dtype="<u4")
    body = bytearray()
    for (i, j), data in sorted(chunks.items()):
        index[0, i, j] = (len(body), len(data))
        checksums[i, j] = google_crc32c.value(data)
        body += data
    index_bytes = index.tobytes()
    return bytes(body) + checksums.tobytes() + index_bytes + struct.pack("<I", google_crc32c.value(index_bytes))


class CorruptShardError(ValueError):
    """A shard whose bytes fail their checksums: damaged on the store, so none of it may be shown, scored or built on."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(key, detail)  # both in args: the error survives pickling (a Dask worker raises it)
        self.key, self.detail = key, detail

    def __str__(self) -> str:
        return f"corrupt on the store: {self.key} ({self.detail})"


def shard_index_size(n: int) -> int:
    """Bytes at the end of a shard of n x n chunks: (offset, nbytes) little-endian uint64 per chunk, then a CRC32C."""
    return 16 * n * n + 4


def shard_tail_size(n: int, checksums: bool) -> int:
    """Bytes at the end of a shard that a reader of single chunks needs: the index, after the chunks' CRC32C table
    when the image has one (`CHUNK_CHECKSUMS`)."""
    return shard_index_size(n) + (4 * n * n if checksums else 0)


def read_shard_index(tail: bytes, n: int) -> np.ndarray:
    """The (n, n, 2) offset/nbytes table from a shard's last `shard_index_size(n)` bytes, `assemble_shard`'s layout;
    ValueError when they are too short or fail their CRC32C (`EMPTY` marks an absent chunk)."""
    if len(tail) != shard_index_size(n):
        raise ValueError("shard shorter than its index")
    body, (crc,) = tail[:-4], struct.unpack("<I", tail[-4:])
    if google_crc32c.value(body) != crc:
        raise ValueError("shard index checksum mismatch")
    return np.frombuffer(body, dtype="<u8").reshape(n, n, 2)


def read_shard_tail(tail: bytes, n: int, checksums: bool, key: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(index, chunk CRC32Cs or None) from a shard's last `shard_tail_size(n, checksums)` bytes; `CorruptShardError`
    when the index fails its CRC32C or the tail is too short."""
    if len(tail) != shard_tail_size(n, checksums):
        raise CorruptShardError(key, "shorter than its index")
    try:
        index = read_shard_index(tail[-shard_index_size(n) :], n)
    except ValueError as error:
        raise CorruptShardError(key, str(error)) from None
    table = np.frombuffer(tail[: 4 * n * n], dtype="<u4").reshape(n, n) if checksums else None
    return index, table


def check_chunk(data: bytes, expected: int | None, key: str, i: int, j: int) -> bytes:
    """`data`, chunk (i, j) of shard `key`, once it matches its CRC32C (None: an image written before the table)."""
    if expected is not None and google_crc32c.value(data) != expected:
        raise CorruptShardError(key, f"chunk ({i}, {j}) fails its CRC32C")
    return data


def verified_chunks(data: bytes, n: int, checksums: bool, key: str) -> dict[tuple[int, int], bytes]:
    """Every chunk of a whole shard by its (i, j) inside the shard, each checked against the index's bounds and
    (`checksums`) its CRC32C; `CorruptShardError` for the first that is not what was written."""
    tail = shard_tail_size(n, checksums)
    if len(data) < tail:
        raise CorruptShardError(key, "shorter than its index")
    index, table = read_shard_tail(data[-tail:], n, checksums, key)
    chunks = {}
    for i in range(n):
        for j in range(n):
            offset, nbytes = (int(v) for v in index[i, j])
            if offset == EMPTY:
                continue
            if offset + nbytes > len(data) - tail:
                raise CorruptShardError(key, f"chunk ({i}, {j}) runs past the shard's end")
            chunks[(i, j)] = check_chunk(data[offset : offset + nbytes], None if table is None else int(table[i, j]), key, i, j)
    return chunks


def render(slide: Slide, level: LevelPlan, x0: int, y0: int, x1: int, y1: int, fill: int) -> np.ndarray:
    """Pixels (y1-y0, x1-x0, 3) of output `level`; beyond the level's edge reads as `fill` (the background)."""
    out = np.full((y1 - y0, x1 - x0, 3), fill, np.uint8)
    cx1, cy1 = min(x1, level.width), min(y1, level.height)
    if cx1 <= x0 or cy1 <= y0:
        return out
    scale = level.scale
    # split wide boxes so the decoded source region stays under MAX_CANVAS pixels
    step = max(1, int(MAX_CANVAS / ((cy1 - y0) * scale * scale)))
    for bx0 in range(x0, cx1, step):
        bx1 = min(cx1, bx0 + step)
        out[: cy1 - y0, bx0 - x0 : bx1 - x0] = _render_box(slide, level.source_level, bx0, y0, bx1, cy1, scale, fill)
    return out


def _render_box(slide: Slide, source_level: int, x0: int, y0: int, x1: int, y1: int, scale: float, fill: int) -> np.ndarray:
    """Output pixels [x0, x1) x [y0, y1): output pixel (x, y) averages source pixels [x*scale, (x+1)*scale)."""
    src = slide.levels[source_level]
    size = (x1 - x0, y1 - y0)
    sx0, sy0, sx1, sy1 = x0 * scale, y0 * scale, x1 * scale, y1 * scale
    if slide.has_raw_tiles(source_level):
        # decode the stored tiles on their own integer grid: openslide would resample fractional positions
        canvas, origin, reduction = _decode_tiles(slide, source_level, sx0, sy0, min(sx1, src.width), min(sy1, src.height), scale, fill)
    else:
        ix0, iy0 = int(sx0), int(sy0)
        ix1, iy1 = min(src.width, math.ceil(sx1)), min(src.height, math.ceil(sy1))
        location = (round(ix0 * src.downsample), round(iy0 * src.downsample))
        pixels = slide.read_region(location, source_level, (ix1 - ix0, iy1 - iy0))
        if scale == 1.0 and pixels.shape[1::-1] == size:
            return pixels
        canvas, origin, reduction = Image.fromarray(pixels), (ix0, iy0), 1
    box = tuple((value - base) / reduction for value, base in zip((sx0, sy0, sx1, sy1), (*origin, *origin)))
    # the last output pixel may reach past the source edge: extend with the background so the box stays inside
    need = (math.ceil(box[2]), math.ceil(box[3]))
    if need[0] > canvas.width or need[1] > canvas.height:
        padded = Image.new("RGB", (max(need[0], canvas.width), max(need[1], canvas.height)), (fill, fill, fill))
        padded.paste(canvas, (0, 0))
        canvas = padded
    if canvas.size == size and box == (0, 0, *size):
        return np.asarray(canvas)
    return np.asarray(canvas.resize(size, Image.Resampling.BOX, box=box))


def _decode_tiles(
    slide: Slide, level: int, sx0: float, sy0: float, sx1: float, sy1: float, scale: float, fill: int
) -> tuple[Image.Image, tuple[int, int], int]:
    """Decode the stored tiles under a source box into (canvas, source origin of the canvas, reduction).

    JPEG tiles are decoded at 1/2, 1/4 or 1/8 size inside libjpeg when the output is that much smaller (DCT
    scaling: several times faster than decoding at full size and shrinking); `reduction` says which.
    """
    src = slide.levels[level]
    tw, th = src.tile_width, src.tile_height
    reduction = 1 << min(3, int(math.log2(scale))) if slide.raw_codec(level) == "jpeg" and scale >= 2 else 1
    tile_w, tile_h = tw // reduction, th // reduction
    c0, c1 = int(sx0 // tw), min(math.ceil(sx1 / tw), -(-src.width // tw))
    r0, r1 = int(sy0 // th), min(math.ceil(sy1 / th), -(-src.height // th))
    canvas = Image.new("RGB", ((c1 - c0) * tile_w, (r1 - r0) * tile_h), (fill, fill, fill))
    for row in range(r0, r1):
        for col in range(c0, c1):
            raw = slide.raw_tile(level, row, col)
            if raw is None:
                continue
            if reduction == 1:
                tile = Image.fromarray(slide.decode_raw_tile(level, raw))
            else:
                tile = _draft_decode(slide, raw, (tile_w, tile_h), f"tile ({row}, {col}) of level {level}")
            canvas.paste(tile, ((col - c0) * tile_w, (row - r0) * tile_h))
    # pixels past the level's edge inside edge tiles are padding, not image: blank them
    valid = ((src.width - c0 * tw) // reduction, (src.height - r0 * th) // reduction)
    if valid[0] < canvas.width:
        canvas.paste((fill, fill, fill), (valid[0], 0, canvas.width, canvas.height))
    if valid[1] < canvas.height:
        canvas.paste((fill, fill, fill), (0, valid[1], canvas.width, canvas.height))
    return canvas, (c0 * tw, r0 * th), reduction


def _draft_decode(slide: Slide, raw: RawTile, size: tuple[int, int], where: str) -> Image.Image:
    try:
        tile = Image.open(io.BytesIO(self_contained_jpeg(raw.data, raw.jpeg_tables, rgb=raw.photometric == "rgb")))
        tile.draft("RGB", size)
        if tile.size != size:
            tile = tile.resize(size, Image.Resampling.BOX)
        tile.load()
    except (OSError, ValueError, SyntaxError) as error:
        raise CorruptSlideError(f"{slide.path}: cannot decode {where}: {error}") from None
    return tile
