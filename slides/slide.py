"""`open_slide`: one reader for every whole-slide format we accept.

openslide reads pixels for the vendor formats (SVS, NDPI, MRXS, Philips, DICOM, generic TIFF). tifffile is the fast
path beside it: for TIFF-family files it hands out the *compressed* source tiles, so tiling/ can copy them into the
output without decoding, and it reads plain (non-pyramidal) TIFFs that openslide refuses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import openslide
import tifffile

from slides.deid import PUBLIC_NAME, safe_associated_images, safe_properties
from slides.errors import CorruptSlideError, SlideNotFoundError, SlidestreamError, UnsupportedSlideError
from slides.jpeg import strip_metadata

# Real scans reach ~200k px a side; anything far beyond is a corrupt or hostile header, not a slide.
MAX_SIDE = 1 << 20

_CODECS = {
    tifffile.COMPRESSION.JPEG: "jpeg",
    tifffile.COMPRESSION.APERIO_JP2000_RGB: "jpeg2000",
    tifffile.COMPRESSION.APERIO_JP2000_YCBC: "jpeg2000",
    tifffile.COMPRESSION.JPEG2000: "jpeg2000",
    tifffile.COMPRESSION.ADOBE_DEFLATE: "deflate",
    tifffile.COMPRESSION.DEFLATE: "deflate",
    tifffile.COMPRESSION.LZW: "lzw",
    tifffile.COMPRESSION.ZSTD: "zstd",
    tifffile.COMPRESSION.WEBP: "webp",
    tifffile.COMPRESSION.NONE: "none",
}


@dataclass(frozen=True)
class Level:
    """One resolution of the pyramid as the source stores it."""

    width: int
    height: int
    downsample: float
    tile_width: int | None = None
    tile_height: int | None = None


@dataclass(frozen=True)
class RawTile:
    """A source tile exactly as stored in the file, for copying without re-encoding.

    `jpeg_tables` holds the shared quantisation/Huffman tables that abbreviated TIFF JPEG tiles rely on.
    `photometric` is the TIFF colour model ("rgb" for Aperio's untransformed JPEGs, "ycbcr" for the usual ones).
    Edge tiles have the full tile size; the part beyond the level's edge is padding.
    """

    data: bytes
    codec: str
    jpeg_tables: bytes | None
    photometric: str
    width: int
    height: int


class Slide:
    """A whole-slide image opened for reading; use `open_slide` to make one.

    Unless opened with ``keep_phi=True`` it is the de-identified view, the one gate for everything derived from the
    slide: no label or macro image, only properties known to hold no identifying information, JPEG tiles and
    tables without comments and APPn segments, a `name` that is not the file name, and a `summary` without it.
    """

    def __init__(self, path: Path, osr: openslide.OpenSlide | None, tiff: tifffile.TiffFile | None, keep_phi: bool):
        self.path = path
        self.keep_phi = keep_phi
        self.name: str = path.name if keep_phi else PUBLIC_NAME  # what derived objects call it (never the file name)
        self._tables: dict[int, bytes | None] = {}  # per level, as raw_tile hands them out
        self._osr = osr
        self._tiff = tiff
        self._fd = os.open(path, os.O_RDONLY) if tiff is not None else -1
        self._tiff_pages = _tiled_pages(osr, tiff)
        self.levels = _levels(osr, tiff)
        raw_properties = dict(osr.properties) if osr is not None else {}
        self.properties: dict[str, str] = raw_properties if keep_phi else safe_properties(raw_properties)
        self.vendor: str = raw_properties.get(openslide.PROPERTY_NAME_VENDOR, "tiff")
        self.mpp: tuple[float, float] | None = _mpp(raw_properties)
        power = raw_properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        self.objective_power: float | None = float(power) if power else None
        names = list(osr.associated_images) if osr is not None else []
        self.associated_images: list[str] = names if keep_phi else safe_associated_images(names)

    # -- geometry --------------------------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self.levels[0].width, self.levels[0].height

    @property
    def tile_size(self) -> int | None:
        """The source's level-0 tile width, or None for strip-based files."""
        return self.levels[0].tile_width

    # -- pixels ----------------------------------------------------------------------------------------------
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 pixels (height, width, 3) of `size` at `level`, `location` in level-0 coordinates.

        Outside the slide reads as white, as glass does.
        """
        width, height = size
        if width <= 0 or height <= 0 or not 0 <= level < len(self.levels):
            raise ValueError(f"{self.path.name}: bad region request level={level} size={size}")
        if self._osr is None:
            return self._read_tiff_region(location, level, size)
        try:
            rgba = np.asarray(self._osr.read_region(location, level, size))
        except openslide.OpenSlideError as error:
            raise CorruptSlideError(f"{self.path}: cannot read image data: {error}") from None
        # openslide returns premultiplied RGBA with transparent pixels outside the scanned area: composite on white
        alpha = rgba[..., 3:4].astype(np.uint16)
        return (rgba[..., :3] + (255 - alpha)).astype(np.uint8)

    def _read_tiff_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        import zarr

        info = self.levels[level]
        x0 = int(location[0] / info.downsample)
        y0 = int(location[1] / info.downsample)
        out = np.full((size[1], size[0], 3), 255, np.uint8)
        x1, y1 = min(x0 + size[0], info.width), min(y0 + size[1], info.height)
        if x1 <= x0 or y1 <= y0:
            return out
        series = self._tiff.series[0]
        store = series.aszarr(level=level)
        try:
            pixels = np.asarray(zarr.open_array(store, mode="r")[y0:y1, x0:x1])
        except Exception as error:  # tifffile/imagecodecs raise many types for damaged data
            raise CorruptSlideError(f"{self.path}: cannot read image data: {error}") from None
        out[: y1 - y0, : x1 - x0] = pixels[..., :3] if pixels.ndim == 3 else pixels[..., None]
        return out

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image (e.g. "thumbnail") as RGB; label and macro only with keep_phi."""
        if name not in self.associated_images:
            raise KeyError(f"{self.path.name} has no associated image {name!r} (available: {self.associated_images})")
        return np.asarray(self._osr.associated_images[name].convert("RGB"))

    # -- compressed source tiles -----------------------------------------------------------------------------
    def has_raw_tiles(self, level: int) -> bool:
        """Whether `raw_tile` works for this level (a tiled TIFF page of exactly this level's size)."""
        return level in self._tiff_pages

    def raw_codec(self, level: int) -> str | None:
        """The codec of this level's stored tiles ("jpeg", "jpeg2000", ...), or None without raw tile access."""
        page = self._tiff_pages.get(level)
        return None if page is None else _CODECS[page.compression]

    def raw_tile(self, level: int, row: int, col: int) -> RawTile | None:
        """The stored bytes of one tile, or None where the file has no such tile (sparse files)."""
        page = self._tiff_pages[level]
        across = -(-page.imagewidth // page.tilewidth)
        down = -(-page.imagelength // page.tilelength)
        if not (0 <= row < down and 0 <= col < across):
            raise IndexError(f"tile ({row}, {col}) outside level {level} ({down}x{across} tiles)")
        index = row * across + col
        offset, count = page.dataoffsets[index], page.databytecounts[index]
        if count == 0:
            return None
        data = os.pread(self._fd, count, offset)
        if len(data) != count:
            raise CorruptSlideError(f"{self.path}: file is truncated (tile {index} of level {level})")
        codec = self.raw_codec(level)
        if codec == "jpeg" and not self.keep_phi:
            data = self._strip(data, f"tile ({row}, {col}) of level {level}")
        return RawTile(
            data=data,
            codec=codec,
            jpeg_tables=self._jpeg_tables(level),
            photometric=page.photometric.name.lower(),
            width=page.tilewidth,
            height=page.tilelength,
        )

    def _jpeg_tables(self, level: int) -> bytes | None:
        """The level's JPEGTables, stripped like its tiles (once per level: every tile shares them)."""
        if level not in self._tables:
            tables = self._tiff_pages[level].jpegtables
            if tables and self.raw_codec(level) == "jpeg" and not self.keep_phi:
                tables = self._strip(tables, f"JPEGTables of level {level}")
            self._tables[level] = tables
        return self._tables[level]

    def _strip(self, jpeg: bytes, where: str) -> bytes:
        try:
            return strip_metadata(jpeg)
        except ValueError as error:
            raise CorruptSlideError(f"{self.path}: {where}: malformed JPEG: {error}") from None

    def decode_raw_tile(self, level: int, tile: RawTile) -> np.ndarray:
        """Decode a raw tile the way tifffile does (it knows every vendor's colour quirks): (h, w, 3) uint8."""
        page = self._tiff_pages[level]
        try:
            pixels, _, _ = page.decode(tile.data, 0, jpegtables=tile.jpeg_tables)
        except Exception as error:
            raise CorruptSlideError(f"{self.path}: cannot decode a tile of level {level}: {error}") from None
        return np.asarray(pixels).reshape(tile.height, tile.width, -1)[..., :3]

    # -- what may be said about it -----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """The facts `info --json` prints and converted images embed: de-identified unless keep_phi (then with the
        file name)."""
        return {
            **({"file": self.path.name} if self.keep_phi else {}),
            "vendor": self.vendor,
            "levels": [
                {"width": level.width, "height": level.height, "downsample": level.downsample, "raw_tiles": self.raw_codec(index)}
                for index, level in enumerate(self.levels)
            ],
            "mpp": list(self.mpp) if self.mpp else None,
            "objective_power": self.objective_power,
            "tile_size": self.tile_size,
            "associated_images": self.associated_images,
            "properties": self.properties,
            "deidentified": not self.keep_phi,
        }

    # -- lifetime --------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._osr is not None:
            self._osr.close()
        if self._tiff is not None:
            self._tiff.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide({self.path.name!r}, vendor={self.vendor!r}, {self.dimensions[0]}x{self.dimensions[1]})"


def open_slide(path: str | os.PathLike[str], keep_phi: bool = False) -> Slide:
    """Open any supported whole-slide image; raises a `SlidestreamError` whose message names file and problem.

    A directory is accepted when it holds a DICOM series (all files of one slide).
    """
    path = Path(path)
    if not path.exists():
        raise SlideNotFoundError(f"{path}: no such file")
    if path.is_dir():
        path = _dicom_member(path)
    if path.stat().st_size == 0:
        raise UnsupportedSlideError(f"{path}: empty file, not a slide")
    osr = _try_openslide(path)
    tiff = _try_tifffile(path)
    if osr is None and (tiff is None or not tiff.series):
        if tiff is not None:
            tiff.close()
        raise UnsupportedSlideError(f"{path}: not a supported slide format (openslide and tifffile cannot read it)")
    try:
        slide = Slide(path, osr, tiff, keep_phi)
    except SlidestreamError:
        raise
    except Exception as error:
        raise UnsupportedSlideError(f"{path}: unreadable slide structure: {error}") from None
    width, height = slide.dimensions
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        slide.close()
        raise UnsupportedSlideError(f"{path}: implausible dimensions {width}x{height} (limit {MAX_SIDE} px a side)")
    return slide


def _dicom_member(directory: Path) -> Path:
    members = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() == ".dcm")
    if not members:
        raise UnsupportedSlideError(f"{directory}: is a directory without DICOM files, not a slide")
    return members[0]


def _try_openslide(path: Path) -> openslide.OpenSlide | None:
    try:
        return openslide.OpenSlide(path)
    except openslide.OpenSlideUnsupportedFormatError:
        return None
    except openslide.OpenSlideError as error:
        raise UnsupportedSlideError(f"{path}: damaged slide: {error}") from None


def _try_tifffile(path: Path) -> tifffile.TiffFile | None:
    try:
        tiff = tifffile.TiffFile(path)
    except Exception:  # not a TIFF, or a TIFF too damaged to parse: openslide may still read it (DICOM)
        return None
    if tiff.is_ndpi:
        # NDPI stores JPEG strips as restart-marker "tiles" that cannot be copied as self-contained tiles
        tiff.close()
        return None
    return tiff


def _levels(osr: openslide.OpenSlide | None, tiff: tifffile.TiffFile | None) -> list[Level]:
    if osr is not None:
        levels = []
        for index, ((width, height), downsample) in enumerate(zip(osr.level_dimensions, osr.level_downsamples)):
            tile_w = osr.properties.get(f"openslide.level[{index}].tile-width")
            tile_h = osr.properties.get(f"openslide.level[{index}].tile-height")
            levels.append(Level(width, height, downsample, int(tile_w) if tile_w else None, int(tile_h) if tile_h else None))
        return levels
    pages = [level.keyframe for level in tiff.series[0].levels]
    base_width = pages[0].imagewidth
    return [
        Level(
            page.imagewidth,
            page.imagelength,
            base_width / page.imagewidth,
            page.tilewidth if page.is_tiled else None,
            page.tilelength if page.is_tiled else None,
        )
        for page in pages
    ]


def _tiled_pages(osr: openslide.OpenSlide | None, tiff: tifffile.TiffFile | None) -> dict[int, Any]:
    """Map level index -> the tiled TIFF page holding exactly that level, where its codec is one we can copy."""
    if tiff is None:
        return {}
    candidates = [
        page
        for page in tiff.pages
        if page.is_tiled and page.compression in _CODECS and page.planarconfig == tifffile.PLANARCONFIG.CONTIG
    ]
    dims = osr.level_dimensions if osr is not None else [(p.keyframe.imagewidth, p.keyframe.imagelength) for p in tiff.series[0].levels]
    pages = {}
    for index, (width, height) in enumerate(dims):
        for page in candidates:
            if (page.imagewidth, page.imagelength) == (width, height):
                pages[index] = page
                break
    return pages


def _mpp(properties: dict[str, str]) -> tuple[float, float] | None:
    mpp_x = properties.get(openslide.PROPERTY_NAME_MPP_X)
    mpp_y = properties.get(openslide.PROPERTY_NAME_MPP_Y)
    if mpp_x and mpp_y:
        return float(mpp_x), float(mpp_y)
    return None
