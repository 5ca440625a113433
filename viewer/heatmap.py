"""The AI overlay: the map of the model's probability of what its package says it detects, as inference/ writes it,
rendered as PNG tiles on the slide's grid.

The map (`CASE/slides/SLIDE/VERSION/heatmap.zarr`, an OME-Zarr with one channel, uint8 0-255 or float 0-1, NaN = not analysed) is placed
on the slide through the two images' scale (and translation) metadata. Tiles use the slide's own tile grid, so
OpenSeadragon stacks them without any alignment code in the browser. Each map pixel is drawn as a crisp block:
the pathologist sees the grid the model actually scored.

Three kinds of cell: scored (coloured by probability), unscored glass (transparent: nothing to see), and tissue not
scored yet while the map is partial (hatched: "still being scored", never mistaken for a low score). The exact
scores come from `tile_state` (NaN = not scored) when inference wrote it; tissue from the slide's own tissue label
image (`image.zarr/labels/tissue` of the same slide version, its coarsest level: a few hundred KB at most).

Every array read here (the map, `tile_state`, the tissue label) is held to `caseformat.results.check_array`'s
bounds (chunk sides of at least 16 px or the whole side, at most 4,194,304 chunks, uint8 or float32) and to
MAX_PIXELS before it is read, so a declared size costs nothing until it is checked: the map is refused as
"unreadable: <reason>", a label that is not is ignored (no hatching).

`Heatmaps` finds the map to draw over a slide version (the triage shown decides whose, and whether any) and keeps it
under its version, so fifty viewers colour a map once.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
import zarr.api.asynchronous
from PIL import Image

from caseformat.errors import DocumentError
from caseformat.image import Multiscale
from caseformat.layout import EDGE, HEATMAP, IMAGE, TILE_STATE, SlideRef, member
from caseformat.results import Triage, check_array
from objectstore import ObjectInfo, ObjectNotFoundError, ZarrView
from tiling.label import TISSUE_LABEL
from viewer.cache import SIDECAR_TTL, AsyncCache
from viewer.image import ImageError, LevelGrid, SlideImage, TileNotFoundError
from viewer.summary import readable
from viewer.tiles import Tiles

MAX_PIXELS = 64_000_000  # a heatmap is coarse; anything bigger is a mistake, not something to load into memory

# Viridis (Stéfan van der Walt and Nathaniel Smith, 2015; public domain, CC0), matplotlib's table sampled at
# 0, 1/16, ..., 1 and interpolated linearly in sRGB: within 6/255 of the full 256-entry table (tested against
# matplotlib). Perceptually uniform and monotonic in lightness, so 0.9 reads brighter than 0.1 also in greyscale
# and to colour-blind readers. Drawn opaque: the page's opacity slider decides how much tissue shows through.
VIRIDIS = (
    (68, 1, 84), (72, 24, 106), (71, 45, 123), (66, 64, 134), (59, 82, 139), (51, 99, 141), (44, 114, 142),
    (38, 130, 142), (33, 145, 140), (31, 160, 136), (40, 174, 128), (63, 188, 115), (94, 201, 98), (132, 212, 75),
    (173, 220, 48), (216, 226, 25), (253, 231, 37),
)  # fmt: skip
STOPS = np.linspace(0.0, 1.0, len(VIRIDIS))
LUT = np.concatenate(
    [np.stack([np.interp(np.linspace(0, 1, 256), STOPS, [rgb[i] for rgb in VIRIDIS]) for i in range(3)], axis=1),
     np.full((256, 1), 255)], axis=1,
).round().astype(np.uint8)  # fmt: skip
PENDING_RGBA = (255, 255, 255, 255)  # the hatch of tissue not scored yet: white stripes (period 8 px on screen)
HATCH_PERIOD = 8


def legend() -> dict[str, Any]:
    """The colour stops and the "being scored" hatch, for the page's legend (one source of truth with the tiles)."""
    return {
        "stops": [{"at": round(float(at), 4), "rgb": list(rgb)} for at, rgb in zip(STOPS, VIRIDIS)],
        "pending": {"rgb": list(PENDING_RGBA[:3]), "period": HATCH_PERIOD},
    }


@dataclass(frozen=True)
class MapOverlay:
    """A published heatmap as the viewer draws it over the slide (inference's `Heatmap` is the per-tile results)."""

    rgba: np.ndarray  # (h + 1, w + 1, 4): coloured map plus one transparent row and column for "outside"
    pending: np.ndarray  # (h + 1, w + 1) bool: tissue not scored yet (hatched)
    cell: tuple[float, float]  # (y, x) level-0 pixels per map pixel
    origin: tuple[float, float]  # (y, x) level-0 position of the map's top-left corner
    version: str
    stage: str | None  # what produced the map: edge, hub, analyze (transfer.target), None when not recorded
    complete: bool | None  # None: not recorded (then nothing is marked as still being scored)
    tiles_scored: int | None
    tissue_tiles: int | None

    def describe(self) -> dict[str, Any]:
        """What the page shows about the map: version (for tile URLs), legend, and stage of what is on screen."""
        return {"version": self.version, "legend": legend(), "stage": self.stage, "complete": self.complete,
                "tiles_scored": self.tiles_scored, "tissue_tiles": self.tissue_tiles}  # fmt: skip


