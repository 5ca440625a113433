"""Which model may score a slide, one rule for every place a score is made: the station's edge triage, the hub and
`analyze` all route a slide here before any model sees its tiles.

A score is made only by a model package whose intended use covers the specimen site (the case's registration), the
stain seen on the slide's overview (`detect_stain`, never assumed) and the slide's um/px. The centre's table is an
ordered list of packages (`--model`, repeatable, or `[hub] models` in the config); the first whose intended use
covers the slide scores it. Where none does, the slide gets QC and the line "no validated AI for <site/stain>":
never a number from a model outside its use. A routed triage records what it was held to (`caseformat.results.Routed`),
and readers show a score only from such a triage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from caseformat.results import Routed
from inference.packages import covers

if TYPE_CHECKING:
    import numpy as np

    from inference.packages import ModelPackage

IHC_BROWN = 0.05  # fraction of tissue pixels in DAB brown that makes a slide IHC (H&E samples: 0.000)
HE_PINK = 0.5  # fraction of tissue pixels pink to purple that makes a slide H&E (H&E samples: 0.95-1.0)
MIN_STAIN_PIXELS = 100  # tissue pixels of the overview below which its stain is not told


@dataclass(frozen=True)
class Route:
    """The routing of one slide: the package that may score it, or why none may (`refused`)."""

    package: ModelPackage | None
    site: str | None
    stain: str | None
    mpp: float | None
    refused: str | None

    @property
    def routed(self) -> Routed | None:
        """What the score was held to, for triage.json; None when refused."""
        if self.refused is not None or self.site is None or self.stain is None or self.mpp is None:
            return None
        return Routed(self.site, self.stain, self.mpp)

    def about(self) -> dict[str, str]:
        """What triage.json says beside the score (the viewer's legend and its validation line): what the model
        detects, and its validation record in one line where it has one. Empty when refused."""
        from inference.validation import read_record, record_lines

        if self.package is None:
            return {}
        about = {"detects": self.package.detects}
        if (record := read_record(self.package)) is not None:
            rows = dict(record_lines(record))
            about["validation"] = (f"ROC AUC {rows['ROC AUC']}; sensitivity {rows['sensitivity']}; specificity "
                                   f"{rows['specificity']}; tiles {rows['tiles']}; data: {rows['data']}")[:500]
        return about


@dataclass(frozen=True)
class Routes:
    """The centre's routing table: model packages in the order they are tried."""

    packages: tuple[ModelPackage, ...]

    def choose(self, site: str | None, stain: str | None, mpp: float | None) -> Route:
        """The first package whose intended use covers the slide; else the refusal of the package closest to it (one
        made for the site, so the line names the stain or resolution that failed), else of the first."""
        refusals = []
        for package in self.packages:
            refused = covers(package, site, stain, mpp)
            if refused is None:
                return Route(package, site, stain, mpp, None)
            refusals.append((site is not None and site.strip().lower() in package.sites, refused))
        closest = next((refused for for_site, refused in refusals if for_site), refusals[0][1] if refusals else "no validated AI: no model")
        return Route(None, site, stain, mpp, closest)


def detect_stain(rgb: np.ndarray) -> str | None:
    """The stain of a slide's overview (uint8 RGB), from colour alone: "fluorescence" when the view is mostly dark
    (`tiling.tissue.is_darkfield`: median grey under a quarter of white); over the bright-field tissue mask, "IHC" when
    at least IHC_BROWN of the tissue pixels are DAB brown (red over green over blue, red 40 levels above blue), "H&E"
    when at least HE_PINK are pink to purple (green the lowest channel: eosin and haematoxylin both absorb green
    most); None (not recognised: no model is validated for it) otherwise, or with too little tissue to tell.

    A hue rule, not skimage's `rgb2hed`: on the H&E samples its DAB channel reads as high as on DAB-stained tissue
    (median optical density 0.04 on CMU-1's H&E, 0.03 on the same tissue recoloured to DAB), while brown pixels are
    0.0% of H&E tissue and 13% of that IHC."""
    import numpy as np

    from tiling.tissue import is_darkfield, tissue_mask

    rgb = np.asarray(rgb)[..., :3]
    if is_darkfield(rgb):
        return "fluorescence"
    mask, _ = tissue_mask(rgb, darkfield=False)
    pixels = rgb[mask].astype(np.int16)
    if len(pixels) < MIN_STAIN_PIXELS:
        return None
    red, green, blue = pixels.T
    if ((red > green) & (green > blue) & (red - blue > 40)).mean() >= IHC_BROWN:
        return "IHC"
    if ((green < red) & (green < blue)).mean() >= HE_PINK:
        return "H&E"
    return None


def route_overview(routes: Routes, site: str | None, overview: np.ndarray, mpp: float | None) -> Route:
    """Route a slide from its overview's pixels (uint8 RGB), its case's site and its level-0 um/px."""
    return routes.choose(site, detect_stain(overview), mpp)
