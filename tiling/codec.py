"""A Zarr v3 codec that stores each (y, x, 3) uint8 chunk as one self-contained baseline JPEG.

Self-contained JPEG chunks can be served to a browser byte for byte and can be copied from TIFF tiles without
re-encoding. The metadata is imagecodecs' own Zarr 3 JPEG codec (`imagecodecs_jpeg`, imagecodecs >= 2026.5.10,
`imagecodecs.zarr.register_codecs()`), configuration `{"level": quality}`, so a reader without slidestream decodes
our chunks with upstream's class unchanged. This class reads and writes exactly upstream's configuration keys and
decodes the same way (libjpeg picks the colour transform from each stream: the Adobe APP14 marker of pass-through
RGB tiles says "no transform"); it also reads the `quality` key that images written before 2026-07 carry. It is
registered through the `zarr.codecs` entry point and on import of this module, the latter only when no codec of
that name is registered yet (imagecodecs' own, say).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, fields, replace
from typing import Any, Self

import imagecodecs
import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.array_spec import ArraySpec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.core.common import parse_named_configuration
from zarr.registry import get_codec_class, register_codec

from caseformat.image import CODEC_NAME
from tiling.jpeg import DEFAULT_QUALITY

_BYTES_KEYS = ("tables", "header")  # base64 in JSON, as upstream writes them


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """JPEG for (y, x, 3) uint8 chunks; put a transpose codec before it for (c, y, x) arrays.

    The fields are imagecodecs.zarr.Jpeg's configuration keys; `level` is the quality of chunks this codec encodes.
    """

    is_fixed_size = False
    level: int | None = DEFAULT_QUALITY
    bitspersample: int | None = None
    tables: bytes | None = None
    header: bytes | None = None
    colorspace_data: str | None = None
    colorspace_jpeg: str | None = None
    subsampling: str | tuple[int, int] | None = None
    optimize: bool | None = None
    smoothing: bool | None = None
    lossless: bool | None = None
    predictor: int | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        _, configuration = parse_named_configuration(data, CODEC_NAME, require_configuration=False)
        config = dict(configuration or {})
        if "quality" in config:  # the configuration of images written before imagecodecs had a Zarr 3 codec
            config["level"] = config.pop("quality")
        for key in _BYTES_KEYS:
            if isinstance(config.get(key), str):
                config[key] = base64.b64decode(config[key])
        return cls(**config)

    def to_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is not None:
                config[item.name] = base64.b64encode(value).decode() if item.name in _BYTES_KEYS else value
        return {"name": CODEC_NAME, "configuration": config} if config else {"name": CODEC_NAME}

    def evolve_from_array_spec(self, array_spec: ArraySpec) -> Self:
        return replace(self)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        data: Any = chunk_bytes.as_numpy_array()
        if self.header is not None:
            data = b"".join((self.header, bytes(data), b"\xff\xd9"))
        pixels = imagecodecs.jpeg8_decode(data, tables=self.tables, colorspace=self.colorspace_jpeg, outcolorspace=self.colorspace_data)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(pixels.reshape(chunk_spec.shape))

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        encoded = imagecodecs.jpeg8_encode(
            np.ascontiguousarray(chunk_array.as_numpy_array()),
            level=self.level,
            colorspace=self.colorspace_data,
            outcolorspace=self.colorspace_jpeg,
            subsampling=self.subsampling,
            optimize=self.optimize,
            smoothing=self.smoothing,
            lossless=self.lossless,
            predictor=self.predictor,
        )
        return chunk_spec.prototype.buffer.from_bytes(bytes(encoded))

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("JPEG output size is data dependent")


def _registered(name: str) -> bool:
    try:
        get_codec_class(name)  # also loads the entry points, ours among them when slidestream is installed
    except KeyError:
        return False
    return True


if not _registered(CODEC_NAME):
    register_codec(CODEC_NAME, JpegCodec)
