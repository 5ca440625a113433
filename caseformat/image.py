"""The image's metadata as a reader trusts it: an OME-NGFF 0.5 multiscale group's attributes (`zarr.json` of
image.zarr, of its tissue label and of a heatmap.zarr), with slidestream's own attributes beside them.

`tiling.ngff.metadata_pieces` writes them; every reader (the viewer, the hub, analyze, export) parses them here,
within bounds, so a group that lies about its levels or scales costs its slide one line ("unreadable: ..."), and
the readers cannot drift apart on what a field means.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from caseformat.bounded import Fields, load
from caseformat.results import BIG, MAX_LEVELS, check_array, check_levels

DATASET_PATH = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")  # "0", "1": one key segment, never ".." or "/"
AXES_LIMIT = 5
TRANSFORMS_LIMIT = 4
GROUP_LIMIT = 1024 * 1024  # bytes of a group's zarr.json: its attributes list each level's background chunks
# the image group's `slidestream.chunk_checksums`: every shard holds its chunks' CRC32Cs (n x n little-endian uint32,
# 0 for an absent chunk) just before its index, so a reader of one chunk by byte range can verify it; images
# written before 2026-12 have none (their index still has its CRC32C)
CHUNK_CHECKSUMS = "crc32c-before-index"
MULTISCALES_LIMIT = 8
CODEC_NAME = "imagecodecs_jpeg"  # the chunk codec's name in zarr.json: imagecodecs' own Zarr 3 codec (see tiling.codec)
JPEG_KEYS = frozenset({"level", "quality"})  # a JPEG codec configured with tables or a header has no self-contained chunks
CODECS_LIMIT = 8
ARRAY_LIMIT = 64 * 1024  # bytes of a level's zarr.json


@dataclass(frozen=True)
class Dataset:
    """One level of a multiscale: its array's path in the group and its coordinate transformations."""

    path: str
    scale: tuple[float, ...] = ()
    translation: tuple[float, ...] = ()

    def last_two(self, kind: str, default: tuple[float, float]) -> tuple[float, float]:
        """(y, x) of the level's `kind` ("scale" or "translation") transformation, `default` without one."""
        values = self.scale if kind == "scale" else self.translation
        return (values[-2], values[-1]) if len(values) >= 2 else default

    @classmethod
    def from_fields(cls, fields: Fields) -> Dataset:
        transforms = fields.items("coordinateTransformations", TRANSFORMS_LIMIT, _transform, optional=True)
        scale = next((values for kind, values in transforms if kind == "scale"), ())
        translation = next((values for kind, values in transforms if kind == "translation"), ())
        return cls(fields.text("path", 64, pattern=DATASET_PATH), scale, translation)


@dataclass(frozen=True)
class Multiscale:
    """attributes["ome"]["multiscales"][0]: the levels, finest first, and the space axes' unit."""

    datasets: tuple[Dataset, ...]
    unit: str | None = None  # of the last two (y, x) axes when they agree ("micrometer"), else None

    @property
    def paths(self) -> list[str]:
        return [dataset.path for dataset in self.datasets]

    @property
    def scale(self) -> tuple[float, float]:
        """Level 0's (y, x) scale: its pixel size in `unit` (1, 1 without a scale)."""
        return self.datasets[0].last_two("scale", (1.0, 1.0))

    @classmethod
    def from_attributes(cls, attributes: Any, what: str) -> Multiscale:
        ome = Fields(attributes, what).fields("ome")
        assert ome is not None
        multiscales = ome.raw_list("multiscales", MULTISCALES_LIMIT)
        if not multiscales:
            raise ome.fail("multiscales", "one multiscale image")
        image = Fields(multiscales[0], f"{what}: multiscales[0]")
        datasets = tuple(image.items("datasets", MAX_LEVELS, Dataset.from_fields))
        check_levels(what, len(datasets))
        axes = image.items("axes", AXES_LIMIT, lambda axis: axis.text("unit", 32, optional=True), optional=True)
        unit = axes[-1] if len(axes) >= 2 and axes[-1] == axes[-2] else None
        return cls(datasets, unit)


