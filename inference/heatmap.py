"""A slide's triage heatmap: per-tile scores on the model's grid, the summary a pathologist reads first, and the
objects the viewer opens (`{case}/heatmap.zarr`, `{case}/triage.json`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import zarr
from scipy import ndimage

from caseformat.errors import DocumentError
from caseformat.layout import ANALYZE, EDGE, HEATMAP, TILE_STATE, TRIAGE
from caseformat.results import Routed, Triage
from inference.model import ModelSpec
from inference.scoring import TileResults
from inference.tiles import BLUR_THRESHOLD, PEN_TILE, TileGrid
from objectstore.location import Location

TOP_TILES = 5  # the slide score is the mean of this many best tile scores: one stray tile cannot raise it alone
TOP_REGIONS = 5


@dataclass
class Heatmap:
    """Per-tile results of one slide (NaN = not scored yet) and what they mean.

    `tissue` marks the tiles that are analysed at all; `measured` those the model saw at full magnification
    (in coarse-to-fine mode the others carry the score of the coarse tile that covers them).
    """

    grid: TileGrid
    tissue: np.ndarray
    spec: ModelSpec
    mpp: float
    mpp_assumed: bool
    source: str
    score: np.ndarray = field(init=False)
    measured: np.ndarray = field(init=False)
    focus: np.ndarray = field(init=False)
    pen: np.ndarray = field(init=False)
    stage: str = ANALYZE
    coarse_tiles: int = 0
    complete: bool = False

    def __post_init__(self) -> None:
        shape = self.grid.shape
        self.score = np.full(shape, np.nan, np.float32)
        self.focus = np.full(shape, np.nan, np.float32)
        self.pen = np.full(shape, np.nan, np.float32)
        self.measured = np.zeros(shape, bool)

    def add(self, result: TileResults) -> None:
        """Results of tiles scored at the model's own resolution."""
        rows, cols = result.tiles[:, 0], result.tiles[:, 1]
        self.score[rows, cols] = result.score
        self.focus[rows, cols] = result.focus
        self.pen[rows, cols] = result.pen
        self.measured[rows, cols] = True

    def add_coarse(self, result: TileResults, factor: int) -> None:
        """Results of coarse tiles (`factor` tiles a side): each fills the tissue tiles under it not yet measured."""
        self.coarse_tiles += len(result.tiles)
        for (i, j), value in zip(result.tiles, result.score):
            rows, cols = slice(i * factor, (i + 1) * factor), slice(j * factor, (j + 1) * factor)
            fill = self.tissue[rows, cols] & ~self.measured[rows, cols]
            self.score[rows, cols][fill] = value

    @property
    def scored(self) -> np.ndarray:
        return self.tissue & ~np.isnan(self.score)

    def image(self) -> np.ndarray:
        """uint8 (rows, cols): score x 255, 0 on background and where nothing is scored yet."""
        return np.where(self.scored, np.round(np.nan_to_num(self.score) * 255), 0).astype(np.uint8)

    @property
    def tile_mm2(self) -> float:
        return (self.grid.tile * self.mpp / 1000) ** 2

    def summary(self, threshold: float) -> dict[str, Any]:
        scored = self.scored
        values = self.score[scored]
        summary: dict[str, Any] = {
            "max": float(values.max()) if values.size else None,
            "mean": float(values.mean()) if values.size else None,
            "tiles_scored": int(scored.sum()),
            "tissue_tiles": int(self.tissue.sum()),
            "tiles_measured": int((self.measured & self.tissue).sum()),
            "coarse_tiles": self.coarse_tiles,
            "area_above_threshold_mm2": round(float((values >= threshold).sum()) * self.tile_mm2, 6),
            "threshold": threshold,
            "top_regions": self.top_regions(threshold),
            "tile_level0_px": self.grid.tile,
            "mpp": self.mpp,
            "mpp_assumed": self.mpp_assumed,
            "qc": self.qc(),
        }
        if self.mpp_assumed:
            summary["note"] = f"the slide records no resolution: assumed the model's {self.mpp} um/px"
        if self.spec.sha256 is not None:
            summary["model_sha256"] = self.spec.sha256
        return summary

    def triage_score(self) -> float | None:
        """Mean of the TOP_TILES highest tile scores (fewer if fewer are scored)."""
        values = np.sort(self.score[self.scored])
        return float(values[-TOP_TILES:].mean()) if values.size else None

    def top_regions(self, threshold: float) -> list[dict[str, float]]:
        """Connected groups of tiles at or above `threshold`, hottest first, as level-0 boxes."""
        hot = self.scored & (np.nan_to_num(self.score) >= threshold)
        labels, count = ndimage.label(hot)
        if not count:
            return []
        peaks = ndimage.maximum(np.nan_to_num(self.score), labels, index=np.arange(1, count + 1))
        regions = []
        for peak, box in sorted(zip(peaks, ndimage.find_objects(labels)), key=lambda pair: -pair[0])[:TOP_REGIONS]:
            x0, y0 = box[1].start * self.grid.tile, box[0].start * self.grid.tile
            x1, y1 = min(box[1].stop * self.grid.tile, self.grid.width), min(box[0].stop * self.grid.tile, self.grid.height)
            regions.append({"x": round(x0), "y": round(y0), "width": round(x1 - x0), "height": round(y1 - y0), "score": float(peak)})
        return regions

    def qc(self) -> dict[str, Any]:
        """Focus and pen marks over the tissue tiles seen at full magnification."""
        judged = self.measured & self.tissue & ~np.isnan(self.focus)
        values = self.focus[judged]
        pen = self.pen[self.measured & self.tissue]
        return {
            "focus_tiles": int(judged.sum()),
            "blur_fraction": round(float((values < BLUR_THRESHOLD).mean()), 4) if values.size else None,
            "blur_threshold": BLUR_THRESHOLD,
            "focus_median": round(float(np.median(values)), 1) if values.size else None,
            "pen_fraction": round(float((pen >= PEN_TILE).mean()), 4) if pen.size else None,
        }

    def triage(self, threshold: float) -> Triage:
        """What triage.json says."""
        return Triage(self.source, self.triage_score(), self.spec.name, self.stage, self.complete, self.summary(threshold),
                      f"mean of the top {TOP_TILES} tile scores")


