"""`open_slide`: one reader for every whole-slide format we accept.

openslide reads pixels for the vendor formats (SVS, NDPI, MRXS, Philips, DICOM, generic TIFF). tifffile is the fast
path beside it: for TIFF-family files it hands out the *compressed* source tiles, so tiling/ can copy them into the
output without decoding, and it reads plain (non-pyramidal) TIFFs that openslide refuses. OME-TIFF is read by
tifffile alone: openslide sees only its first level (not the SubIFD pyramid) and none of its OME-XML.

Both readers take a JPEG's colours from the container's tag; where a level's JPEG stream says YCbCr and the tag says
RGB (QuPath's OME-TIFFs, some DICOM converters) they hand out raw Y, Cb, Cr, which `read_region` converts.
"""

from __future__ import annotations

import errno
import logging
import math
import multiprocessing.util
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import imagecodecs
import numpy as np
import openslide
import tifffile

from slides.deid import PUBLIC_NAME, safe_associated_images, safe_properties
from slides.errors import CorruptSlideError, SlideNotFoundError, SlidestreamError, UnsupportedSlideError, first_line
from slides.jpeg import RGB, YCBCR, colour_model, strip_metadata, ycbcr_to_rgb
from slides.ome import OmeFacts, ome_facts, unsupported_shape
from slides.written import tiff_structure_whole, tifffile_complaints

