"""An output level's pixels from the source: box averaging over the nearest finer source level, decoding the
scanner's JPEG tiles at reduced size where that is enough, in boxes small enough to keep memory bounded.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from slides import CorruptSlideError, RawTile, Slide
from tiling.jpeg import self_contained_jpeg
from tiling.plan import LevelPlan

MAX_CANVAS = 16_000_000  # pixels decoded at once while building a shard band


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
