"""JPEG marker segments: what a stored JPEG tile may carry out of the hospital.

Scanners and their software put free text into JPEG tiles and their shared JPEGTables: COM comments and APPn
segments (XMP, EXIF, vendor blocks) with accession numbers, patient names, operators and dates. Only the segments a
decoder needs survive `strip_metadata`; the entropy-coded scan data is copied byte for byte, so pixels are unchanged.
"""

from __future__ import annotations

import re
import struct

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
