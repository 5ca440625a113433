"""OME-TIFF: the few facts slidestream takes from the OME-XML, and the shapes it can read.

Bio-Formats, QuPath and vips write the pixel size, the objective and the channel names only in the OME-XML (the TIFF
resolution tags say nothing), so openslide reports no mpp for them. The XML also holds identifying text (Image Name,
often the file name; Description; Experimenter; AcquisitionDate): only the fields below are read from it, and the
XML itself is never passed on.
"""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree import ElementTree

import numpy as np
import tifffile

# OME's UnitsLength values in micrometres (the schema's default is µm); pixel and reference-frame units say nothing
_MICROMETRES = {
    "km": 1e9, "hm": 1e8, "dam": 1e7, "m": 1e6, "dm": 1e5, "cm": 1e4, "mm": 1e3, "µm": 1.0, "μm": 1.0, "um": 1.0,
    "nm": 1e-3, "pm": 1e-6, "fm": 1e-9, "Å": 1e-4, "thou": 25.4, "li": 2116.67, "in": 25400.0, "ft": 304800.0,
    "yd": 914400.0, "mi": 1.609344e9, "pt": 352.778,
}
_AXIS_NAMES = {"T": "time points", "Z": "Z-planes", "C": "channels"}


@dataclass(frozen=True)
class OmeFacts:
    """What the OME-XML says about the first image (the slide; Bio-Formats stores label and macro as later ones)."""

    mpp: tuple[float, float] | None
    objective_power: float | None
    channels: list[str]


def ome_facts(xml: str) -> OmeFacts:
    """Pixel size in micrometres, nominal magnification of the objective the image names, and its channel names;
    None / empty where the XML does not say (or cannot be parsed: tifffile has then read the file as plain TIFF)."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return OmeFacts(None, None, [])
    image = _child(root, "Image")
    pixels = _child(image, "Pixels") if image is not None else None
    if pixels is None:
        return OmeFacts(None, None, [])
    size_x = _micrometres(pixels.get("PhysicalSizeX"), pixels.get("PhysicalSizeXUnit"))
    size_y = _micrometres(pixels.get("PhysicalSizeY"), pixels.get("PhysicalSizeYUnit"))
    channels = [channel.get("Name", "") for channel in _children(pixels, "Channel")]
    return OmeFacts(
        (size_x, size_y) if size_x and size_y else None,
        _magnification(root, image),
        channels if any(channels) else [],
    )


def unsupported_shape(series: tifffile.TiffPageSeries) -> str | None:
    """Why the image cannot be read as one RGB plane, or None when it can: slidestream's pyramid is 8-bit RGB, so a
    T/Z/C stack, separate channels, more samples than RGBA or deeper samples would be misread, not converted."""
    sizes = dict(zip(series.axes, series.shape))
    problems = [
        f"{sizes[axis]} {_AXIS_NAMES.get(axis, f'{axis}-axis entries')}" for axis in series.axes if axis not in "YXS" and sizes[axis] > 1
    ]
    samples = sizes.get("S", 1)
    if samples not in (1, 3, 4):
        problems.append(f"{samples} samples per pixel")
    if series.keyframe.planarconfig == tifffile.PLANARCONFIG.SEPARATE and samples > 1:
        problems.append("separate (planar) channels")
    if series.dtype != np.uint8:
        kind = "float " if series.dtype.kind == "f" else ""
        problems.append(f"{series.dtype.itemsize * 8}-bit {kind}samples")
    if not problems:
        return None
    return f"OME-TIFF with {' and '.join(problems)}: only single-plane 8-bit RGB(A) or greyscale images are supported"


def _magnification(root: ElementTree.Element, image: ElementTree.Element) -> float | None:
    settings = _child(image, "ObjectiveSettings")
    if settings is None:
        return None
    for instrument in _children(root, "Instrument"):
        for objective in _children(instrument, "Objective"):
            if objective.get("ID") == settings.get("ID"):
                return _positive(objective.get("NominalMagnification"))
    return None


def _micrometres(value: str | None, unit: str | None) -> float | None:
    size = _positive(value)
    factor = _MICROMETRES.get(unit or "µm")
    return size * factor if size is not None and factor is not None else None


def _positive(value: str | None) -> float | None:
    try:
        number = float(value) if value is not None else None
    except ValueError:
        return None
    return number if number is not None and 0 < number < float("inf") else None


def _children(element: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    """Children by local name, whichever OME schema year's namespace the writer used."""
    return [child for child in element if child.tag.rsplit("}", 1)[-1] == name]


def _child(element: ElementTree.Element, name: str) -> ElementTree.Element | None:
    found = _children(element, name)
    return found[0] if found else None
