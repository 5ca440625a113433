"""The pyramid's plan: everything decided before the first pixel is read (levels, their sources, chunk and shard
geometry, which shards to write and in what order), so building, sending and the hub all work from one plan.

Every output level is computed straight from the nearest finer *source* level, never from another output level,
except an in-between level a power of two below a pass-through level, which is downsampled from that level's stored
chunks (`LevelPlan.downsampled_from`) so the hub can build it from the store instead. A shard's key is written by
`ShardTask.key` and read back by `shard_address`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from slides import Slide
from tiling.jpeg import DEFAULT_QUALITY
from tiling.tissue import TissueMask, background_value, detect_tissue, slide_is_darkfield

OVERVIEW_SIDE = 1024  # the smallest level fits in this many pixels
COMPLETE_SIDE = 4096  # levels up to this size are written whole (background included): the overview never has holes


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
        """The whole plan: overview shards plus the shards that hold tissue (or all, with keep_background), the
        hottest by `priority` first, without one the densest in hematoxylin (`TissueMask.hematoxylin_priority`)."""
        priority = priority or tissue.hematoxylin_priority(1.0)
        return replace(self, shards=_shard_tasks(self.levels, self.shard_side, tissue, priority, self.options), tissue=tissue)

    def without_hub_levels(self) -> PyramidPlan:
        """The plan with the levels it left to the hub built by the writer after all (no hub came for them: see
        `SendOrder.take_hub_levels`): their shards follow the others, with the same bytes the hub would write."""
        levels = [replace(level, at_hub=False) for level in self.levels]
        options = replace(self.options, hub_levels=False)
        return replace(self, levels=levels, shards=self.shards + self.hub_shards, options=options)


PriorityMap = Callable[[float, float, float, float], float]


def highest(first: PriorityMap, *more: PriorityMap | None) -> PriorityMap:
    """Box by box the highest of the priorities given."""
    given = [first, *(priority for priority in more if priority is not None)]
    return lambda x0, y0, x1, y1: max(priority(x0, y0, x1, y1) for priority in given)


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
                box = level0_box(level, col * side, row * side, (col + 1) * side, (row + 1) * side)
                has_tissue = tissue.any_in(*box) if tissue is not None else True
                score = priority(*box) if (priority and has_tissue) else 0.0
                tasks.append(ShardTask(level.index, row, col, has_tissue, score))
    # dark-field: the mask's background may hold faint signal, which only the shard's own pixels can tell (`shard_job`)
    checked = tissue is not None and tissue.darkfield
    wanted = [t for t in tasks if levels[t.level].complete or t.tissue or options.keep_background or checked]
    return sorted(wanted, key=lambda t: send_rank(levels, t))


def send_rank(levels: list[LevelPlan], task: ShardTask) -> tuple[int, int, float, int, int]:
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


def level0_box(level: LevelPlan, x0: int, y0: int, x1: int, y1: int) -> tuple[float, float, float, float]:
    """A box of `level`'s pixels in level-0 pixels, cut at the level's edge: what the tissue mask and a priority map see."""
    ds = level.downsample
    return x0 * ds, y0 * ds, min(x1, level.width) * ds, min(y1, level.height) * ds
