"""The scan checked at the hospital, within seconds: what a pathologist would reject, told to the technician at once.

Each check is a pure function over arrays that returns a `ScanCheck` (caseformat: what scan_qc.json records):
`passed` False with a line that starts "rescan advised:", True, or None with the reason it could not be made.
`check_scan` runs them all on a slide in bounded time: it reads the macro, one small overview of the scanned area
(the cheapest level that gives OVERVIEW_SIDE px) and FOCUS_TILES tissue tiles, whatever the slide's size.

- tissue missed: tissue on the macro (the whole glass) outside the scan area. Tissue is `tissue_mask`'s on the
  de-identified macro, inside the glass (the slide's edge, the holder, a noisy sensor row are never tissue on it),
  without the blanked label and the scanner's green outline. The scan area is widened by
  a tenth of its short side first (the macro's registration is coarse). Fails above MISSED_SHARE of the tissue.
- tissue cut: the overview's tissue touching its border (the scan area's edge) along more than CUT_SHARE of it.
- focus: mean squared Laplacian of grey over each sampled tile's tissue pixels at ~0.5 um/px (the measure and
  threshold of `inference.tiles.focus`, measured on the samples: sharp H&E tiles score 215 and more, a 1 um defocus
  75-246, 2 um under 60; a tile under BLUR_THRESHOLD is blurred). Fails when more than BLURRED_SHARE of the tiles
  judged are blurred. Folds and bubbles are not detected (nothing at this cost tells them from tissue reliably).
- pen marks: marker ink on the overview: green (no stain makes it), saturated blue far bluer than haematoxylin (red
  under INK_RED_OF_BLUE of blue), or near black; in specks of at least INK_SPECK px. Fails above PEN_SHARE of the area.
  Blue and black count only on slides whose tissue is not blue-stained (a Giemsa-like stain is that blue, and its
  pigment that black: a colour rule flags most of such a slide).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from caseformat.results import ScanCheck
from slides import Slide
from slides.macro import Box, Macro, deidentified_macro, green_outline

TISSUE_MISSED, TISSUE_CUT, FOCUS, PEN = "tissue-missed", "tissue-cut", "focus", "pen"
OVERVIEW_SIDE = 512
MISSED_SHARE = 0.02  # of the tissue on the glass
CUT_SHARE = 0.03  # of the scan area's edge
FOCUS_TILES, FOCUS_TILE, FOCUS_MPP = 12, 256, 0.5  # tiles sampled, their side (px) at the um/px they are judged at
BLUR_THRESHOLD = 100.0
BLURRED_SHARE = 0.25
TISSUE_GREY, MIN_TISSUE_PIXELS = 220, 0.1  # a tile is judged for focus where a tenth of it is darker than glass
PEN_SHARE = 0.002  # of the scanned area
INK_RED_OF_BLUE = 0.45
INK_SPECK = 16  # overview px
BLUE_STAINED = 0.2  # of the tissue: where this much looks like blue ink, the stain is blue and blue or black is no ink
_LAPLACIAN = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float32)
_GREY = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass(frozen=True)
class ScanReport:
    """What `check_scan` found: the checks, and the de-identified macro (None for a slide without one)."""

    checks: tuple[ScanCheck, ...]
    macro: Macro | None

    @property
    def advice(self) -> list[str]:
        return [check.line for check in self.checks if check.passed is False]


def check_scan(slide: Slide) -> ScanReport:
    """Every check of a slide's scan (see the module's docstring), in a few seconds whatever its size."""
    from tiling.tissue import is_darkfield, overview, tissue_mask

    macro = deidentified_macro(slide)
    pixels, downsample = overview(slide, OVERVIEW_SIDE)
    darkfield = is_darkfield(pixels)
    mask, _ = tissue_mask(pixels, darkfield)
    checks = [tissue_missed(macro), tissue_cut(mask)]
    if darkfield:  # the thresholds are bright-field's; a fluorescence slide is neither blurred nor inked by them
        checks += [ScanCheck(FOCUS, None, "focus not checked on a dark-field slide"), ScanCheck(PEN, None, "pen marks not checked on a dark-field slide")]
    else:
        checks += [focus_check(focus_tiles(slide, mask, downsample)), pen_check(pixels)]
    return ScanReport(tuple(checks), macro)


def tissue_missed(macro: Macro | None) -> ScanCheck:
    """Tissue on the glass outside the scan area (see the module's docstring)."""
    if macro is None:
        return ScanCheck(TISSUE_MISSED, None, "tissue outside the scanned area not checked: the slide has no macro image")
    if macro.scan_area is None:
        return ScanCheck(TISSUE_MISSED, None, "tissue outside the scanned area not checked: the scanned area is not found on the macro image")
    on_glass = glass_tissue(macro.pixels, macro.blanked)
    total = int(on_glass.sum())
    if total == 0:
        return ScanCheck(TISSUE_MISSED, None, "tissue outside the scanned area not checked: no tissue seen on the macro image")
    area = macro.scan_area
    pad = max(2, min(area.width, area.height) // 10)
    inside = np.zeros_like(on_glass)
    inside[max(0, area.y0 - pad) : area.y1 + pad, max(0, area.x0 - pad) : area.x1 + pad] = True
    share = float((on_glass & ~inside).sum()) / total
    if share > MISSED_SHARE:
        return ScanCheck(TISSUE_MISSED, False, f"rescan advised: tissue outside the scanned area (about {_percent(share)} of the tissue on the glass)", share)
    return ScanCheck(TISSUE_MISSED, True, "the tissue on the glass lies in the scanned area", share)


def glass_tissue(macro: np.ndarray, blanked: tuple[Box, ...]) -> np.ndarray:
    """Tissue on the glass of a de-identified macro: `tissue_mask`'s inside the glass (the largest bright, grey region
    with what it encloses), without the blanked label and the scanner's green outline."""
    from scipy import ndimage

    from tiling.tissue import tissue_mask

    grey = macro[..., :3].astype(np.float32) @ _GREY
    high = macro.max(axis=2).astype(np.float32)
    saturation = np.divide(high - macro.min(axis=2), high, out=np.zeros_like(high), where=high > 0)
    outside = np.zeros(grey.shape, bool)
    for box in blanked:
        outside[max(0, box.y0 - 2) : box.y1 + 2, max(0, box.x0 - 2) : box.x1 + 2] = True
    if outside.all():
        return ~outside
    rgb = macro.astype(np.int16)
    outline = ndimage.binary_dilation((rgb[..., 1] > 150) & (rgb[..., 0] < 110) & (rgb[..., 2] < 110), iterations=3)
    if green_outline(macro) is None:
        outline[:] = False
    glass_grey = float(np.percentile(grey[~outside], 90))  # glass is the brightest of the macro (the holder is darker)
    glassy = ((np.abs(grey - glass_grey) < 25) & (saturation < 0.1) | outline) & ~outside  # the outline lies on glass
    labels, count = ndimage.label(ndimage.binary_opening(glassy, np.ones((5, 5), bool)))  # not a noisy sensor's specks
    if count == 0:
        return np.zeros_like(glassy)
    glass = ndimage.binary_fill_holes(labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1)
    plain = macro.copy()
    plain[~glass] = np.uint8(round(glass_grey))  # nothing but the glass decides the mask's thresholds
    mask, _ = tissue_mask(plain, darkfield=False)
    return np.asarray(mask & glass & ~outline, bool)


def tissue_cut(mask: np.ndarray) -> ScanCheck:
    """Tissue touching the scan area's edge, from the scanned area's tissue mask."""
    if not mask.any():
        return ScanCheck(TISSUE_CUT, None, "tissue cut at the scan area's edge not checked: no tissue found")
    sides = {"top": mask[0], "bottom": mask[-1], "left": mask[:, 0], "right": mask[:, -1]}
    share = float(sum(int(side.sum()) for side in sides.values())) / sum(len(side) for side in sides.values())
    if share > CUT_SHARE:
        touching = ", ".join(name for name, side in sides.items() if side.mean() > CUT_SHARE)
        return ScanCheck(TISSUE_CUT, False, f"rescan advised: tissue cut at the scan area's edge ({touching or 'several sides'})", share)
    return ScanCheck(TISSUE_CUT, True, "no tissue cut at the scan area's edge", share)


def focus_check(tiles: np.ndarray) -> ScanCheck:
    """Focus over the tissue from sampled tiles (n, h, w, 3) at ~FOCUS_MPP um/px (see the module's docstring)."""
    scores = [score for score in map(focus_score, tiles) if score is not None]
    if len(scores) < 3:
        return ScanCheck(FOCUS, None, f"focus not checked: {len(scores)} tissue tiles to judge")
    blurred = sum(score < BLUR_THRESHOLD for score in scores)
    share = blurred / len(scores)
    if share > BLURRED_SHARE:
        return ScanCheck(FOCUS, False, f"rescan advised: out of focus over {_percent(share)} of the tissue sampled "
                                       f"({blurred} of {len(scores)} tiles)", share)  # fmt: skip
    return ScanCheck(FOCUS, True, f"in focus over the tissue ({len(scores) - blurred} of {len(scores)} tiles sharp)", share)


def focus_score(tile: np.ndarray) -> float | None:
    """Mean squared Laplacian of grey over a tile's tissue pixels; None where too little of it is tissue."""
    from scipy import ndimage

    grey = tile[..., :3].astype(np.float32) @ _GREY
    tissue = grey < TISSUE_GREY
    if tissue.sum() < MIN_TISSUE_PIXELS * grey.size:
        return None
    laplacian = ndimage.convolve(grey, _LAPLACIAN, mode="nearest")
    return float((laplacian[tissue] ** 2).mean())


def focus_tiles(slide: Slide, mask: np.ndarray, downsample: float, count: int = FOCUS_TILES) -> np.ndarray:
    """`count` tiles of FOCUS_TILE px at ~FOCUS_MPP um/px centred on tissue pixels of the overview's `mask` (one
    overview pixel covers `downsample` level-0 px), spread evenly over the tissue; read at level 0."""
    from PIL import Image

    mpp = slide.mpp[0] if slide.mpp else FOCUS_MPP
    factor = max(1, round(FOCUS_MPP / mpp))
    side = FOCUS_TILE * factor
    places = np.argwhere(mask)
    if len(places) == 0:
        return np.zeros((0, FOCUS_TILE, FOCUS_TILE, 3), np.uint8)
    chosen = places[np.unique(np.linspace(0, len(places) - 1, min(count, len(places))).round().astype(int))]
    tiles = []
    for y, x in chosen:
        left, top = int((x + 0.5) * downsample) - side // 2, int((y + 0.5) * downsample) - side // 2
        pixels = slide.read_region((max(0, left), max(0, top)), 0, (side, side))
        tiles.append(np.asarray(Image.fromarray(pixels).reduce(factor)) if factor > 1 else pixels)
    return np.stack(tiles)


def pen_check(overview: np.ndarray) -> ScanCheck:
    """Marker ink on an overview of the scanned area (see the module's docstring)."""
    share = float(pen_ink(overview).mean())
    if share > PEN_SHARE:
        return ScanCheck(PEN, False, f"rescan advised: pen marks on the scanned area (about {_percent(share)} of it)", share)
    return ScanCheck(PEN, True, "no pen marks on the scanned area", share)


def pen_ink(rgb: np.ndarray) -> np.ndarray:
    """Where marker ink is: green, saturated blue or near black, in specks of at least INK_SPECK px."""
    from skimage import morphology

    red, green, blue = (rgb[..., channel].astype(np.int16) for channel in range(3))
    ink = (green - red > 25) & (green - blue > 10)
    blue_ink = (blue > 100) & (red < INK_RED_OF_BLUE * blue) & (blue - green > 40)
    tissue = rgb[..., :3].min(axis=2) < TISSUE_GREY
    if blue_ink.sum() < BLUE_STAINED * max(1, tissue.sum()):  # a blue stain (Giemsa, toluidine) is not ink
        ink |= blue_ink | (rgb[..., :3].max(axis=2) < 50)
    return np.asarray(morphology.remove_small_objects(ink, max_size=INK_SPECK - 1), bool)


def _percent(share: float) -> str:
    return f"{share * 100:.0f}%" if share >= 0.01 else "under 1%"
