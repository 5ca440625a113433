"""Which tiles to score first, so that the hub reaches a slide's hottest region early.

Three signals, strongest first: the hub's own scores (a tile beside a hot one is likely hot: carcinoma grows in
sheets and nests), the edge map's sampled scores, and the overview's hematoxylin (nuclei crowd where carcinoma is).
The last is read from the overview the send writes first, seconds after the slide is found; it only orders work
(a rank below the model's threshold, never shown, never a score). Replayed on three 50 MB bench slides
(`bench/hub_order.py`), it puts the final map's hottest tile in the first round of 64 (the top 0.2-2.6% of tissue by
hematoxylin) where the edge map and the hub's scores alone found it after 23-76% of the tissue. The edge triage
looks there too: half its sample is the densest tissue (`edge_sample`).
"""

from __future__ import annotations

import math

import numpy as np

from inference.heatmap import Heatmap
from inference.sources import Source
from inference.tiles import TileGrid, spread_sample
from tiling.plan import COMPLETE_SIDE
from tiling.tissue import hematoxylin_density, rank_within

# overview pixels a tile side that its hematoxylin mean needs (3.5 gave the same order on the bench slides)
PRIOR_PIXELS = 8


def hottest_first(heatmap: Heatmap, priority: np.ndarray | None) -> np.ndarray:
    """Which tiles to score next, a rank per tile of the grid: a tile beside a scored one ranks as its hottest scored
    neighbour, where that beats `priority` (`strongest` of the edge map's samples and the overview's hematoxylin, -1
    where neither says anything). A best-first search from the edge's samples, the hematoxylin-dense tissue and the
    hub's own scores: the neighbours of the hottest tile found so far are the likeliest to be hot."""
    from scipy import ndimage

    known = np.where(heatmap.scored, np.nan_to_num(heatmap.score, nan=-1.0), -1.0)
    beside: np.ndarray = ndimage.maximum_filter(known, size=3, mode="constant", cval=-1.0)
    if priority is None or priority.shape != beside.shape:
        return beside
    ranked: np.ndarray = np.maximum(beside, priority)
    return ranked


def highest_ranked(todo: np.ndarray, priority: np.ndarray, limit: int) -> np.ndarray:
    """The `limit` tiles of `todo` of highest priority (in grid order among equals)."""
    tiles = np.argwhere(todo)
    tiles = tiles[np.argsort(-priority[tuple(tiles.T)], kind="stable")]
    chosen = np.zeros_like(todo)
    chosen[tuple(tiles[:limit].T)] = True
    return chosen


def edge_sample(tissue: np.ndarray, hematoxylin: np.ndarray | None, count: int) -> np.ndarray:
    """The `count` tissue tiles the edge triage scores: half spread over the tissue (`spread_sample`: every fragment
    is looked at), half the densest in `hematoxylin` (a rank per tile), none of those beside another, so several
    dense foci are looked at rather than one nest's tiles; all spread without a rank. On three 50 MB bench slides
    this sampled the final map's hottest tile each time (spread alone: never) and 5-11 tiles at or above the
    threshold instead of 1-3."""
    if hematoxylin is None or count < 2:
        return spread_sample(tissue, count)
    chosen = spread_sample(tissue, count - count // 2)
    beside_dense = np.zeros_like(tissue)
    left = count // 2
    for flat in np.argsort(-np.where(tissue, hematoxylin, -np.inf), axis=None, kind="stable"):
        row, col = divmod(int(flat), tissue.shape[1])
        if left == 0 or not tissue[row, col]:
            break
        if not chosen[row, col] and not beside_dense[row, col]:
            chosen[row, col] = True
            beside_dense[max(0, row - 1) : row + 2, max(0, col - 1) : col + 2] = True
            left -= 1
    return chosen


def strongest(*priorities: np.ndarray | None) -> np.ndarray | None:
    """Tile by tile the highest of the priorities given (those on another grid are left out); None without any."""
    given = [p for p in priorities if p is not None]
    if not given:
        return None
    highest = given[0]
    for priority in given[1:]:
        if priority.shape == highest.shape:
            highest = np.maximum(highest, priority)
    return highest


def overview_level(source: Source, tile: float) -> int | None:
    """The level to read the hematoxylin from: of the stored levels the send writes whole and first (the longer side
    at most tiling's COMPLETE_SIDE), the coarsest with PRIOR_PIXELS a tile side, else the finest; None without one."""
    whole = [index for index, downsample in enumerate(source.downsamples)
             if index not in source.derived and max(source.dimensions) / downsample <= COMPLETE_SIDE + 1]  # fmt: skip
    if not whole:
        return None
    sharp = [index for index in whole if tile / source.downsamples[index] >= PRIOR_PIXELS]
    return max(sharp, key=lambda i: source.downsamples[i]) if sharp else min(whole, key=lambda i: source.downsamples[i])


def hematoxylin_rank(source: Source, grid: TileGrid, tissue: np.ndarray, level: int, ceiling: float) -> np.ndarray:
    """Each tissue tile's mean hematoxylin optical density (`tiling.tissue.hematoxylin_density`) on `level`, as its rank among
    the tissue tiles scaled into [0, `ceiling`); -1 off tissue. `ceiling` is the model's threshold, so a tile beside
    one scored at or above it outranks every rank here. Read a row of tiles at a time: memory stays one strip."""
    rows, cols = grid.shape
    step = grid.tile / source.downsamples[level]
    starts = np.minimum((np.arange(cols) * step).astype(int), max(0, math.ceil(cols * step) - 1))
    width = max(math.ceil(cols * step), int(starts[-1]) + 1)
    density = np.zeros((rows, cols), np.float64)
    for row in range(rows):
        if not tissue[row].any():
            continue
        top = int(row * step)
        strip = source.read(level, 0, top, width, max(top + 1, int((row + 1) * step)))
        hematoxylin = hematoxylin_density(strip).mean(axis=0)
        counts = np.diff(np.append(starts, width))
        density[row] = np.add.reduceat(hematoxylin, starts) / np.maximum(counts, 1)
    return rank_within(density, tissue, ceiling)