@dataclass(frozen=True)
class ImageAttributes:
    """An image.zarr group's attributes: the multiscale, and what slidestream's writer added (`tiling.ngff`)."""

    multiscale: Multiscale
    chunk_checksums: bool = False  # each chunk's CRC32C is in the shard (older images: the index's CRC only)
    chunk: int | None = None  # px a side of a chunk
    shard_chunks: int | None = None  # chunks a side of a shard
    mpp: tuple[float, float] | None = None  # the source slide's um/px (x, y), as the source said it
    downsampled_levels: frozenset[int] = frozenset()  # levels built from another level, not read from the source
    darkfield: bool = False

    @classmethod
    def read(cls, data: bytes, what: str) -> ImageAttributes:
        """The attributes in a group's zarr.json as stored."""
        group = Fields(load(data, what, GROUP_LIMIT), what)
        group.choice("node_type", ("group",))
        return cls.from_attributes(group.document.get("attributes"), what)

    @classmethod
    def from_attributes(cls, attributes: Any, what: str) -> ImageAttributes:
        multiscale = Multiscale.from_attributes(attributes, what)
        ours = Fields(attributes, what).fields("slidestream", optional=True)
        if ours is None:  # another tool's OME-Zarr image
            return cls(multiscale)
        source = ours.fields("source", optional=True)
        mpp = source.raw_list("mpp", 2, optional=True) if source is not None else []
        if mpp and not (len(mpp) == 2 and all(_positive(value) for value in mpp)):
            raise ours.fail("source", "an mpp of two positive numbers")
        downsampled = ours.fields("downsampled_levels", optional=True)
        levels = frozenset(int(name) for name in downsampled.document if name.isdigit() and int(name) < MAX_LEVELS) if downsampled else frozenset()
        background = ours.document.get("background")  # a plain string in images before 2026-07
        darkfield = isinstance(background, Mapping) and background.get("field") == "dark-field"
        return cls(multiscale, ours.document.get("chunk_checksums") == CHUNK_CHECKSUMS, ours.integer("chunk", 1, 1 << 16, optional=True),
                   ours.integer("shard_chunks", 1, 1 << 10, optional=True), (float(mpp[0]), float(mpp[1])) if mpp else None,
                   levels, darkfield)  # fmt: skip


@dataclass(frozen=True)
class LevelArray:
    """A level's zarr.json (a Zarr v3 uint8 array) as the readers need it, its geometry within `check_array`'s bounds."""

    shape: tuple[int, ...]
    chunk: tuple[int, ...]  # the chunks a reader decodes (a sharded array's inner chunks)
    shard: tuple[int, ...] | None  # the objects on the store; None: not sharded
    fill_value: int
    jpeg: bool  # `tiling.shard_format`'s layout: (y, x, 3) chunks as self-contained JPEG, the index at the end with a CRC32C
    quality: int | None  # the JPEG codec's level, where it has one

    @classmethod
    def read(cls, data: bytes, what: str) -> LevelArray:
        array = Fields(load(data, what, ARRAY_LIMIT), what)
        array.choice("node_type", ("array",))
        array.choice("data_type", ("uint8",))
        shape = _sizes(array, "shape")
        grid = array.fields("chunk_grid")
        assert grid is not None
        configuration = grid.fields("configuration")
        assert configuration is not None
        outer = _sizes(configuration, "chunk_shape")
        fill = array.integer("fill_value", 0, 255)
        codecs = array.items("codecs", CODECS_LIMIT, lambda codec: codec)
        sharding = codecs[0] if len(codecs) == 1 and codecs[0].document.get("name") == "sharding_indexed" else None
        if sharding is None:
            check_array(what, shape, outer, None, "uint8")
            return cls(shape, outer, None, fill, False, None)
        inner = sharding.fields("configuration")
        assert inner is not None
        chunk = _sizes(inner, "chunk_shape")
        check_array(what, shape, chunk, outer, "uint8")
        chunk_codecs = inner.items("codecs", CODECS_LIMIT, lambda codec: codec)
        index = [codec.document.get("name") for codec in inner.items("index_codecs", CODECS_LIMIT, lambda codec: codec)]
        ours = [codec.document.get("name") for codec in chunk_codecs] == ["transpose", CODEC_NAME]
        transpose = chunk_codecs[0].fields("configuration", optional=True) if ours else None
        encoder = chunk_codecs[1].fields("configuration", optional=True) if ours else None
        jpeg = (transpose is not None and transpose.document.get("order") == [1, 2, 0] and set(encoder.document if encoder else {}) <= JPEG_KEYS
                and inner.document.get("index_location", "end") == "end" and index == ["bytes", "crc32c"])  # fmt: skip
        quality = encoder.integer("level", 1, 100, optional=True) if encoder is not None else None
        return cls(shape, chunk, outer, fill, jpeg, quality)


def _sizes(fields: Fields, name: str) -> tuple[int, ...]:
    sizes = fields.raw_list(name, AXES_LIMIT)
    if not sizes or not all(isinstance(size, int) and not isinstance(size, bool) and 0 < size < BIG for size in sizes):
        raise fields.fail(name, "a list of positive whole numbers")
    return tuple(sizes)


def _transform(fields: Fields) -> tuple[str, tuple[float, ...]]:
    kind = fields.choice("type", ("scale", "translation", "identity"))
    if kind == "identity":
        return kind, ()
    values = fields.raw_list(kind, AXES_LIMIT)
    if not all(isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and abs(value) < BIG for value in values):
        raise fields.fail(kind, "finite numbers")
    if kind == "scale" and not all(value > 0 for value in values):
        raise fields.fail(kind, "positive numbers")
    return kind, tuple(float(value) for value in values)


def _positive(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and 0 < value < BIG

