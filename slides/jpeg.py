"""JPEG marker segments: what a stored JPEG tile may carry out of the hospital, and which colours it holds.

Scanners and their software put free text into JPEG tiles and their shared JPEGTables: COM comments and APPn
segments (XMP, EXIF, vendor blocks) with accession numbers, patient names, operators and dates. Only the segments a
decoder needs survive `strip_metadata`; the entropy-coded scan data is copied byte for byte, so pixels are unchanged.

Whether the three components are RGB or YCbCr is the stream's own word (`colour_model`), not the container's: QuPath's
OME-TIFFs tag JFIF YCbCr tiles Photometric=RGB, and some DICOM converters tag YCbCr frames RGB.
"""

from __future__ import annotations

import re
import struct

import numpy as np

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
SOS = 0xDA
ADOBE = 0xEE
JFIF = 0xE0
# segments decoding needs: SOF0-15 (not C4 DHT, C8 reserved, CC DAC: listed on their own), DHT, DAC, DQT, DNL,
# DRI, DHP, EXP, SOS
_DECODING = frozenset({*range(0xC0, 0xD0), 0xDB, 0xDC, 0xDD, 0xDE, 0xDF, SOS}) - {0xC8}
# a marker inside entropy-coded data: 0xFF not followed by a stuffed 0x00 or a restart marker RST0-7
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")


def adobe_segment(transform: int) -> bytes:
    """Adobe APP14 with only its colour transform (0: RGB as it is; 1: YCbCr; 2: YCCK); no text."""
    return b"\xff\xee" + struct.pack(">H", 14) + b"Adobe" + struct.pack(">HHHB", 100, 0, 0, transform)


RGB = "rgb"
YCBCR = "ycbcr"
_RGB_COMPONENT_IDS = (ord("R"), ord("G"), ord("B"))
# JFIF's YCbCr -> RGB (ITU-R BT.601, full range), as libjpeg converts
_YCBCR_TO_RGB = np.array([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]], np.float32)


def colour_model(jpeg: bytes, tables: bytes | None = None, tagged: str | None = None) -> str | None:
    """RGB or YCBCR: what the three components of this JPEG (a tile and the JPEGTables it needs) hold, decided as
    libjpeg decides: a JFIF APP0 means YCbCr (even beside an Adobe APP14); else an Adobe APP14's transform flag (0:
    RGB, otherwise YCbCr); else component IDs 'R', 'G', 'B' mean RGB. A stream with none of these says nothing itself:
    libjpeg guesses YCbCr, but Aperio's untransformed RGB tiles are such streams, so there the container's tag
    (`tagged`, RGB or YCBCR: TIFF's Photometric, DICOM's PhotometricInterpretation) decides, and without one the guess.
    None for a stream without a 3-component frame header (grey, malformed): it has no colour model to decide.
    """
    jfif = False
    adobe_transform: int | None = None
    for data in (tables, jpeg):
        pos = 2
        while data and pos + 4 <= len(data) and data[pos] == 0xFF:
            marker, length = data[pos + 1], int.from_bytes(data[pos + 2 : pos + 4], "big")
            if marker in (SOS, 0xD9):
                break
            if marker == JFIF and data[pos + 4 : pos + 9] == b"JFIF\x00":
                jfif = True
            elif marker == ADOBE and length >= 12 and data[pos + 4 : pos + 9] == b"Adobe" and pos + 15 < len(data):
                adobe_transform = data[pos + 15]
            elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header (SOFn)
                if pos + 10 + 9 > len(data) or data[pos + 9] != 3:
                    return None
                ids = tuple(data[pos + 10 + 3 * component] for component in range(3))
                if jfif:
                    return YCBCR
                if adobe_transform is not None:
                    return RGB if adobe_transform == 0 else YCBCR
                if ids == _RGB_COMPONENT_IDS:
                    return RGB
                return tagged if tagged in (RGB, YCBCR) else YCBCR
            pos += 2 + length
    return None


def ycbcr_to_rgb(pixels: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 YCbCr, as a decoder told "these are RGB" hands it out, converted to RGB as libjpeg would have
    (within one level of its fixed-point rounding)."""
    centred = pixels.astype(np.float32) - np.array([0, 128, 128], np.float32)
    rgb: np.ndarray = np.clip(np.rint(centred @ _YCBCR_TO_RGB.T), 0, 255).astype(np.uint8)
    return rgb


# JFIF APP0 without density or thumbnail: its presence alone tells a decoder "YCbCr", so it is kept in this form
_JFIF = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + struct.pack(">BBBHHBB", 1, 1, 0, 1, 1, 0, 0)


def strip_metadata(data: bytes) -> bytes:
    """The JPEG (a tile or JPEGTables) without COM and APPn segments or bytes after EOI; raises ValueError if the
    segment structure is malformed.

    A JFIF or Adobe segment is replaced by a bare one of the same meaning (they change how colours decode); every
    other APPn and COM is dropped. Markers between scans are parsed too: a comment may follow the first scan.
    """
    if not data.startswith(SOI):
        raise ValueError("not a JPEG (no SOI marker)")
    out = [SOI]
    pos, end = 2, len(data)
    while True:
        if pos >= end or data[pos] != 0xFF:
            raise ValueError(f"no JPEG marker at byte {pos}")
        while pos + 1 < end and data[pos + 1] == 0xFF:  # fill bytes before a marker
            pos += 1
        if pos + 1 >= end:
            raise ValueError("truncated JPEG marker")
        marker = data[pos + 1]
        if marker == 0xD9:  # EOI; anything after it is not image
            out.append(EOI)
            return b"".join(out)
        if pos + 4 > end:
            raise ValueError(f"truncated JPEG segment {marker:#04x} at byte {pos}")
        length = (data[pos + 2] << 8) | data[pos + 3]
        following = pos + 2 + length
        if length < 2 or following > end:
            raise ValueError(f"JPEG segment {marker:#04x} at byte {pos} overruns the data")
        if marker in _DECODING:
            out.append(data[pos:following])
        elif marker == JFIF and data[pos + 4 : pos + 9] == b"JFIF\x00":
            out.append(_JFIF)
        elif marker == ADOBE and length >= 14 and data[pos + 4 : pos + 9] == b"Adobe":
            out.append(adobe_segment(data[pos + 15]))
        elif not (0xE0 <= marker <= 0xEF or marker == 0xFE):
            raise ValueError(f"unexpected JPEG marker {marker:#04x} at byte {pos}")
        pos = following
        if marker == SOS:
            found = _SCAN_END.search(data, pos)
            if found is None:  # no EOI: keep the scan, end the file properly
                out.extend((data[pos:], EOI))
                return b"".join(out)
            out.append(data[pos : found.start()])
            pos = found.start()
