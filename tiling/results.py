"""What leaves slidestream of one slide version besides its image: the pathologists' annotations and the AI's result,
in level-0 pixels of that version, for the writers of other tools' formats (`tiling.geojson` for QuPath,
`tiling.dicom_results` for a PACS).

Everything here was read and checked already (signed annotations verified, triage.json parsed by `Triage.read`); the
AI part is present only for a triage a pathologist may see (`Triage.valid_score`): a refused or unrouted triage
exports no score, no region and no tile.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from caseformat.documents import Annotation
from caseformat.results import Region


@dataclass(frozen=True)
class TileScores:
    """The model's score of each tile (NaN: not scored, glass), tile (i, j) covering the level-0 box
    [j tile, (j + 1) tile) x [i tile, (i + 1) tile) as `inference.tiles.TileGrid` places it."""

    tile: float  # level-0 pixels a side (not always whole: the model's spacing over the slide's)
    scores: np.ndarray  # float (rows, cols)

    @property
    def scored(self) -> int:
        return int(np.isfinite(self.scores).sum())

    def boxes(self, width: int, height: int) -> Iterator[tuple[float, float, float, float, float]]:
        """(x0, y0, x1, y1, score) of every scored tile, row by row, cut at the image's edge."""
        for row, col in zip(*np.nonzero(np.isfinite(self.scores))):
            x0, y0 = float(col * self.tile), float(row * self.tile)
            yield x0, y0, min(x0 + self.tile, width), min(y0 + self.tile, height), float(self.scores[row, col])


@dataclass(frozen=True)
class AiResult:
    """A routed, unrefused triage: the model, what a hot tile means, the slide's score, its hottest regions and the
    per-tile scores (None where the map could not be read)."""

    model: str
    detects: str
    score: float
    regions: tuple[Region, ...]
    tiles: TileScores | None


@dataclass(frozen=True)
class SlideResults:
    """One slide version's annotations (drawn on it) and AI result (None: none a pathologist may see)."""

    case: str
    slide: str
    version: str
    width: int  # level-0 pixels
    height: int
    annotations: tuple[Annotation, ...]
    ai: AiResult | None

    @property
    def label(self) -> str:
        return f"{self.case}/{self.slide}/{self.version}"


def region_corners(region: Region) -> list[tuple[float, float]]:
    """A region's box as its four corners, clockwise from the top left (level-0 pixels, y down)."""
    x0, y0, x1, y1 = region.x, region.y, region.x + region.width, region.y + region.height
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
