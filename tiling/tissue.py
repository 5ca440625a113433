"""Where the tissue is: a boolean mask from a low-resolution view, so background is never sent at full resolution.

Bright-field (H&E, IHC): tissue is coloured or dark against bright glass. Otsu on saturation alone segments only
pen marks on some slides, so we combine saturation with optical density and drop near-grey dark blobs (pen, dirt)
only when they are tiny. Dark-field (fluorescence, e.g. DAPI NDPI): tissue is where glowing nuclei are dense on the dark background.
Faint signal (sparse dim points) averages away in the overview, so on dark-field slides the mask only orders the
work: a full-resolution chunk it calls background is omitted only where its own pixels are background (`holds_signal`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from slides import Slide

# work on a view of about this many pixels on its long side: enough for 1 mm structures, cheap to read
MASK_SIDE = 1024
FIELD_SIDE = 256  # the view that decides bright- or dark-field without a thumbnail: a median needs few pixels
GLASS, DARK = 255, 0  # what background reads as: bright-field glass, a dark-field (fluorescence) background
# dark-field: a pixel is signal where a channel reads more than this above DARK. The DAPI sample's background chunks
# (a median of 2-4 with JPEG noise) peak at 14 at level 0, and the dimmest structures worth keeping (sparse points
# the overview misses) read 20 and more: 16 omits the dark glass and keeps those. A brighter background only costs
# bytes (its chunks are written), never signal
SIGNAL_ABOVE_DARK = 16


@dataclass(frozen=True)
class TissueMask:
    """`mask[y, x]` is True where tissue is; one mask pixel covers `downsample` level-0 pixels a side.
    `hematoxylin`: the view's `hematoxylin_density`, bright-field slides only (what orders the send before any model
    has looked: `hematoxylin_priority`)."""

    mask: np.ndarray
    downsample: float
    darkfield: bool
    hematoxylin: np.ndarray | None = None

    @property
    def fraction(self) -> float:
        return float(self.mask.mean())

    def any_in(self, x0: float, y0: float, x1: float, y1: float) -> bool:
        """Whether any tissue lies in the level-0 box [x0, x1) x [y0, y1)."""
        return bool(self._window(x0, y0, x1, y1).any())

    def hematoxylin_priority(self, ceiling: float) -> Callable[[float, float, float, float], float] | None:
        """A send-order priority (`tiling.plan.PriorityMap`) from the hematoxylin: the densest tissue in a level-0
        box, as its rank among the tissue's pixels scaled into [0, `ceiling`) (a model's threshold: where a sampled
        tile scored at or above it, that tile's box goes first). Nuclei crowd where carcinoma is; `inference.order`
        ranks the hub's tiles the same way. None without a hematoxylin view or tissue."""
        from scipy import ndimage

        if self.hematoxylin is None or not self.mask.any():
            return None
        # a model tile (~112 um) is a few view pixels: the mean over 3 x 3 of them, not a single nucleus-dark pixel
        smoothed = ndimage.uniform_filter(self.hematoxylin.astype(np.float32), size=3)
        rank = np.maximum(rank_within(smoothed, self.mask, ceiling), 0.0)  # a box of glass alone ranks 0

        def priority(x0: float, y0: float, x1: float, y1: float) -> float:
            window = self._window(x0, y0, x1, y1, rank)
            return float(window.max()) if window.size else 0.0

        return priority

    def _window(self, x0: float, y0: float, x1: float, y1: float, of: np.ndarray | None = None) -> np.ndarray:
        """The part of `of` (default: the mask), an array on the mask's pixels, under a level-0 box."""
        ds = self.downsample
        return (self.mask if of is None else of)[int(y0 // ds) : max(int(-(-y1 // ds)), int(y0 // ds) + 1), int(x0 // ds) : max(int(-(-x1 // ds)), int(x0 // ds) + 1)]


def overview(slide: Slide, side: int = MASK_SIDE) -> tuple[np.ndarray, float]:
    """An RGB view of the whole slide about `side` pixels long, read from the cheapest adequate level."""
    width, height = slide.dimensions
    target = max(width, height) / side
    level = max((i for i, lv in enumerate(slide.levels) if lv.downsample <= max(target, 1.0)), default=0)
    info = slide.levels[level]
    pixels = slide.read_region((0, 0), level, (info.width, info.height))
    factor = max(1, int(target / info.downsample))
    if factor > 1:
        from PIL import Image

        reduced = Image.fromarray(pixels).reduce(factor)
        pixels = np.asarray(reduced)
    return pixels, width / pixels.shape[1]


def is_darkfield(rgb: np.ndarray) -> bool:
    """Whether an RGB view of a whole slide is dark-field (fluorescence): mostly dark. The one place that decides
    it, for tissue detection and for what background reads as (`background_value`)."""
    gray = rgb.astype(np.float32) @ np.array([0.2125, 0.7154, 0.0721], np.float32)  # skimage's rgb2gray weights
    return float(np.median(gray)) < 0.25 * 255


def slide_is_darkfield(slide: Slide) -> bool:
    """`is_darkfield` of a small view, decided before the image's metadata goes out: the scanner's thumbnail where
    there is one (a single-level slide's only level would cost a full decode, and may hold a corrupt tile that
    must fail the send later, not its planning), else the cheapest level that gives FIELD_SIDE pixels."""
    if "thumbnail" in slide.associated_images:
        return is_darkfield(slide.associated_image("thumbnail"))
    return is_darkfield(overview(slide, FIELD_SIDE)[0])


def background_value(darkfield: bool) -> int:
    """What omitted (background) chunks and pixels beyond a slide's edge read as."""
    return DARK if darkfield else GLASS


def holds_signal(pixels: np.ndarray) -> bool:
    """Whether dark-field pixels, read at full resolution, show anything but background: one pixel whose brightest
    channel reads more than SIGNAL_ABOVE_DARK over the dark value is enough (a faint point is a few pixels)."""
    return bool(pixels.max(initial=DARK) > DARK + SIGNAL_ABOVE_DARK)


def detect_tissue(slide: Slide, darkfield: bool | None = None) -> TissueMask:
    """Tissue mask of a slide (see module docstring for the method); `darkfield` when already decided."""
    pixels, downsample = overview(slide)
    mask, darkfield = tissue_mask(pixels, darkfield)
    return TissueMask(mask, downsample, darkfield, None if darkfield else hematoxylin_density(pixels))


def rank_within(values: np.ndarray, where: np.ndarray, ceiling: float) -> np.ndarray:
    """Each value's rank among those `where` is True, scaled into [0, `ceiling`) (ties share their mean rank); -1
    elsewhere. The one ranking of hematoxylin density, for the send's shards and the hub's tiles alike."""
    from scipy.stats import rankdata

    rank = np.full(values.shape, -1.0)
    count = int(where.sum())
    if count:
        rank[where] = (rankdata(values[where]) - 1) / count * ceiling
    return rank


def hematoxylin_density(rgb: np.ndarray) -> np.ndarray:
    """The hematoxylin optical density of each pixel of an RGB uint8 H&E view (`skimage.color.rgb2hed`, Ruifrok
    and Johnston's stain vectors), float32: high where nuclei crowd."""
    from skimage.color import rgb2hed

    return rgb2hed(rgb)[..., 0].astype(np.float32)


def tissue_mask(rgb: np.ndarray, darkfield: bool | None = None) -> tuple[np.ndarray, bool]:
    """(mask, darkfield) for an RGB uint8 overview image; `darkfield` None: decided from `rgb`."""
    from scipy import ndimage  # imported here: half a second that a send's first view should not wait for
    from skimage import color, filters, morphology

    gray = color.rgb2gray(rgb)
    darkfield = is_darkfield(rgb) if darkfield is None else darkfield
    if darkfield:
        signal = filters.gaussian(gray, sigma=1.5)
        glowing = signal > max(_otsu(signal), float(np.median(signal)) + 0.02)
        # stained nuclei are sparse dots: tissue is where they are dense, not only the dots themselves
        density = filters.gaussian(glowing.astype(np.float32), sigma=max(2.0, max(gray.shape) / 100))
        mask = density > 0.04
    else:
        saturation = filters.gaussian(_saturation(rgb), sigma=1.5)
        # optical density of the darkest channel: tissue absorbs, glass does not
        density = filters.gaussian(-np.log10(np.clip(rgb.min(axis=2), 1, 255) / 255.0), sigma=1.5)
        sat_threshold = max(_otsu(saturation), 0.07)
        od_threshold = max(_otsu(density), 0.08)
        mask = (saturation > sat_threshold) | (density > od_threshold)
    side = max(1, round(min(mask.shape) / 256))
    mask = ndimage.binary_closing(mask, morphology.disk(side), border_value=0) | mask
    # dust and debris: drop specks under 1/4000 of the view (a ~1 mm fragment on a 1024 px overview survives)
    mask = morphology.remove_small_objects(mask, max_size=max(16, mask.size // 4000))
    mask = morphology.remove_small_holes(mask, max_size=max(64, mask.size // 500))
    return mask, darkfield


def _saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation, (max - min) / max (0 for black), in float32: the same values as skimage's rgb2hsv at a
    fraction of its time (it computes hue and value too, in float64)."""
    high = rgb.max(axis=2).astype(np.float32)
    spread = high - rgb.min(axis=2)
    return np.divide(spread, high, out=np.zeros_like(high), where=high > 0)


def _otsu(values: np.ndarray) -> float:
    from skimage import filters

    return float(filters.threshold_otsu(values)) if np.ptp(values) > 0 else float(values.max()) + 1.0
