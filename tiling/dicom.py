"""A slide as a DICOM VL Whole Slide Microscopy Image series (Supplement 145), for hospitals that archive in a PACS.

wsidicom writes the files (datasets, TILED_FULL frame layout, basic offset tables, the added pyramid levels); this
module feeds it a `JpegTiles` source and builds the metadata: the de-identified `slides.Slide` (`SlideTiles`), or a
case already converted or sent (`slidestream.stored.StoredCase`, whose JPEG chunks are such frames already). Each
level is one instance of one series. Where a level's tiles are baseline JPEG they are copied as DICOM frames byte for
byte (a slide's made self-contained by `tiling.jpeg.self_contained_jpeg`, the same as OME-Zarr chunks); other levels
(JPEG 2000, deflate, strips, formats read only through openslide, zstd chunks) are re-encoded as baseline JPEG at
`quality`, and so is a tile absent from the source (a sparse file's, a case's omitted background chunk) or one whose
JPEG colour model differs from its level's first tile. Levels down to
one tile are added by wsidicom, downsampled from the one above and re-encoded, so a viewer gets a pyramid even from a
single-level slide. The case ID is the only identifier: PatientID, ContainerIdentifier and the specimen identifier
are the case ID, everything else about patient, study and scanner is empty; the objective's power is kept where the
slide records it.

Every level says what its frames are (`_describe_frames`, once wsidicom has written them): lossy JPEG
(LossyImageCompression "01", ISO_10918_1, the ratio of the frames as written), and a level whose pixels slidestream or
wsidicom computed (re-encoded, or downsampled from the level above) is DERIVED, not ORIGINAL.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import pydicom
from pydicom.uid import UID, JPEGBaseline8Bit, generate_uid
from wsidicom import ImageData, WsiDicom
from wsidicom.codec import Encoder, JpegSettings
from wsidicom.codec.settings import Channels, Subsampling
from wsidicom.geometry import Point, Size, SizeMm
from wsidicom.instance import WsiDataset, WsiInstance
from wsidicom.metadata import (
    Equipment,
    Image,
    ImageCoordinateSystem,
    ImageType,
    Label,
    LossyCompression,
    Objectives,
    OpticalPath,
    Patient,
    Pyramid,
    Series,
    Study,
    WsiMetadata,
)
from wsidicom.metadata import Slide as SlideMetadata
from wsidicom.metadata.patient import PatientDeIdentification
from wsidicom.metadata.sample import SlideSample
from wsidicom.metadata.schema.dicom import WsiMetadataDicomSchema
from wsidicom.source import Source

from slides import CorruptSlideError, Level, Slide, SlidestreamError
from slides.jpeg import RGB, SOS, YCBCR, colour_model
from tiling.jpeg import ADOBE_RGB, DEFAULT_QUALITY, self_contained_jpeg
from tiling.local import published

# what a PACS shows as the de-identification method (DeidentificationMethod is LO: at most 64 characters)
DEIDENTIFICATION_METHOD = "slidestream: allow-listed metadata, JPEG COM/APPn removed"
DEFAULT_TILE = 256  # frame side for levels without stored tiles
# JPEG encoder settings for the photometric interpretations the WSI IOD allows for JPEG baseline frames: not
# YBR_FULL (YCbCr without chroma subsampling, as slidestream's own re-encoded chunks): such tiles are re-encoded
ENCODINGS = {
    "RGB": {"channels": Channels.RGB, "subsampling": Subsampling.R444},  # libjpeg marks it with Adobe "no transform"
    "YBR_FULL_422": {"channels": Channels.YBR, "subsampling": Subsampling.R422},
}
LEVEL_TOLERANCE = 0.01  # wsidicom's, on the log2 scale of a level's downsample
BASELINE = 0xC0  # SOF0: the only JPEG process of DICOM's JPEG Baseline (Process 1) transfer syntax
JPEG_METHOD = "ISO_10918_1"  # LossyImageCompressionMethod of JPEG frames
PIXEL_DATA = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian: where a file's frames begin
ITEM, SEQUENCE_END = 0xE000FFFE, 0xE0DDFFFE  # (FFFE,E000) and (FFFE,E0DD) as little-endian 32-bit words


class NoResolutionError(SlidestreamError, ValueError):
    """The slide records no pixel size, and DICOM WSI needs one (PixelSpacing, ImagedVolumeWidth)."""


class JpegTiles(Protocol):
    """What the export reads: the levels' geometry and pixels, and their tiles as self-contained JPEG where stored so."""

    levels: list[Level]
    mpp: tuple[float, float] | None

    @property
    def source(self) -> str:
        """The input as error messages name it (a path or URL)."""

    def jpeg_tiles(self, level: int) -> bool:
        """Whether `jpeg_frame` may hand out this level's tiles (of the level's tile size)."""

    def jpeg_frame(self, level: int, row: int, col: int) -> bytes | None:
        """One tile as a self-contained JPEG, or None where the source has none (sparse, background)."""

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB pixels (height, width, 3), `location` in level-0 pixels, as `slides.Slide.read_region`."""


class SlideTiles:
    """A de-identified slide as `JpegTiles`: its JPEG tiles with COM/APPn stripped, JPEGTables merged in, untransformed
    RGB (Aperio's) marked with Adobe "no transform", YCbCr left as it is whatever the TIFF says (the same bytes as the
    OME-Zarr chunks)."""

    def __init__(self, slide: Slide) -> None:
        self._slide = slide
        self.levels = slide.levels
        self.mpp = slide.mpp

    @property
    def source(self) -> str:
        return str(self._slide.path)

    def jpeg_tiles(self, level: int) -> bool:
        return self._slide.raw_codec(level) == "jpeg"

    def jpeg_frame(self, level: int, row: int, col: int) -> bytes | None:
        raw = self._slide.raw_tile(level, row, col)
        if raw is None:
            return None
        try:
            return self_contained_jpeg(raw.data, raw.jpeg_tables, rgb=raw.photometric == "rgb")
        except ValueError as error:
            raise CorruptSlideError(f"{self._slide.path}: a JPEG tile of level {level}: {error}") from None

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        return self._slide.read_region(location, level, size)


@dataclass(frozen=True)
class DicomExport:
    """What `export_dicom` wrote: the instance files (one per level), their total size, and how many levels are
    copied JPEG tiles rather than re-encoded."""

    files: list[Path]
    bytes: int
    passthrough_levels: int


def export_dicom(
    slide: Slide | JpegTiles,
    out: Path,
    case_id: str,
    mpp: float | None = None,
    quality: int = DEFAULT_QUALITY,
    overwrite: bool = False,
    patient: Patient | None = None,
    accession: str | None = None,
) -> DicomExport:
    """Write `slide` (a de-identified slide, or a stored case) as a DICOM WSI series into the directory `out`,
    published only when complete.

    `mpp` (micrometres per level-0 pixel) is required when the slide records none; a slide's own value wins over it
    only when `mpp` is None. Files go to `OUT.partial/`, renamed to `OUT` after the last one (`tiling.local.published`).
    `patient` and `accession`: only for the hospital's own PACS, at the hospital (`hospital.pacs`): the series is then
    filed under that patient and order, and says no identity was removed; every other export names the case alone.
    """
    tiles = SlideTiles(slide) if isinstance(slide, Slide) else slide
    spacing_um = tiles.mpp or ((mpp, mpp) if mpp else None)
    if spacing_um is None:
        raise NoResolutionError(
            f"{tiles.source}: the slide records no pixel size (mpp), which DICOM WSI requires; state it with --mpp"
        )
    out = Path(out)
    metadata = _metadata(case_id, spacing_um, slide.objective_power if isinstance(slide, Slide) else None, patient, accession)
    base, *others = _pyramid_levels(tiles.levels)
    levels = [SlideLevel(tiles, base, spacing_um, quality)]  # its frames decide the series' photometric and frame size
    levels += [SlideLevel(tiles, index, spacing_um, quality, levels[0]) for index in others]
    source = LevelsOnlySource([_instance(metadata, level) for level in levels])
    with published(out, overwrite) as partial, WsiDicom(source) as wsi:
        written = wsi.save(partial, add_missing_levels=True, include_labels=False, include_overviews=False,
                           include_thumbnails=False, workers=1)
        copied = {level.image_size.width for level in levels if level.passthrough}
        for path in written:
            _describe_frames(partial / Path(path).name, copied, levels[0].image_size.width)
        names = sorted(Path(path).name for path in written)
    files = [out / name for name in names]
    return DicomExport(files, sum(path.stat().st_size for path in files), sum(level.passthrough for level in levels))


def _pyramid_levels(levels: list[Level]) -> list[int]:
    """The slide's levels that DICOM's pyramid can hold as they are: wsidicom places each level at a power-of-two
    downsample (within 1% on the log2 scale); a level between those (a generic TIFF's 300 -> 37 px is 8.1x) is left
    out, and wsidicom makes that step of the pyramid from the level below it instead."""
    base_width, base_height = levels[0].width, levels[0].height
    kept: dict[int, int] = {}
    for index, level in enumerate(levels):
        steps = [math.log2(base_width / level.width), math.log2(base_height / level.height)]
        nearest = round(steps[0])
        if all(abs(step - nearest) <= LEVEL_TOLERANCE for step in steps) and nearest not in kept:
            kept[nearest] = index
    return list(kept.values())


def _instance(metadata: WsiMetadata, level: SlideLevel) -> WsiInstance:
    """One level's instance; each gets its own dataset (and so its own SOP Instance UID)."""
    base = WsiMetadataDicomSchema().dump(metadata, ImageType.VOLUME, True)  # True: an sRGB ICC profile, needed for colour
    return WsiInstance.create_instance(level, base, ImageType.VOLUME, level.pyramid_index)


def _metadata(case_id: str, spacing_um: tuple[float, float], objective_power: float | None, patient: Patient | None = None,
              accession: str | None = None) -> WsiMetadata:
    """Everything the files say about patient, study and slide: the case ID and de-identification flags only, and
    the objective's power where the slide records it (ObjectiveLensPower: what a viewer's magnification reads).

    The study UID is derived from the case ID, so exports of the same case land in one study; series, pyramid and
    frame of reference are new for each export. StudyID (16 characters at most) is the case ID where it fits.
    """
    pixel_spacing = SizeMm(spacing_um[0] / 1000, spacing_um[1] / 1000)
    objective = Objectives(objective_power=objective_power) if objective_power else None
    return WsiMetadata(
        study=Study(uid=generate_uid(entropy_srcs=["slidestream study", case_id]), identifier=case_id if len(case_id) <= 16 else None,
                    accession_number=accession),
        series=Series(uid=generate_uid(), number=1),
        patient=patient or Patient(
            identifier=case_id,
            de_identification=PatientDeIdentification(identity_removed=True, methods=[DEIDENTIFICATION_METHOD]),
        ),
        equipment=Equipment(manufacturer="slidestream", model_name="slidestream", software_versions=[version("slidestream")]),
        slide=SlideMetadata(identifier=case_id, samples=[SlideSample(identifier=case_id, uid=generate_uid())]),
        pyramid=Pyramid(image=Image(pixel_spacing=pixel_spacing), optical_paths=[OpticalPath(objective=objective)], uid=generate_uid()),
        label=Label(contains_phi=False),
        frame_of_reference_uid=generate_uid(),
        dimension_organization_uids=[generate_uid()],
    )


class SlideLevel(ImageData):
    """One level of the source as wsidicom's image data: its JPEG tiles as they are stored, or its pixels re-encoded
    where they are not JPEG."""

    def __init__(
        self, tiles: JpegTiles, level: int, spacing_um: tuple[float, float], quality: int, base: SlideLevel | None = None
    ) -> None:
        """`base`: the pyramid's base level, whose photometric and frame size every level of wsidicom's pyramid
        must share (stored tiles that differ are re-encoded); None for the base itself."""
        self._tiles = tiles
        self._level = level
        info = tiles.levels[level]
        finest = tiles.levels[0]
        self._downsample = info.downsample
        stored_jpeg = tiles.jpeg_tiles(level)
        self._tile = Size(info.tile_width, info.tile_height) if stored_jpeg else Size(DEFAULT_TILE, DEFAULT_TILE)
        self._size = Size(info.width, info.height)
        # the level's spacing from its size (openslide's downsample is level-0 width / level width, rounded)
        self._spacing = SizeMm(spacing_um[0] * finest.width / info.width / 1000, spacing_um[1] * finest.height / info.height / 1000)
        self.pyramid_index = round(math.log2(finest.width / info.width))
        stored = self._stored_photometric() if stored_jpeg else None
        if base is not None and (stored, self._tile) != (base.photometric_interpretation, base.tile_size):
            stored = None
        self.passthrough = stored is not None
        if not self.passthrough:  # frames of our own size (an NDPI's stored "tiles" are 8-row strips), or the base's
            self._tile = base.tile_size if base is not None else Size(DEFAULT_TILE, DEFAULT_TILE)
        self._photometric = stored or (base.photometric_interpretation if base is not None else "YBR_FULL_422")
        # every frame this level encodes (sparse tiles, non-JPEG levels) and every level wsidicom adds above it
        # (it uses the base level's encoder and photometric) must match the photometric the dataset states
        super().__init__(Encoder.create_for_settings(JpegSettings(quality, **ENCODINGS[self._photometric])))

    def _stored_photometric(self) -> str | None:
        """What the stored JPEG holds, from the first stored tile (`frame_photometric`). None where the tiles cannot
        be the WSI IOD's JPEG baseline frames (progressive, lossless, 12-bit, YCbCr 4:4:4) or there are none: the
        level is re-encoded."""
        across, down = self.tiled_size.width, self.tiled_size.height
        for index in range(across * down):
            frame = self._frame(index // across, index % across)
            if frame is not None:
                photometric = frame_photometric(frame)
                return photometric if photometric in ENCODINGS else None
        return None

    # -- what wsidicom asks about the image ----------------------------------------------------------------------
    @property
    def transfer_syntax(self) -> UID:
        return JPEGBaseline8Bit

    @property
    def image_size(self) -> Size:
        return self._size

    @property
    def tile_size(self) -> Size:
        return self._tile

    @property
    def pixel_spacing(self) -> SizeMm:
        return self._spacing

    @property
    def imaged_size(self) -> SizeMm:
        return SizeMm(self._spacing.width * self._size.width, self._spacing.height * self._size.height)

    @property
    def samples_per_pixel(self) -> int:
        return 3

    @property
    def photometric_interpretation(self) -> str:
        return self._photometric

    @property
    def bits(self) -> int:
        return 8

    @property
    def image_coordinate_system(self) -> ImageCoordinateSystem | None:
        return None

    @property
    def thread_safe(self) -> bool:
        return False  # tifffile's reader of non-JPEG levels shares one file handle

    @property
    def lossy_compression(self) -> list[LossyCompression] | None:
        return []  # stated by `_describe_frames` once the frames are written and their ratio is known

    @property
    def transcoder(self) -> Encoder | None:
        return None if self.passthrough else self.encoder

    @property
    def blank_color(self) -> tuple[int, int, int]:
        return (255, 255, 255)

    # -- tiles ---------------------------------------------------------------------------------------------------
    def get_encoded_tile(self, tile: Point, z: float, path: str) -> bytes:
        if self.passthrough:
            frame = self._frame(tile.y, tile.x)
            if frame is not None and frame_photometric(frame) == self._photometric:
                return frame
        return self.encoder.encode(self._read(tile))

    def _frame(self, row: int, col: int) -> bytes | None:
        """A stored tile as a frame. Cases sent before the colour model came from the stream carry Adobe "RGB, no
        transform" before the JFIF marker of YCbCr tiles (QuPath's): libjpeg lets JFIF win, but pydicom's decoder
        takes the Adobe word, so the contradiction is dropped (a 0xFF 0xEE pair cannot occur in scan data)."""
        frame = self._tiles.jpeg_frame(self._level, row, col)
        if frame is not None and ADOBE_RGB in frame and colour_model(frame) == YCBCR:
            return frame.replace(ADOBE_RGB, b"", 1)
        return frame

    def get_decoded_tile(self, tile_point: Point, z: float, path: str, cache: bool = True) -> np.ndarray:
        return self._read(tile_point)

    def _read(self, tile: Point) -> np.ndarray:
        """The tile's pixels through the slide's reader (white beyond the level's edge, as glass)."""
        location = (round(tile.x * self._tile.width * self._downsample), round(tile.y * self._tile.height * self._downsample))
        return self._tiles.read_region(location, self._level, (self._tile.width, self._tile.height))


def _describe_frames(path: Path, copied: set[int], base_width: int) -> None:
    """State in the file at `path` what its frames are, which wsidicom cannot know: lossy JPEG at the ratio of the
    frames as written, and DERIVED (RESAMPLED below the base level) unless they are the source's tiles (`copied`:
    the widths of those levels, of `base_width` and below). The header is written again, the frames copied after it
    unchanged."""
    with path.open("rb") as source:
        dataset = pydicom.dcmread(source, stop_before_pixels=True)
        frames_at = source.tell()
        if source.read(4) != PIXEL_DATA:
            raise ValueError(f"{path}: no pixel data after the header")
        source.seek(frames_at)
        compressed = _frame_bytes(source)
        source.seek(frames_at)
        if dataset.TotalPixelMatrixColumns not in copied:
            resampled = "NONE" if dataset.TotalPixelMatrixColumns == base_width else "RESAMPLED"
            dataset.ImageType = ["DERIVED", "PRIMARY", "VOLUME", resampled]
        pixels = dataset.NumberOfFrames * dataset.Rows * dataset.Columns * dataset.SamplesPerPixel * dataset.BitsAllocated // 8
        dataset.LossyImageCompression = "01"
        dataset.LossyImageCompressionMethod = [JPEG_METHOD]
        dataset.LossyImageCompressionRatio = [pydicom.valuerep.DSfloat(round(pixels / compressed, 2), auto_format=True)]
        described = path.with_name(f"{path.name}.described")
        with described.open("wb") as target:
            dataset.save_as(target, enforce_file_format=True)
            shutil.copyfileobj(source, target)
    described.replace(path)


def _frame_bytes(file: BinaryIO) -> int:
    """Bytes of the encapsulated frames of the pixel data element that `file` is positioned at (item headers and the
    offset table not counted, as DICOM's compression ratio is computed); only the item headers are read."""
    file.seek(12, 1)  # tag, VR, two reserved bytes, undefined length
    total, first = 0, True
    while True:
        header = file.read(8)
        if len(header) < 8:
            raise ValueError("the frames end early")
        tag, length = int.from_bytes(header[:4], "little"), int.from_bytes(header[4:], "little")
        if tag == SEQUENCE_END:
            return total
        if tag != ITEM:
            raise ValueError(f"no frame item at byte {file.tell() - 8}")
        total += 0 if first else length  # the first item is the basic offset table
        first = False
        file.seek(length, 1)


def frame_photometric(jpeg: bytes) -> str | None:
    """The DICOM photometric interpretation of a self-contained JPEG, from its own colour model
    (`slides.jpeg.colour_model`, as any decoder reads the frame): "RGB" for untransformed RGB (Aperio's tiles, marked
    by `self_contained_jpeg`), else YCbCr, "YBR_FULL_422" when the chroma is subsampled. None for a JPEG that is not
    8-bit 3-component baseline (SOF0), which DICOM's JPEG Baseline excludes."""
    pos = 2
    while pos + 4 <= len(jpeg) and jpeg[pos] == 0xFF and jpeg[pos + 1] != SOS:
        marker, length = jpeg[pos + 1], int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a frame header (SOFn)
            if marker != BASELINE or jpeg[pos + 4] != 8 or jpeg[pos + 9] != 3:
                return None
            sampling = {jpeg[pos + 10 + 3 * c + 1] for c in range(3)}
            return "RGB" if colour_model(jpeg) == RGB else "YBR_FULL" if len(sampling) == 1 else "YBR_FULL_422"
        pos += 2 + length
    return None


class LevelsOnlySource(Source):
    """The level instances made from the slide; no label, overview or thumbnail (the label shows the patient)."""

    def __init__(self, levels: list[WsiInstance]) -> None:
        super().__init__()
        self._levels = levels

    @property
    def base_dataset(self) -> WsiDataset:
        return self._levels[0].dataset

    @property
    def level_instances(self) -> list[WsiInstance]:
        return self._levels

    @property
    def label_instances(self) -> list[WsiInstance]:
        return []

    @property
    def overview_instances(self) -> list[WsiInstance]:
        return []

    @property
    def thumbnail_instances(self) -> list[WsiInstance]:
        return []

    @property
    def annotation_instances(self) -> list:  # type: ignore[type-arg]
        return []

    def close(self) -> None:
        """The slide belongs to the caller."""

