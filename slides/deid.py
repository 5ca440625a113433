"""De-identification: what of a slide may leave the hospital.

An allow-list rather than a deny-list: vendors keep adding fields (dates, operators, barcodes, serials, DICOM
patient/study attributes, the NDPI "Reference" tag), so anything not known to be harmless is dropped.
`slides.Slide` applies it; `slides.jpeg` does the same for the JPEG tiles' own segments.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# The name a de-identified slide goes by in everything derived from it (image metadata, triage results) unless the
# caller has a better one (a send uses its case ID): file names hold accession numbers and patient names.
PUBLIC_NAME = "image"

# Associated images that show the paper label or a photo of the whole glass (the label is on it).
IDENTIFYING_IMAGES = frozenset({"label", "macro"})

_SAFE_PROPERTY = re.compile(
    r"""^(
        openslide\.(vendor|mpp-x|mpp-y|objective-power|background-color|
                    bounds-(x|y|width|height)|level-count|
                    level\[\d+\]\.(width|height|downsample|tile-width|tile-height)|
                    region\[\d+\]\.(x|y|width|height)|
                    associated\.thumbnail\.(width|height))
      | tiff\.(ResolutionUnit|XResolution|YResolution)
      | aperio\.(AppMag|MPP|OriginalWidth|OriginalHeight)
      | hamamatsu\.(SourceLens|XOffsetFromSlideCentre|YOffsetFromSlideCentre)
    )$""",
    re.VERBOSE,
)


def safe_properties(properties: Mapping[str, str]) -> dict[str, str]:
    """Keep only the properties known to carry no patient, operator, scanner or time information."""
    return {key: value for key, value in properties.items() if _SAFE_PROPERTY.match(key)}


def safe_associated_images(names: list[str]) -> list[str]:
    """Drop the label and macro images (the macro photographs the label too)."""
    return [name for name in names if name not in IDENTIFYING_IMAGES]