def read_triage(case: Location) -> Triage | None:
    """The triage.json beside `case`; None when there is none or it is unreadable (a result to be replaced, never
    one to continue from)."""
    data = case.read_bytes(TRIAGE)
    try:
        return None if data is None else Triage.read(data, TRIAGE)
    except DocumentError:
        return None


def priority_from_heatmap(heatmap: Heatmap) -> Callable[[float, float, float, float], float]:
    """A send-order priority for `tiling.plan_pyramid(..., priority=...)`: the hottest tile score in a level-0 box."""
    values = np.where(heatmap.scored, np.nan_to_num(heatmap.score), 0.0)
    tile = heatmap.grid.tile

    def priority(x0: float, y0: float, x1: float, y1: float) -> float:
        i0, j0 = int(y0 // tile), int(x0 // tile)
        window = values[i0 : max(math.ceil(y1 / tile), i0 + 1), j0 : max(math.ceil(x1 / tile), j0 + 1)]
        return float(window.max()) if window.size else 0.0

    return priority


def write_results(heatmap: Heatmap, case: Location, threshold: float, scale0: float | None, routed: Routed | None = None,
                  about: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Write `{case}/heatmap.zarr` then `{case}/triage.json` (so a complete triage never points at older data), the
    latter in one PUT with what the score was held to (`routed`, `inference.routing`) and `about` in its summary (what
    the model detects, its validation record): a reader never sees the score without them.

    `scale0` is the image's level-0 pixel size in micrometres (None: the image is in pixel units, as tiling writes
    images of slides without a recorded resolution), so the heatmap overlays the image in the same coordinates.
    An edge result never replaces another stage's (a late edge triage must not undo the hub's map): it is then not
    written, and None is returned. The check is a read before the write, not atomic (S3 has no compare-and-swap);
    the window is one PUT wide.
    """
    if heatmap.stage == EDGE and (published := read_triage(case)) is not None and published.stage != EDGE:
        return None
    triage = heatmap.triage(threshold)
    triage = replace(triage, routed=routed, summary={**triage.summary, **(about or {})})
    _write_heatmap(heatmap, case.child(HEATMAP), scale0, triage.summary)
    case.write_bytes(TRIAGE, triage.to_json())
    return triage.to_dict()


def _placement(tile: float, scale0: float | None) -> tuple[float, float]:
    """(scale, translation) of the map on both spatial axes, in the image's units, so each map pixel sits on the
    level-0 box of `tile` pixels it scores.

    NGFF puts a pixel's centre at index x scale + translation. tiling writes level 0 with scale `scale0` and no
    translation, so its pixel k is centred at k x scale0 and the box [j tile, (j + 1) tile) of level-0 pixels spans
    [(j tile - 1/2) scale0, ((j + 1) tile - 1/2) scale0): centred at j tile scale0 + (tile - 1) scale0 / 2. Without
    the translation a reader draws the map half a tile up and left of its tissue.
    """
    pixel = scale0 or 1.0
    return tile * pixel, (tile - 1) * pixel / 2


def _write_heatmap(heatmap: Heatmap, location: Location, scale0: float | None, summary: dict[str, Any]) -> None:
    side, offset = _placement(heatmap.grid.tile, scale0)
    unit = {"unit": "micrometer"} if scale0 else {}
    score_names = [heatmap.spec.class_names[i] for i in heatmap.spec.score_classes]
    attributes = {
        "ome": {
            "version": "0.5",
            "multiscales": [
                {
                    "name": "triage heatmap",
                    "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}],
                    "datasets": [{"path": "0", "coordinateTransformations": [
                        {"type": "scale", "scale": [1.0, side, side]}, {"type": "translation", "translation": [0.0, offset, offset]}]}],
                    # NGFF 0.5 asks how the levels were made: one level, one pixel per scored tile
                    "type": "tile-score",
                    "metadata": {"description": "one pixel per model tile of tile_level0_px level-0 pixels: its score"},
                }
            ],
            "omero": {
                "channels": [{"label": " + ".join(score_names), "color": "FF0000", "window": {"start": 0, "end": 255, "min": 0, "max": 255}, "active": True}],
                "rdefs": {"model": "color"},
            },
        },
        "slidestream": {
            "heatmap": {
                "model": heatmap.spec.name,
                "class_names": score_names,
                "value": "probability x 255; 0 = background or not scored yet",
                "tile_level0_px": heatmap.grid.tile,
                "tiles_scored": summary["tiles_scored"],
                "tissue_tiles": summary["tissue_tiles"],
                "stage": heatmap.stage,
                "complete": heatmap.complete,
            }
        },
    }
    image = heatmap.image()[None]
    store = location.zarr_store(read_only=False)
    try:
        group = zarr.open_group(store, mode="r+")
        array = group["0"]
        if array.shape != image.shape:
            raise KeyError("shape changed")
    except (FileNotFoundError, KeyError, zarr.errors.NodeNotFoundError):
        group = zarr.create_group(store, zarr_format=3, overwrite=True)
        array = group.create_array("0", shape=image.shape, dtype="uint8", chunks=image.shape, fill_value=0, dimension_names=["c", "y", "x"])
    array[:] = image
    state = np.stack([heatmap.score, heatmap.focus, heatmap.pen, heatmap.measured.astype(np.float32)])
    if TILE_STATE not in group or group[TILE_STATE].shape != state.shape:
        group.create_array(TILE_STATE, shape=state.shape, dtype="float32", chunks=state.shape, fill_value=np.nan,
                           overwrite=True)
    group[TILE_STATE][:] = state
    group.attrs.put(attributes)


def load_tile_state(heatmap: Heatmap, location: Location) -> bool:
    """Fill a freshly planned `heatmap` with the per-tile results published at `location` (a heatmap.zarr) by a
    run on the same grid; False (and `heatmap` untouched) when there are none that fit."""
    try:
        group = zarr.open_group(location.zarr_store(), mode="r")
        array = group[TILE_STATE]
        published = group.attrs.asdict()["slidestream"]["heatmap"]
    except (FileNotFoundError, KeyError, TypeError, zarr.errors.NodeNotFoundError):
        return False
    if array.shape != (4, *heatmap.grid.shape) or published.get("tile_level0_px") != heatmap.grid.tile:
        return False  # checked before the read: a declared shape sizes nothing until it is the grid's
    state = np.asarray(array[:])
    heatmap.score[:], heatmap.focus[:], heatmap.pen[:] = state[0], state[1], state[2]
    heatmap.measured[:] = state[3] == 1
    return True
