"""The macro (whole-glass) image, de-identified: what the pathologist needs of it, without the label.

A scanner scans only the area its tissue finder chose; the macro photographs the whole glass, so a pathologist sees
tissue the scan left out. But it photographs the paper label too (patient name, accession number, barcode), so it
leaves the hospital only with the label's end of the glass blanked to one uniform grey, and the label image never.

Where the label is. A slide is ~75 x 25 mm with the label stuck on one end (20-25 mm of it), and scanners photograph
the glass lengthwise, so the label is a block at one end of the macro's long side. Two vendors' macros show what it
looks like there: opaque paper photographed against the backlight is a dark block (Aperio's CMU-1), a printed label
is text and barcode edges (Hamamatsu), both grey. Glass is bright and smooth, stained tissue coloured. So each column
across the long side is scored by the share of its pixels that are grey and dark or on a strong edge; the label's end
is the end whose first fifth scores clearly higher (END_RATIO times the other's, END_LEAST more), and the label reaches to the
column that best splits the profile into a high part (the label) and a low part (the glass). Robustness before
beauty: the blanked band is at least the label image's own aspect (its short side across the glass, where the slide
has a label image) and at least a fifth of the long side, at most LABEL_MOST of it, and MARGIN more than found; where
neither end is clearly the label's, both ends are blanked. Tissue never lies under a label, so blanking a little glass
too costs the pathologist nothing.

Where the scan area lies on the macro (for the check that tissue was missed): Aperio draws it as a green outline on
the macro, which is found as such; otherwise the slide's thumbnail is matched into the macro over a range of scales
(normalised cross-correlation of darkness), and taken only where the match is good. Vendor offsets (Aperio's Left/Top
in mm, Hamamatsu's offsets from the slide's centre in nm) would need the macro's own pixel size, which no format
records, so they are not used. None where neither works: the check then says it could not be made.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slides.slide import Slide

BLANK = 128  # the label's band reads as this grey: visibly blanked, never mistaken for glass or tissue
LABEL_LEAST, LABEL_MOST = 0.2, 0.45  # of the long side: the band a label may take (a 75 mm slide's 20-25 mm label is ~0.3)
MARGIN = 0.03  # of the long side, added to the label found: its edge and its shadow
END_BAND = 0.2  # of the long side: how much of each end decides which end holds the label
END_RATIO, END_LEAST = 1.5, 0.03  # the label's end scores this many times the other's, and this much more
DARK, EDGE = 60, 20  # grey level under which a pixel is dark; Sobel magnitude (grey levels per pixel) of an edge
GREY_SATURATION = 0.2  # print and paper are grey (saturation under this around them); H&E is not
MATCH_LEAST = 0.7  # normalised cross-correlation a thumbnail's match must reach to say where the scan area is
MATCH_SIDE = 400  # px: the macro's long side when the thumbnail is matched into it
OUTLINE_SHARE = 0.5  # of the longest green line: how long a line of the scanner's outline is at least


@dataclass(frozen=True)
class Box:
    """A rectangle of the macro's pixels: columns [x0, x1), rows [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0


@dataclass(frozen=True)
class Macro:
    """The de-identified macro: RGB pixels with the label blanked (`blanked`: the band or bands made BLANK), and where
    the scan area lies on it (None where it could not be told)."""

    pixels: np.ndarray
    blanked: tuple[Box, ...]
    scan_area: Box | None


def deidentified_macro(slide: Slide) -> Macro | None:
    """The slide's macro image with its label blanked, None for a slide without one. Reads the macro and the label
    image's size through the slide's reader whatever `keep_phi` says; neither leaves this function unblanked."""
    macro, label_size = _identifying_images(slide)
    if macro is None:
        return None
    pixels, blanked = blank_label(macro, label_size)
    thumbnail = slide.associated_image("thumbnail") if "thumbnail" in slide.associated_images else None
    return Macro(pixels, blanked, scan_area(macro, pixels, blanked, thumbnail))


