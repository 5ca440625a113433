"""The image's metadata as the writer makes it: the OME-NGFF 0.5 group and level arrays (zarr.json documents) of
image.zarr, with slidestream's own attributes beside them. `caseformat.image` is their one reader; the names both
sides must agree on (the chunk codec, the chunk checksums) are its constants.
"""

from __future__ import annotations

import json
from typing import Any

from caseformat.image import CHUNK_CHECKSUMS, CODEC_NAME
from tiling.pieces import Piece, PieceKind
from tiling.plan import LevelPlan, PyramidPlan
from tiling.tissue import SIGNAL_ABOVE_DARK

FORMAT_VERSION = 1
# the multiscales `type` and `metadata` NGFF 0.5 asks for: how the levels were made
IMAGE_DOWNSCALING = {
    "type": "box",
    "metadata": {
        "description": "each level from the nearest finer level of the source slide by box averaging "
        "(PIL.Image.resize BOX); levels the scanner stored at this size are its own JPEG tiles (passthrough_levels)",
        "method": "PIL.Image.resize",
        "kwargs": {"resample": "BOX"},
    },
}


def metadata_pieces(plan: PyramidPlan, name: str, source_summary: dict) -> list[Piece]:  # type: ignore[type-arg]
    """zarr.json of the image group and of each level array.

    Plain JSON, written without importing zarr: that import alone costs a third of a second on the way to the first
    view. Tests check these documents equal what zarr.create_group / zarr.create_array write.
    """
    datasets = [
        {"path": str(level.index), "coordinateTransformations": [{"type": "scale", "scale": [1.0, *pixel_scale(plan, level.downsample)]}]}
        for level in plan.levels
    ]
    attributes = {
        "ome": {
            "version": "0.5",
            "multiscales": [{"name": name, "axes": image_axes(plan), "datasets": datasets, **IMAGE_DOWNSCALING}],
            "omero": {
                "channels": [
                    {"label": label, "color": color, "window": {"start": 0, "end": 255, "min": 0, "max": 255}, "active": True}
                    for label, color in (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))
                ],
                "rdefs": {"model": "color"},
            },
        },
        "slidestream": {
            "format_version": FORMAT_VERSION,
            "chunk_checksums": CHUNK_CHECKSUMS,
            "chunk": plan.chunk,
            "shard_chunks": plan.shard_chunks,
            "background": {
                "field": "dark-field" if plan.darkfield else "bright-field",
                "fill_value": plan.fill,
                "chunks": _background_chunks(plan),
            },
            "complete_levels": [level.index for level in plan.levels if level.complete],
            "downsampled_levels": {str(level.index): level.downsampled_from for level in plan.levels if level.downsampled_from is not None},
            "passthrough_levels": [level.index for level in plan.levels if level.passthrough],
            "source": source_summary,
        },
    }
    group = {"attributes": attributes, "zarr_format": 3, "node_type": "group"}
    return [_json_piece("zarr.json", group)] + [_json_piece(f"{level.index}/zarr.json", array_metadata(plan, level)) for level in plan.levels]


def _background_chunks(plan: PyramidPlan) -> str:
    """Which chunks the image leaves out, for a reader who wonders whether an absent chunk could hold anything."""
    if plan.options.keep_background:
        return "written"
    if plan.darkfield:
        return f"omitted above the overview levels where no pixel reads more than {SIGNAL_ABOVE_DARK} over the fill value"
    return "omitted above the overview levels"


def array_metadata(plan: PyramidPlan, level: LevelPlan) -> dict[str, Any]:
    """A level's Zarr v3 array: (c, y, x) uint8, one shard per object, JPEG (or zstd) chunks inside."""
    if plan.options.lossless:
        chunk_codecs = [{"name": "bytes"}, {"name": "zstd", "configuration": {"level": 5, "checksum": False}}]
    else:
        chunk_codecs = [
            {"name": "transpose", "configuration": {"order": [1, 2, 0]}},
            {"name": CODEC_NAME, "configuration": {"level": plan.options.quality}},  # imagecodecs.zarr.Jpeg's key
        ]
    sharding = {
        "chunk_shape": [3, plan.chunk, plan.chunk],
        "codecs": chunk_codecs,
        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
        "index_location": "end",
    }
    return {
        "shape": [3, level.height, level.width],
        "data_type": "uint8",
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [3, plan.shard_side, plan.shard_side]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": plan.fill,
        "codecs": [{"name": "sharding_indexed", "configuration": sharding}],
        "attributes": {},
        "dimension_names": ["c", "y", "x"],
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def _json_piece(key: str, document: dict[str, Any]) -> Piece:
    return Piece(key, json.dumps(document, indent=2).encode(), PieceKind.METADATA)


def image_axes(plan: PyramidPlan) -> list[dict[str, str]]:
    """(c, y, x), in micrometres when the mpp is known; the tissue label has the last two."""
    unit = {"unit": "micrometer"} if plan.mpp else {}
    return [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]


def pixel_scale(plan: PyramidPlan, downsample: float) -> list[float]:
    """(y, x) size of a pixel `downsample` level-0 pixels wide, in micrometres when the mpp is known."""
    return [s * downsample for s in ((plan.mpp[1], plan.mpp[0]) if plan.mpp else (1.0, 1.0))]
