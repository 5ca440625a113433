"""JPEG chunks: encoding, decoding, and turning an abbreviated TIFF JPEG tile into a self-contained JPEG file
without touching its entropy-coded data. Free of zarr, so building shards needs no zarr import."""

from __future__ import annotations

import imagecodecs
import numpy as np

from slides.jpeg import EOI, SOI, adobe_segment

DEFAULT_QUALITY = 90

# Adobe APP14 with transform 0: "the three components are RGB, not YCbCr". Aperio writes RGB JPEG tiles without
# any marker saying so; every decoder (libjpeg, browsers) would otherwise convert them as YCbCr and shift colours.
ADOBE_RGB = adobe_segment(0)


def self_contained_jpeg(tile: bytes, tables: bytes | None, rgb: bool) -> bytes:
    """Merge the TIFF JPEGTables into the tile, and mark untransformed RGB tiles as such.

    The tile and tables come from `slides.Slide.raw_tile`, which has already removed their comments and APPn
    segments unless the slide was opened with keep_phi.
    """
    if not tile.startswith(SOI):
        raise ValueError("not a JPEG tile (no SOI marker)")
    inserted = b""
    if rgb:
        inserted += ADOBE_RGB
    if tables:
        if not (tables.startswith(SOI) and tables.endswith(EOI)):
            raise ValueError("malformed JPEGTables")
        inserted += tables[2:-2]
    return SOI + inserted + tile[2:]


def encode_jpeg(pixels: np.ndarray, quality: int) -> bytes:
    """Baseline JPEG, YCbCr without chroma subsampling: pathology colour detail survives at ~40+ dB."""
    return bytes(imagecodecs.jpeg8_encode(pixels, level=quality, subsampling=(1, 1)))