def version_of(objects: list[ObjectInfo]) -> str:
    """Changes whenever inference rewrites any object of the map, so tile URLs (and browser caches) follow."""
    digest = hashlib.sha256()
    for info in sorted(objects, key=lambda item: item.key):
        digest.update(f"{info.key}\0{info.size}\0{info.tag}\n".encode())
    return digest.hexdigest()[:16]


async def open_heatmap(store: zarr.abc.store.Store, image: SlideImage, folder: str, version: str) -> MapOverlay:
    """Read the whole (coarse) map at `folder` (the centre's heatmap.zarr, or the station's edge map) once and colour
    it; `FileNotFoundError` while it does not exist."""
    where = f"case {image.case}: heatmap"
    group = await zarr.api.asynchronous.open_group(store=store, path=folder, mode="r", zarr_format=3)
    try:
        dataset = Multiscale.from_attributes(group.attrs, where).datasets[0]
        array = await group.getitem(dataset.path)
    except DocumentError as error:
        raise ImageError(str(error)) from None
    except (KeyError, TypeError) as error:  # zarr's refusals of the array's metadata
        raise ImageError(f"{where}: not an OME-Zarr image ({error})") from None
    shape = tuple(size for size in array.shape if size != 1) or (1, 1)
    if len(shape) != 2 or int(np.prod(shape)) > MAX_PIXELS:
        raise ImageError(f"{where}: expected one channel of at most {MAX_PIXELS} pixels, found shape {array.shape}")
    try:
        check_array(where, array.shape, array.chunks, array.shards, str(array.dtype))
    except DocumentError as error:
        raise ImageError(str(error)) from None
    scores = await _exact_scores(group, shape)
    if scores is None:
        values = np.asarray(await array.getitem(...)).reshape(shape)
        # uint8 maps say "probability x 255; 0 = background or not scored yet" (inference.heatmap)
        scores = np.where(values > 0, values / 255.0, np.nan) if values.dtype == np.uint8 else values.astype(np.float32)
    valid = np.isfinite(scores)
    codes = np.round(np.clip(np.nan_to_num(scores), 0, 1) * 255).astype(np.uint8)
    rgba = np.zeros((shape[0] + 1, shape[1] + 1, 4), np.uint8)
    rgba[:-1, :-1] = np.where(valid[..., None], LUT[codes], 0)
    scale = dataset.last_two("scale", (1.0, 1.0))
    translation = dataset.last_two("translation", (0.0, 0.0))
    cell = (scale[0] / image.scale[0], scale[1] / image.scale[1])
    # NGFF places a pixel's centre at index x scale + translation, level 0's pixel k at k x image.scale: the map's
    # top-left corner, in level-0 pixels whose pixel k spans [k, k + 1), is half a cell before its first centre
    origin = (translation[0] / image.scale[0] + 0.5 - cell[0] / 2, translation[1] / image.scale[1] + 0.5 - cell[1] / 2)
    about = _about(group.attrs)
    complete = about.get("complete") if isinstance(about.get("complete"), bool) else None
    pending = np.zeros(rgba.shape[:2], bool)
    if complete is False:  # a partial map: tissue without a score is still being scored
        tissue = await _tissue_cells(store, image, shape, cell, origin)
        if tissue is not None:
            pending[:-1, :-1] = tissue & ~valid
    stage = about.get("stage") if isinstance(about.get("stage"), str) else None
    counts = [about.get(name) if isinstance(about.get(name), int) else None for name in ("tiles_scored", "tissue_tiles")]
    return MapOverlay(rgba, pending, cell, origin, version, stage, complete, *counts)


def _about(attributes: dict[str, Any]) -> dict[str, Any]:
    """inference's own description of the map (stage, complete, counts); empty where absent or malformed."""
    ours = attributes.get("slidestream")
    about = ours.get("heatmap") if isinstance(ours, dict) else None
    return about if isinstance(about, dict) else {}


async def _exact_scores(group: zarr.AsyncGroup, shape: tuple[int, ...]) -> np.ndarray | None:
    """The float scores (NaN = not scored) of `tile_state`, where inference wrote it for this grid."""
    try:
        state = await group.getitem(TILE_STATE)
    except KeyError:
        return None
    if tuple(state.shape) != (4, *shape) or not _within_bounds(state):
        return None
    return np.asarray(await state.getitem((0, slice(None), slice(None))), np.float32)