# Real scans reach ~200k px a side; anything far beyond is a corrupt or hostile header, not a slide.
MAX_SIDE = 1 << 20
# The bounded reader: every read decodes whole stored tiles or strips, one at a time per thread, so no stored chunk
# may decode to more than this (a real scan's are 0.2-4 MB; a plain TIFF stored as one huge strip is refused).
MAX_CHUNK_BYTES = 256 << 20

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
    `photometric` is the colour model of the stored data: for JPEG the stream's own (`slides.jpeg.colour_model`:
    "rgb" for Aperio's untransformed tiles, "ycbcr" for the usual ones, also where the TIFF says RGB), else the TIFF's.
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

    _scratch: tempfile.TemporaryDirectory[str] | None = None  # the private DICOM folder openslide reads (open_slide)

    def __init__(
        self, path: Path, osr: openslide.OpenSlide | None, tiff: tifffile.TiffFile | None, keep_phi: bool, ome: OmeFacts | None = None
    ):
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
        self._ycbcr_read_as_rgb = self._levels_read_as_rgb(raw_properties)
        self.properties: dict[str, str] = raw_properties if keep_phi else safe_properties(raw_properties)
        self.vendor: str = "ome-tiff" if ome is not None else raw_properties.get(openslide.PROPERTY_NAME_VENDOR, "tiff")
        self.mpp: tuple[float, float] | None = ome.mpp if ome is not None else _mpp(raw_properties)
        power = raw_properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        self.objective_power: float | None = ome.objective_power if ome is not None else float(power) if power else None
        self.channels: list[str] = ome.channels if ome is not None else []  # the source's channel names, where it names them
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
        colours = rgba[..., :3]
        if level in self._ycbcr_read_as_rgb:
            straight = np.rint(colours * (255 / np.maximum(alpha, 1).astype(np.float32))).astype(np.uint8)
            colours = np.rint(ycbcr_to_rgb(straight) * (alpha / np.float32(255))).astype(np.uint8)
        return (colours + (255 - alpha)).astype(np.uint8)

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
        if level in self._ycbcr_read_as_rgb:
            pixels = ycbcr_to_rgb(pixels[..., :3])
        out[: y1 - y0, : x1 - x0] = pixels[..., :3] if pixels.ndim == 3 else pixels[..., None]
        return out

    def associated_image(self, name: str) -> np.ndarray:
        """An associated image (e.g. "thumbnail") as RGB; label and macro only with keep_phi."""
        if name not in self.associated_images:
            raise KeyError(f"{self.path.name} has no associated image {name!r} (available: {self.associated_images})")
        try:
            return np.asarray(self._osr.associated_images[name].convert("RGB"))
        except openslide.OpenSlideError as error:
            raise CorruptSlideError(f"{self.path}: cannot read its {name} image: {first_line(error)}") from None

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
        tables = self._jpeg_tables(level)
        photometric = page.photometric.name.lower()
        if codec == "jpeg":
            if not self.keep_phi:
                data = self._strip(data, f"tile ({row}, {col}) of level {level}")
            photometric = colour_model(data, tables, tagged=photometric) or photometric
        return RawTile(data=data, codec=codec, jpeg_tables=tables, photometric=photometric, width=page.tilewidth, height=page.tilelength)

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
        """Decode a raw tile: JPEG in its stream's colour model (`RawTile.photometric`), other codecs the way tifffile
        does (it knows every vendor's quirks): (h, w, 3) uint8."""
        page = self._tiff_pages[level]
        try:
            if tile.codec == "jpeg":
                colorspace = "RGB" if tile.photometric == RGB else "YCbCr"
                pixels = imagecodecs.jpeg_decode(tile.data, tables=tile.jpeg_tables, colorspace=colorspace, outcolorspace="RGB")
            else:
                pixels, _, _ = page.decode(tile.data, 0, jpegtables=tile.jpeg_tables)
        except Exception as error:
            raise CorruptSlideError(f"{self.path}: cannot decode a tile of level {level}: {error}") from None
        return np.asarray(pixels).reshape(tile.height, tile.width, -1)[..., :3]

    def _levels_read_as_rgb(self, properties: dict[str, str]) -> set[int]:
        """The levels whose reader hands out a JPEG stream's YCbCr as if it were RGB: openslide decodes by the TIFF's
        or DICOM's tag alone, tifffile too unless the page's first tile starts with a JFIF marker."""
        if self._osr is not None and properties.get(openslide.PROPERTY_NAME_VENDOR) == "dicom":
            from slides.dicom import ycbcr_tagged_rgb  # pydicom: only DICOM slides pay its start-up time

            files = [member for member in self.path.parent.iterdir() if _regular(member) and _is_dicom(member)]
            sizes = ycbcr_tagged_rgb(files, properties.get("dicom.SeriesInstanceUID", ""))
            return {index for index, level in enumerate(self.levels) if (level.width, level.height) in sizes}
        levels = set()
        for index, page in self._tiff_pages.items():
            if page.compression != tifffile.COMPRESSION.JPEG or page.photometric != tifffile.PHOTOMETRIC.RGB:
                continue
            if self._osr is None and page.is_jfif:
                continue
            first = next((i for i, count in enumerate(page.databytecounts) if count), None)
            if first is not None:
                tile = os.pread(self._fd, page.databytecounts[first], page.dataoffsets[first])
                if colour_model(tile, page.jpegtables, tagged=RGB) == YCBCR:
                    levels.add(index)
        return levels

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
            "channels": self.channels,
            "tile_size": self.tile_size,
            "associated_images": self.associated_images,
            "properties": self.properties,
            "deidentified": not self.keep_phi,
        }

    # -- lifetime --------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._osr is not None:
            self._osr.close()
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None
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

    A directory is accepted when it holds a DICOM series (all files of one slide). Only regular files are opened
    (a FIFO or device would block or never end); a damaged or truncated TIFF structure, or a page whose stored tiles
    or strips decode to more than `MAX_CHUNK_BYTES` each, is refused here, before any pixel is read.
    """
    path = Path(path)
    if slide_path_kind(path) == "directory":
        path = _dicom_member(path)
    if path.stat().st_size == 0:
        raise UnsupportedSlideError(f"{path}: empty file, not a slide")
    scratch = _dicom_view(path)
    osr: openslide.OpenSlide | None = None
    tiff: tifffile.TiffFile | None = None
    with tifffile_complaints() as complaints:
        try:
            osr = _try_openslide(path if scratch is None else Path(scratch.name) / path.name, path)
            tiff = _try_tifffile(path, complaints)
            if osr is None and (tiff is None or not tiff.series):
                raise UnsupportedSlideError(f"{path}: not a supported slide format (openslide and tifffile cannot read it)")
            ome = _ome(path, tiff)
            if ome is not None and osr is not None:
                osr.close()
                osr = None
            slide = Slide(path, osr, tiff, keep_phi, ome)
        except SlidestreamError:
            _close_all(scratch, osr, tiff)
            raise
        except Exception as error:  # noqa: BLE001 - tifffile and openslide raise many types for damaged files
            _close_all(scratch, osr, tiff)
            raise UnsupportedSlideError(f"{path}: unreadable slide structure: {first_line(error)}") from None
    slide._scratch = scratch
    try:
        _check_bounds(slide)
    except SlidestreamError:
        slide.close()
        raise
    return slide


def _ome(path: Path, tiff: tifffile.TiffFile | None) -> OmeFacts | None:
    """The OME-XML's facts for an OME-TIFF (None for other files), once its first image is known to be one RGB(A) or
    grey 8-bit plane; tifffile has already read the XML's dimensions into series[0]."""
    if tiff is None or not tiff.is_ome or not tiff.series:
        return None
    problem = unsupported_shape(tiff.series[0])
    if problem is not None:
        raise UnsupportedSlideError(f"{path}: {problem}")
    return ome_facts(tiff.ome_metadata or "")