def blank_label(macro: np.ndarray, label_size: tuple[int, int] | None = None) -> tuple[np.ndarray, tuple[Box, ...]]:
    """A copy of `macro` (RGB) with the label's end made BLANK, and the band(s) blanked (see the module's docstring);
    `label_size`: the label image's (width, height), where the slide has one."""
    height, width = macro.shape[:2]
    across = width >= height  # the long side runs across the image (as every scanner's macro we know)
    length, short = (width, height) if across else (height, width)
    profile = _label_profile(macro).mean(axis=0 if across else 1)
    least = LABEL_LEAST
    if label_size is not None and min(label_size) > 0:
        least = max(least, short * min(label_size) / max(label_size) / length)  # the label's shape, across the glass
    band = max(1, int(END_BAND * length))
    first, last = float(profile[:band].mean()), float(profile[-band:].mean())
    ends: list[bool]  # whether from the far end
    if first >= END_RATIO * last and first - last >= END_LEAST:
        ends = [False]
    elif last >= END_RATIO * first and last - first >= END_LEAST:
        ends = [True]
    else:
        ends = [False, True]  # no end is clearly the label's: blank both
    out = macro.copy()
    boxes = []
    for from_end in ends:
        reach = min(max(_step(profile[::-1] if from_end else profile, least), least), LABEL_MOST) + MARGIN
        extent = min(length, int(np.ceil(reach * length)))
        start, stop = (length - extent, length) if from_end else (0, extent)
        box = Box(start, 0, stop, height) if across else Box(0, start, width, stop)
        out[box.y0 : box.y1, box.x0 : box.x1] = BLANK
        boxes.append(box)
    return out, tuple(boxes)


def scan_area(macro: np.ndarray, deidentified: np.ndarray, blanked: tuple[Box, ...], thumbnail: np.ndarray | None) -> Box | None:
    """Where on the macro the scanner scanned: its green outline (looked for on the `macro` as photographed: the
    label's band may cover a side of it), else the thumbnail's best match on the `deidentified` macro (see the
    module's docstring); None where neither tells."""
    outline = green_outline(macro)
    if outline is not None or thumbnail is None:
        return outline
    return match_thumbnail(deidentified, blanked, thumbnail)


def green_outline(macro: np.ndarray) -> Box | None:
    """The box a scanner drew in pure green around the scanned area (Aperio), None where there is none: the outermost
    rows and columns that hold a long green line (runs of 15 px, at least OUTLINE_SHARE of the longest),
    taken only where the four sides they make are green along nine tenths of their length."""
    from scipy import ndimage

    rgb = macro.astype(np.int16)
    green = (rgb[..., 1] > 150) & (rgb[..., 0] < 110) & (rgb[..., 2] < 110)
    run = np.ones(15, bool)  # a line's pixels lie in runs; a noisy sensor's green specks do not
    row_counts = ndimage.binary_opening(green, run[None, :]).sum(axis=1)
    col_counts = ndimage.binary_opening(green, run[:, None]).sum(axis=0)
    rows = np.flatnonzero(row_counts >= max(8, OUTLINE_SHARE * row_counts.max()))
    cols = np.flatnonzero(col_counts >= max(8, OUTLINE_SHARE * col_counts.max()))
    if len(rows) < 2 or len(cols) < 2 or rows[-1] - rows[0] < 8 or cols[-1] - cols[0] < 8:
        return None
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    inside = green[y0 : y1 + 1, x0 : x1 + 1]
    sides = (inside[:3].any(axis=0), inside[-3:].any(axis=0), inside[:, :3].any(axis=1), inside[:, -3:].any(axis=1))
    if min(float(side.mean()) for side in sides) < 0.9:
        return None
    return Box(x0 + 1, y0 + 1, x1, y1)  # inside the line


