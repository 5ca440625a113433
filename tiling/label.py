"""The tissue mask as an NGFF label image inside the image (`labels/tissue`), so any OME-Zarr reader, the viewer
and the hub can show or use the tissue the station found. Its large levels are built beside the shards (`produce`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tiling.ngff import image_axes, pixel_scale
from tiling.pieces import Piece, PieceKind
from tiling.plan import PyramidPlan

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
        {"path": str(level.index), "coordinateTransformations": [{"type": "scale", "scale": pixel_scale(plan, level.downsample)}]}
        for level in plan.levels
    ]
    attributes = {
        "ome": {
            "version": "0.5",
            "image-label": {"colors": [{"label-value": 1, "rgba": [0, 160, 0, 255]}], "source": {"image": "../../"}},
            "multiscales": [{"name": "tissue", "axes": image_axes(plan)[1:], "datasets": datasets, **LABEL_DOWNSCALING}],
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
