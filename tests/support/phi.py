"""Slides generated with a patient's identity everywhere vendors put it (file name, descriptions, XMP, JPEG segments, label and macro, DICOM attributes): the input of every PHI sweep."""

from __future__ import annotations

import struct
from pathlib import Path

import imagecodecs
import numpy as np
import openslide
import pydicom
import tifffile
from conftest import sample

import tiling  # noqa: F401  (registers the JPEG chunk codec with zarr)

NAME = "ACC-2024-0001_DOE_JANE"
IDENTIFYING = (b"DOE^JANE", b"DOE_JANE", b"ACC-2024-0001", b"MRN-7777123", b"ST-ELSEWHERE", b"XMP-OPERATOR-JSMITH")
COMMENT = b"Patient=DOE^JANE Accession=ACC-2024-0001 MRN-7777123"
TILE = 256
WIDTH, HEIGHT = 2048, 1536
APERIO = "Aperio Image Library v12.0.16 "


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


TILE_SEGMENTS = (
    _segment(0xFE, COMMENT)
    + _segment(0xE9, b"VENDOR\x00operator=XMP-OPERATOR-JSMITH case=ACC-2024-0001")
    + _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta><dc:creator>DOE^JANE</dc:creator></x:xmpmeta>")
)


TABLE_SEGMENTS = _segment(0xFE, b"tables for MRN-7777123") + _segment(0xE9, b"ST-ELSEWHERE DOE_JANE")


def _rgb_jpeg_parts(pixels: np.ndarray) -> tuple[bytes, bytes]:
    """(JPEGTables, abbreviated tile) as Aperio stores RGB tiles (as bench/make_large_slide.py makes them), each
    carrying identifying segments; the tile also has a comment after its scan."""
    jpeg = imagecodecs.jpeg8_encode(pixels, level=80, colorspace="RGB", outcolorspace="RGB", subsampling="444")
    tables, stream = [b"\xff\xd8" + TABLE_SEGMENTS], [b"\xff\xd8" + TILE_SEGMENTS]
    i = 2
    while True:
        marker, length = jpeg[i + 1], int.from_bytes(jpeg[i + 2 : i + 4], "big")
        segment = bytearray(jpeg[i : i + 2 + length])
        if marker in (0xDB, 0xC4):
            tables.append(bytes(segment))
        elif marker in (0xC0, 0xDA):  # number the components 0, 1, 2: nothing in the JPEG says RGB (as Aperio)
            first, count, step = (10, segment[9], 3) if marker == 0xC0 else (5, segment[4], 2)
            for c in range(count):
                segment[first + step * c] = c
            if marker == 0xDA:
                scan = jpeg[i + 2 + length : -2]
                stream.append(bytes(segment) + scan + _segment(0xFE, COMMENT) + b"\xff\xd9")
                break
            stream.append(bytes(segment))
        elif not 0xE0 <= marker <= 0xEF:
            stream.append(bytes(segment))
        i += 2 + length
    return b"".join(tables) + b"\xff\xd9", b"".join(stream)


def _aperio_jpeg(tables: bytes) -> dict[str, object]:
    """Pre-encoded RGB JPEG tiles with shared tables; Photometric RGB as Aperio writes it."""
    return dict(compression="jpeg", compressionargs={"outcolorspace": "RGB"}, photometric="rgb", jpegtables=tables, metadata=None)


def _tiled_jpeg_level(tif: tifffile.TiffWriter, pixels: np.ndarray, description: str, xmp: bytes | None) -> None:
    tiles, tables = [], None
    for y in range(0, pixels.shape[0], TILE):
        for x in range(0, pixels.shape[1], TILE):
            block = np.full((TILE, TILE, 3), 255, np.uint8)
            part = pixels[y : y + TILE, x : x + TILE]
            block[: part.shape[0], : part.shape[1]] = part
            tables, tile = _rgb_jpeg_parts(block)
            tiles.append(tile)
    extratags = [(700, 1, len(xmp), xmp, True)] if xmp else []
    tif.write(iter(tiles), shape=pixels.shape, dtype=np.uint8, tile=(TILE, TILE), description=description, extratags=extratags,
              subfiletype=0, **_aperio_jpeg(tables))


def _text_image(text: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """An associated image whose stored bytes are the text (uncompressed): a leaked page shows in a byte search."""
    count = int(np.prod(shape))
    return np.frombuffer((text * (count // len(text) + 1))[:count], np.uint8).reshape(shape)


def make_svs(path: Path) -> Path:
    """An Aperio SVS of real tissue (CMU-1's level 0), 256 px RGB JPEG tiles, identifying data everywhere."""
    with openslide.OpenSlide(sample("CMU-1-Small-Region.svs")) as source:
        tissue = np.asarray(source.read_region((0, 0), 0, (WIDTH, HEIGHT)).convert("RGB"))
    fields = "|".join([
        "AppMag = 20", "MPP = 0.4990", f"Filename = {NAME}", "Patient = DOE^JANE", "Accession = ACC-2024-0001",
        "MRN = MRN-7777123", "Institution = ST-ELSEWHERE", "Date = 01/02/24", "Time = 10:11:12",
        f"OriginalWidth = {WIDTH}", f"OriginalHeight = {HEIGHT}",
    ])  # fmt: skip
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description creator="XMP-OPERATOR-JSMITH" subject="DOE^JANE"/></x:xmpmeta>'
    small = tissue[::4, ::4].copy()
    with tifffile.TiffWriter(path) as tif:
        _tiled_jpeg_level(tif, tissue, f"{APERIO}\r\n{WIDTH}x{HEIGHT} [0,0 {WIDTH}x{HEIGHT}] ({TILE}x{TILE}) JPEG/RGB Q=80|{fields}", xmp)
        tif.write(tissue[::8, ::8].copy(), photometric="rgb", description=f"{APERIO}\r\n{WIDTH}x{HEIGHT} -> 256x192 - |{fields}", metadata=None)
        _tiled_jpeg_level(tif, small, f"{APERIO}\r\n{WIDTH}x{HEIGHT} -> {WIDTH // 4}x{HEIGHT // 4} JPEG/RGB Q=80|{fields}", None)
        tif.write(_text_image(b"DOE^JANE ACC-2024-0001 ", (200, 300, 3)), photometric="rgb", subfiletype=1,
                  description=f"{APERIO}\r\nlabel 300x200", metadata=None)
        tif.write(_text_image(b"MRN-7777123 DOE_JANE ", (400, 1000, 3)), photometric="rgb", subfiletype=9,
                  description=f"{APERIO}\r\nmacro 1000x400", metadata=None)
    return path


def make_dicom(path: Path) -> Path:
    """The DICOM sample with the patient, accession and institution a hospital's PACS would fill in."""
    dataset = pydicom.dcmread(sample("wsi2dcm-jpeg.dcm"))
    dataset.PatientName = "DOE^JANE"
    dataset.PatientID = "MRN-7777123"
    dataset.AccessionNumber = "ACC-2024-0001"
    dataset.InstitutionName = "ST-ELSEWHERE"
    dataset.save_as(path)
    return path
