"""The tile grid a slide is scored on, which tiles hold tissue, and the per-tile quality measures.

Quality is measured on the very pixels the model sees (at the model's resolution), so QC costs no extra reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tiling import TissueMask

# Variance of the Laplacian of grey (0-255) over a tile's tissue pixels, at 0.5 um/px. Sharp H&E in the samples:
# 5th percentile 215 (TCGA) to 710 (CMU); the same tiles blurred by a 1 um Gaussian (a mild defocus): median
# 75-246; by 2 um: under 60. Below this a tile counts as blurry.
BLUR_THRESHOLD = 100.0
TISSUE_GREY = 220  # grey level under which a pixel is stained tissue rather than glass
MIN_TISSUE_PIXELS = 0.1  # tiles with less tissue than this are not judged for focus (glass has no edges to blur)
DARK_FIELD_GREY = 64  # tiles darker than this on average are fluorescence: the threshold above is for bright-field
PEN_TILE = 0.2  # a tile is marked when this fraction of it is marker ink
_LAPLACIAN = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)[None]
_GREY = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class TileGrid:
    """Square tiles of `tile` level-0 pixels a side over a width x height image.

    Tile (i, j) covers the level-0 box [j*tile, (j+1)*tile) x [i*tile, (i+1)*tile); the last row and column may
    reach past the image (that part reads as glass).
    """

    tile: float
    width: int
    height: int

    @property
    def shape(self) -> tuple[int, int]:
        return math.ceil(self.height / self.tile), math.ceil(self.width / self.tile)

    def coarser(self, factor: int) -> TileGrid:
        """The grid whose tile (i, j) covers tiles [factor*i, factor*(i+1)) x [factor*j, factor*(j+1)) of this one."""
        return TileGrid(self.tile * factor, self.width, self.height)


def tissue_coverage(mask: TissueMask, grid: TileGrid) -> np.ndarray:
    """Fraction of each tile (rows, cols) that the tissue mask covers.

    Tiles smaller than a mask pixel take that pixel's value.
    """
    def edges(count: int, length: int) -> np.ndarray:
        return np.minimum((np.arange(count) * grid.tile / mask.downsample).astype(int), length - 1)

    rows, cols = grid.shape
    y, x = edges(rows, mask.mask.shape[0]), edges(cols, mask.mask.shape[1])
    sums = np.add.reduceat(np.add.reduceat(mask.mask.astype(np.float64), y, axis=0), x, axis=1)
    counts = np.outer(np.diff(np.append(y, mask.mask.shape[0])), np.diff(np.append(x, mask.mask.shape[1])))
    return sums / np.maximum(counts, 1)


def focus(tiles: np.ndarray) -> np.ndarray:
    """Per tile: mean squared Laplacian of grey over tissue pixels; NaN where there is too little tissue to judge
    or the tile is dark-field."""
    grey = tiles.astype(np.float32) @ _GREY
    laplacian = ndimage.convolve(grey, _LAPLACIAN, mode="nearest")
    tissue = grey < TISSUE_GREY
    count = tissue.sum(axis=(1, 2))
    energy = (laplacian**2 * tissue).sum(axis=(1, 2)) / np.maximum(count, 1)
    judged = (count >= MIN_TISSUE_PIXELS * grey[0].size) & (grey.mean(axis=(1, 2)) >= DARK_FIELD_GREY)
    return np.where(judged, energy, np.nan).astype(np.float32)


def pen_ink(tiles: np.ndarray) -> np.ndarray:
    """Per tile: fraction of pixels in green marker ink, on a 1-in-4 subsample (cheap).

    Green is the usual marker colour and no common stain makes it; blue and black ink are left alone because
    Giemsa-like blue stains and pigment look the same to a colour rule (they flagged 76% of a blue-stained sample).
    """
    rgb = tiles[:, ::4, ::4].astype(np.int16)
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return ((green - red > 25) & (green - blue > 10)).mean(axis=(1, 2)).astype(np.float32)


def spread_sample(tiles: np.ndarray, count: int) -> np.ndarray:
    """`count` of the set `tiles` (all of them when there are no more), spread evenly over them: those on a lattice of
    every `step`-th row and column (the widest lattice still holding `count` of them), thinned evenly to `count`.

    A lattice rather than a random draw: a random sample of a few dozen tiles clusters and misses whole fragments, and
    the map of a sample should look at every part of the tissue."""
    total = int(tiles.sum())
    if total <= count:
        return tiles.copy()
    step = max(1, math.isqrt(total // count))
    while True:
        lattice = np.zeros_like(tiles)
        lattice[step // 2 :: step, step // 2 :: step] = True
        chosen = np.argwhere(tiles & lattice)
        if len(chosen) >= count:
            break
        step -= 1  # the tissue is not square: a finer lattice; at step 1 it holds every tile
    picked = chosen[np.linspace(0, len(chosen) - 1, count).round().astype(int)]
    sample = np.zeros_like(tiles)
    sample[tuple(picked.T)] = True
    return sample