def _close_all(scratch: tempfile.TemporaryDirectory[str] | None, osr: openslide.OpenSlide | None, tiff: tifffile.TiffFile | None) -> None:
    """What a failed open had opened, so a refused slide leaves no file handle or scratch folder behind."""
    for handle in (osr, tiff):
        if handle is not None:
            handle.close()
    if scratch is not None:
        scratch.cleanup()


def slide_path_kind(path: Path) -> str:
    """"file" or "directory"; anything else (missing, a link loop, a FIFO, a device, a socket) is a one-line error."""
    try:
        mode = path.stat().st_mode  # follows links
    except FileNotFoundError:
        raise SlideNotFoundError(f"{path}: no such file") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnsupportedSlideError(f"{path}: symbolic link loop, not a slide") from None
        raise UnsupportedSlideError(f"{path}: cannot be read: {error.strerror or error}") from None
    if stat.S_ISDIR(mode):
        return "directory"
    if not stat.S_ISREG(mode):
        kind = "FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device"
        raise UnsupportedSlideError(f"{path}: is a {kind}, not a slide file")
    return "file"


def _check_bounds(slide: Slide) -> None:
    """Refuse headers no real scan has: sides beyond MAX_SIDE, stored tiles or strips decoding beyond MAX_CHUNK_BYTES
    (every read decodes whole chunks; a damaged strip TIFF may claim one strip of 300k x 300k px)."""
    width, height = slide.dimensions
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise UnsupportedSlideError(f"{slide.path}: implausible dimensions {width}x{height} (limit {MAX_SIDE} px a side)")
    chunks = [(level.tile_width or 0) * (level.tile_height or 0) * 4 for level in slide.levels]
    if slide._tiff is not None:
        for page in (level.keyframe for series in slide._tiff.series for level in series.levels):
            itemsize = page.dtype.itemsize if page.dtype is not None else 1
            chunks.append(math.prod(page.chunks) * itemsize)
    if max(chunks, default=0) > MAX_CHUNK_BYTES:
        raise UnsupportedSlideError(
            f"{slide.path}: a stored tile or strip decodes to {max(chunks) / 2**20:.0f} MiB "
            f"(limit {MAX_CHUNK_BYTES // 2**20} MiB): damaged header, or a plain TIFF too large to read piecewise"
        )