def match_thumbnail(macro: np.ndarray, blanked: tuple[Box, ...], thumbnail: np.ndarray, steps: int = 20) -> Box | None:
    """Where the thumbnail (the scanned area, small) lies on the macro: the best normalised cross-correlation of
    their darkness over `steps` scales (the scan area's height from a fifth of the macro's to all of it), on the
    macro reduced to MATCH_SIDE px (a fraction of a second); None where the best is under MATCH_LEAST."""
    from PIL import Image
    from skimage.feature import match_template

    darkness = 255 - _grey(macro)
    for box in blanked:
        darkness[box.y0 : box.y1, box.x0 : box.x1] = 0
    factor = max(1, round(max(macro.shape[:2]) / MATCH_SIDE))
    darkness = np.asarray(Image.fromarray(darkness.astype(np.uint8)).reduce(factor), np.float32)
    aspect = thumbnail.shape[1] / thumbnail.shape[0]
    template_source = Image.fromarray((255 - _grey(thumbnail)).astype(np.uint8))
    best: tuple[float, Box] | None = None
    for height in np.geomspace(darkness.shape[0] / 5, darkness.shape[0], steps):
        size = (round(height * aspect), round(height))
        if not (8 <= size[0] <= darkness.shape[1] and 8 <= size[1] <= darkness.shape[0]):
            continue
        template = np.asarray(template_source.resize(size, Image.Resampling.BILINEAR), np.float32)
        if np.ptp(template) == 0:
            return None  # a blank thumbnail matches anything
        scores = match_template(darkness, template)  # type: ignore[no-untyped-call]
        y, x = np.unravel_index(int(np.argmax(scores)), scores.shape)
        if best is None or scores[y, x] > best[0]:
            best = (float(scores[y, x]), Box(int(x) * factor, int(y) * factor, (int(x) + size[0]) * factor, (int(y) + size[1]) * factor))
    return best[1] if best is not None and best[0] >= MATCH_LEAST else None


def _identifying_images(slide: Slide) -> tuple[np.ndarray | None, tuple[int, int] | None]:
    """The raw macro (RGB) and the label image's size, read past the de-identified view (`Slide` hides both)."""
    import openslide

    reader = slide._osr
    if reader is None or "macro" not in reader.associated_images:
        return None, None
    from slides.errors import CorruptSlideError

    try:
        macro = np.asarray(reader.associated_images["macro"].convert("RGB"))
        label = reader.associated_images["label"].size if "label" in reader.associated_images else None
    except openslide.OpenSlideError as error:
        raise CorruptSlideError(f"{slide.path}: cannot read its macro image: {str(error).splitlines()[0][:200]}") from None
    return macro, label


def _label_profile(macro: np.ndarray) -> np.ndarray:
    """Per pixel: dark or on a strong edge, and grey (what a label is made of; glass is neither, stained tissue is
    coloured)."""
    from scipy import ndimage

    grey = _grey(macro)
    edges = np.hypot(ndimage.sobel(grey, 0), ndimage.sobel(grey, 1)) / 8
    high = macro[..., :3].max(axis=2).astype(np.float32)
    saturation = (high - macro[..., :3].min(axis=2)) / np.maximum(high, 1)
    achromatic = ndimage.maximum_filter(saturation, 3) < GREY_SATURATION
    return np.asarray(((grey < DARK) | (edges > EDGE)) & achromatic, bool)


def _step(profile: np.ndarray, least: float) -> float:
    """The fraction of the profile's length where it best splits into a high start and a low rest (searched from
    LABEL_LEAST to LABEL_MOST of it)."""
    length = len(profile)
    low, high = max(1, int(min(least, LABEL_MOST) * length)), max(2, int(LABEL_MOST * length))
    sums = np.cumsum(profile, dtype=np.float64)
    positions = np.arange(low, min(high, length - 1) + 1)
    if len(positions) == 0:
        return least
    before = sums[positions - 1] / positions
    after = (sums[-1] - sums[positions - 1]) / (length - positions)
    return float(positions[int(np.argmax(before - after))] / length)


def _grey(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
