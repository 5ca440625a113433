"""One shard to build: which of its chunks are worth writing (decided where the tissue mask is) and building them
(in a worker, from the slide's tiles or a stored level's chunks). The hub builds its levels with the same code
(`downsample_shard`), so whoever builds a shard writes the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import imagecodecs
import numpy as np

from slides import CorruptSlideError, RawTile, Slide
from slides import Level as SlideLevel
from tiling.jpeg import encode_jpeg, self_contained_jpeg
from tiling.plan import ConvertOptions, LevelPlan, PyramidPlan, ShardTask, level0_box
from tiling.rendering import render
from tiling.shard_format import assemble_shard
from tiling.tissue import holds_signal


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
            if level.complete or (plan.tissue is not None and plan.tissue.any_in(*level0_box(level, x0, y0, x0 + c, y0 + c))):
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
            if plan.tissue.any_in(*level0_box(stored, x0, y0, x0 + c, y0 + c)):
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
