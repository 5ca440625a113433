"""What openslide cannot see in a DICOM WSI series: levels whose JPEG frames are YCbCr while the instance says RGB.

openslide (and wsidicom) decode a JPEG frame by the instance's PhotometricInterpretation alone; a converter that tags
YCbCr 4:2:0 frames "RGB" gets raw Y, Cb, Cr back as red, green and blue: salmon glass, teal nuclei, and, since green
and blue then carry the half-resolution chroma planes, an image about ten times less sharp, as if level 1 were
upsampled (openslide does take the finest instance as level 0). The frames' own markers (`slides.jpeg.colour_model`)
say what they hold.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.encaps import get_frame
from pydicom.uid import JPEGBaseline8Bit

from slides.jpeg import RGB, YCBCR, colour_model

# (7FE0,0010) Pixel Data, explicit VR little endian OB, undefined length: where encapsulated frames begin
_ENCAPSULATED_PIXEL_DATA = bytes.fromhex("e07f10004f420000ffffffff")


def ycbcr_tagged_rgb(files: list[Path], series_uid: str) -> set[tuple[int, int]]:
    """The (width, height) of the series' pyramid levels whose instance says RGB while its JPEG frames are YCbCr,
    judged by each instance's first frame. Files of other series, other images and other transfer syntaxes are
    skipped, as openslide skips them."""
    sizes = set()
    for path in files:
        with path.open("rb") as handle:
            try:
                dataset = pydicom.dcmread(handle, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - not DICOM or damaged: openslide has refused or skipped it already
                continue
            if (
                dataset.get("SeriesInstanceUID") != series_uid
                or "VOLUME" not in list(dataset.get("ImageType", []))
                or dataset.file_meta.get("TransferSyntaxUID") != JPEGBaseline8Bit
                or dataset.get("PhotometricInterpretation") != "RGB"
                or handle.read(len(_ENCAPSULATED_PIXEL_DATA)) != _ENCAPSULATED_PIXEL_DATA
            ):
                continue
            try:
                frame = get_frame(handle, 0, number_of_frames=int(dataset.get("NumberOfFrames", 1)))
            except Exception:  # noqa: BLE001 - a damaged frame table: openslide reports it when the tile is read
                continue
        if colour_model(frame, tagged=RGB) == YCBCR:
            sizes.add((int(dataset.TotalPixelMatrixColumns), int(dataset.TotalPixelMatrixRows)))
    return sizes