async def _tissue_cells(
    store: zarr.abc.store.Store, image: SlideImage, shape: tuple[int, ...], cell: tuple[float, float], origin: tuple[float, float]
) -> np.ndarray | None:
    """(h, w) bool: map cells with any tissue under them, from the label image's coarsest level; None without one."""
    try:
        # image.case is the slide version's root (CASE/slides/SLIDE/VERSION): the label of this very scan
        label_path = member(image.case, IMAGE, TISSUE_LABEL)
        group = await zarr.api.asynchronous.open_group(store=store, path=label_path, mode="r", zarr_format=3)
        dataset = Multiscale.from_attributes(group.attrs, label_path).datasets[-1]
        array = await group.getitem(dataset.path)
        if int(np.prod(array.shape)) > MAX_PIXELS or not _within_bounds(array):
            return None
        label = np.asarray(await array.getitem(...)) > 0
        scale = dataset.last_two("scale", (1.0, 1.0))
    except (FileNotFoundError, KeyError, TypeError, DocumentError):  # no label, or one that is not an NGFF label image
        return None
    if label.ndim != 2:
        return None
    # any-in-box over the label pixels each cell covers, through the label's summed-area table
    table = np.pad(label, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    edges = []
    for axis in (0, 1):
        downsample = scale[axis] / image.scale[axis]  # level-0 pixels per label pixel
        bounds = (origin[axis] + np.arange(shape[axis] + 1) * cell[axis]) / downsample
        first = np.clip(np.floor(bounds[:-1]), 0, label.shape[axis]).astype(np.int64)
        last = np.clip(np.ceil(bounds[1:]), 0, label.shape[axis]).astype(np.int64)
        edges.append((first, last))
    (y0, y1), (x0, x1) = edges
    inside = table[y1][:, x1] - table[y0][:, x1] - table[y1][:, x0] + table[y0][:, x0]
    return inside > 0


def _within_bounds(array: Any) -> bool:
    try:
        check_array("", array.shape, array.chunks, array.shards, str(array.dtype))
    except DocumentError:
        return False
    return True


def render_tile(heatmap: MapOverlay, image: SlideImage, level: LevelGrid, row: int, col: int) -> bytes:
    """The PNG for tile (row, col) of `level`: c x c RGBA, transparent outside the map and the slide, hatched where
    tissue is still being scored (stripes on the screen's pixel grid, continuous across tiles and equal at any zoom).

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
    pixels = heatmap.rgba[iy[:, None], ix[None, :]]
    pending = heatmap.pending[iy[:, None], ix[None, :]]
    if pending.any():
        diagonal = (row * size + np.arange(size))[:, None] + (col * size + np.arange(size))[None, :]
        pixels[pending & (diagonal % HATCH_PERIOD < HATCH_PERIOD // 2)] = PENDING_RGBA
    out = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(out, "PNG", compress_level=1)
    return out.getvalue()


class Heatmaps:
    """The map shown over each slide version of one store, cached under its version (any rewrite of the map changes
    it, `version_of`); `triage` reads the slide version's triage shown (`viewer.cases.Cases.triage`)."""

    def __init__(self, tiles: Tiles, triage: Callable[[str], Awaitable[Triage | None]]) -> None:
        self._tiles = tiles
        self._triage = triage
        self._zarr = ZarrView(tiles.storage)
        self._versions: AsyncCache[str, tuple[str, str] | None] = AsyncCache(256, SIDECAR_TTL)
        self._heatmaps: AsyncCache[tuple[str, str], MapOverlay | None] = AsyncCache(8)

    async def heatmap(self, root: str) -> MapOverlay | None:
        """The map of the triage shown (`triage`: the centre's, or the station's edge map), only where that triage's
        score may be shown (`Triage.valid_score`): None until then, and for a slide no validated model covers or a
        result that was not routed (an edge map made by a model outside its use is never drawn)."""
        triage = await readable(self._triage(root))
        if not isinstance(triage, Triage) or triage.valid_score is None:
            return None
        ref = SlideRef.parse(root)
        folder = ref.key(HEATMAP) if triage.stage == EDGE else ref.centre_key(HEATMAP)
        found = await self._versions.get(folder, lambda: self._version(folder))
        if found is None:
            return None
        folder, version = found
        image = await self._tiles.image(root)

        async def load() -> MapOverlay | None:
            try:
                return await open_heatmap(self._zarr, image, folder, version)
            except FileNotFoundError:  # objects listed, metadata not yet written
                return None

        return await self._heatmaps.get((root, version), load)

    async def heatmap_tile(self, root: str, level_index: int, row: int, col: int) -> tuple[bytes, str] | None:
        heatmap = await self.heatmap(root)
        if heatmap is None:
            return None
        image = await self._tiles.image(root)
        level = image.level(level_index)
        if not (0 <= row < level.rows and 0 <= col < level.columns):
            raise TileNotFoundError(f"no tile ({row}, {col}) in level {level_index}")
        return await asyncio.to_thread(render_tile, heatmap, image, level, row, col), heatmap.version

    async def _version(self, folder: str) -> tuple[str, str] | None:
        """(folder, version) of the map in `folder`; None while it holds none."""
        try:
            objects = await self._tiles.storage.list(folder)
        except ObjectNotFoundError:
            return None
        return (folder, version_of(objects)) if objects else None
