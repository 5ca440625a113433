"""The AI overlay: the coarse tumour-probability map inference/ writes, rendered as PNG tiles on the slide's grid.

The map (`CASE/heatmap.zarr`, an OME-Zarr with one channel, uint8 0-255 or float 0-1, NaN = not analysed) is placed
on the slide through the two images' scale (and translation) metadata. Tiles use the slide's own tile grid, so
OpenSeadragon stacks them without any alignment code in the browser. Each map pixel is drawn as a crisp block:
the pathologist sees the grid the model actually scored.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
import zarr.api.asynchronous
from PIL import Image

from transfer.target import HEATMAP
from viewer.image import ImageError, Level, SlideImage
from viewer.storage import ObjectInfo

MAX_PIXELS = 64_000_000  # a heatmap is coarse; anything bigger is a mistake, not something to load into memory

# probability -> RGBA: blue and see-through for unlikely, opaque red for likely, so tissue stays readable
STOPS: tuple[tuple[float, tuple[int, int, int, int]], ...] = (
    (0.0, (44, 123, 182, 0)),
    (0.3, (171, 217, 233, 70)),
    (0.5, (255, 255, 191, 140)),
    (0.7, (253, 174, 97, 200)),
    (1.0, (215, 25, 28, 235)),
)
LUT = np.stack(
    [np.interp(np.linspace(0, 1, 256), [at for at, _ in STOPS], [rgba[i] for _, rgba in STOPS]) for i in range(4)], axis=1
).round().astype(np.uint8)


def legend() -> list[dict[str, Any]]:
    """The colour stops, for the page's legend (one source of truth with the tiles)."""
    return [{"at": at, "rgba": [r, g, b, round(a / 255, 3)]} for at, (r, g, b, a) in STOPS]


@dataclass(frozen=True)
class Heatmap:
    rgba: np.ndarray  # (h + 1, w + 1, 4): coloured map plus one transparent row and column for "outside"
    cell: tuple[float, float]  # (y, x) level-0 pixels per map pixel
    origin: tuple[float, float]  # (y, x) level-0 position of the map's top-left corner
    version: str


def version_of(objects: list[ObjectInfo]) -> str:
    """Changes whenever inference rewrites any object of the map, so tile URLs (and browser caches) follow."""
    digest = hashlib.sha256()
    for info in sorted(objects, key=lambda item: item.key):
        digest.update(f"{info.key}\0{info.size}\0{info.tag}\n".encode())
    return digest.hexdigest()[:16]


async def open_heatmap(store: zarr.abc.store.Store, image: SlideImage, version: str) -> Heatmap:
    """Read the whole (coarse) map once and colour it; `FileNotFoundError` while it does not exist."""
    where = f"case {image.case}: heatmap"
    group = await zarr.api.asynchronous.open_group(store=store, path=f"{image.case}/{HEATMAP}", mode="r", zarr_format=3)
    try:
        dataset = group.attrs["ome"]["multiscales"][0]["datasets"][0]
        array = await group.getitem(dataset["path"])
        transforms = dataset.get("coordinateTransformations", [])
    except (KeyError, IndexError, TypeError) as error:
        raise ImageError(f"{where}: not an OME-Zarr image ({error})") from None
    shape = tuple(size for size in array.shape if size != 1) or (1, 1)
    if len(shape) != 2 or int(np.prod(shape)) > MAX_PIXELS:
        raise ImageError(f"{where}: expected one channel of at most {MAX_PIXELS} pixels, found shape {array.shape}")
    values = np.asarray(await array.getitem(...)).reshape(shape)
    if values.dtype == np.uint8:
        codes, valid = values, np.ones(shape, bool)
    else:
        valid = np.isfinite(values)
        codes = np.round(np.clip(np.nan_to_num(values.astype(np.float32)), 0, 1) * 255).astype(np.uint8)
    rgba = np.zeros((shape[0] + 1, shape[1] + 1, 4), np.uint8)
    rgba[:-1, :-1] = np.where(valid[..., None], LUT[codes], 0)
    scale = _last_two(transforms, "scale", (1.0, 1.0))
    translation = _last_two(transforms, "translation", (0.0, 0.0))
    cell = (scale[0] / image.scale[0], scale[1] / image.scale[1])
    origin = (translation[0] / image.scale[0], translation[1] / image.scale[1])
    return Heatmap(rgba, cell, origin, version)


def _last_two(transforms: list[dict[str, Any]], kind: str, default: tuple[float, float]) -> tuple[float, float]:
    for transform in transforms:
        if transform.get("type") == kind and len(transform.get(kind, [])) >= 2:
            return float(transform[kind][-2]), float(transform[kind][-1])
    return default


def render_tile(heatmap: Heatmap, image: SlideImage, level: Level, row: int, col: int) -> bytes:
    """The PNG for tile (row, col) of `level`: c x c RGBA, transparent outside the map and the slide.

    Geometry follows OpenSeadragon's: level k is exactly 2**k times smaller than level 0.
    """
    size, downsample = level.chunk, 2.0**level.index
    level0 = image.levels[0]
    ys = (row * size + np.arange(size) + 0.5) * downsample
    xs = (col * size + np.arange(size) + 0.5) * downsample
    height, width = heatmap.rgba.shape[0] - 1, heatmap.rgba.shape[1] - 1
    iy = np.floor((ys - heatmap.origin[0]) / heatmap.cell[0]).astype(np.int64)
    ix = np.floor((xs - heatmap.origin[1]) / heatmap.cell[1]).astype(np.int64)
    iy[(iy < 0) | (iy >= height) | (ys >= level0.height)] = height  # the transparent row
    ix[(ix < 0) | (ix >= width) | (xs >= level0.width)] = width
    out = io.BytesIO()
    Image.fromarray(heatmap.rgba[iy[:, None], ix[None, :]], "RGBA").save(out, "PNG", compress_level=1)
    return out.getvalue()