def _dicom_member(directory: Path) -> Path:
    members = sorted(p for p in directory.iterdir() if p.suffix.lower() == ".dcm" and _regular(p))
    if not members:
        raise UnsupportedSlideError(f"{directory}: is a directory without DICOM files, not a slide")
    return members[0]


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def _is_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _dicom_view(path: Path) -> tempfile.TemporaryDirectory[str] | None:
    """For a DICOM file, a private folder of links to the regular DICOM files beside it: openslide opens every file
    of a DICOM file's folder, and a FIFO there would block it forever (other special files, partial downloads and
    unrelated slides stay out too). None for other formats."""
    if not _is_dicom(path):
        return None
    scratch = tempfile.TemporaryDirectory(prefix="slidestream-dicom-")
    # shard builders (forked) never close their slide and leave through multiprocessing, which skips atexit
    multiprocessing.util.Finalize(scratch, scratch.cleanup, exitpriority=0)
    for member in path.parent.iterdir():
        if _regular(member) and _is_dicom(member):
            os.symlink(member.resolve(), Path(scratch.name) / member.name)
    return scratch


def _try_openslide(opened: Path, path: Path) -> openslide.OpenSlide | None:
    try:
        return openslide.OpenSlide(opened)
    except openslide.OpenSlideUnsupportedFormatError:
        return None
    except openslide.OpenSlideError as error:
        raise UnsupportedSlideError(f"{path}: damaged slide: {first_line(error)}") from None


def _try_tifffile(path: Path, complaints: list[logging.LogRecord]) -> tifffile.TiffFile | None:
    """The file through tifffile, or None when it is no TIFF (openslide may still read it, as DICOM). A TIFF whose
    structure points past its end or that tifffile can only partly parse is damaged (truncated, or bytes flipped):
    refused, since openslide would read such a file as far as it goes and a send would publish a partial slide."""
    try:
        tiff = tifffile.TiffFile(path)
    except Exception:  # noqa: BLE001 - not a TIFF, or one too damaged to parse: openslide decides (DICOM)
        return None
    try:
        whole = tiff_structure_whole(tiff)
    except Exception:  # noqa: BLE001 - a damaged structure can fail to parse in any way
        whole = False
    errors = [record for record in complaints if record.levelno >= logging.ERROR]
    if not whole or errors:
        tiff.close()
        detail = f": {first_line(errors[0].getMessage())}" if errors else ""
        raise CorruptSlideError(f"{path}: truncated or damaged TIFF structure{detail}")
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
    """Map level index -> the tiled TIFF page holding exactly that level, where its codec is one we can copy.

    Without openslide the levels are tifffile's own (SubIFD pyramids included); with it, the TIFF page of each of
    openslide's level sizes (tifffile hands out TiffFrames, which carry no tiling, for pages it reads lazily)."""
    if tiff is None:
        return {}
    if osr is None:
        return {index: level.keyframe for index, level in enumerate(tiff.series[0].levels) if _copyable(level.keyframe)}
    candidates = [page for page in tiff.pages if isinstance(page, tifffile.TiffPage) and _copyable(page)]
    pages = {}
    for index, (width, height) in enumerate(osr.level_dimensions):
        for page in candidates:
            if (page.imagewidth, page.imagelength) == (width, height):
                pages[index] = page
                break
    return pages


def _copyable(page: tifffile.TiffPage) -> bool:
    """Tiles that can become chunks of the RGB pyramid as stored: interleaved RGB (a grey or RGBA tile is read as
    pixels and re-encoded)."""
    return (
        page.is_tiled
        and page.compression in _CODECS
        and page.planarconfig == tifffile.PLANARCONFIG.CONTIG
        and page.samplesperpixel == 3
    )


def _mpp(properties: dict[str, str]) -> tuple[float, float] | None:
    mpp_x = properties.get(openslide.PROPERTY_NAME_MPP_X)
    mpp_y = properties.get(openslide.PROPERTY_NAME_MPP_Y)
    if mpp_x and mpp_y:
        return float(mpp_x), float(mpp_y)
    return None
