"""A Zarr v3 codec that stores each (y, x, 3) uint8 chunk as one self-contained baseline JPEG.

Self-contained JPEG chunks can be served to a browser byte for byte and can be copied from TIFF tiles without
re-encoding. Registered with zarr through the `zarr.codecs` entry point (and on import of this module), so any
reader with slidestream installed can open our images.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Self

import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.array_spec import ArraySpec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.registry import register_codec

from tiling.jpeg import CODEC_NAME, DEFAULT_QUALITY, decode_jpeg, encode_jpeg


@dataclass(frozen=True)
class JpegCodec(ArrayBytesCodec):
    """JPEG for (y, x, 3) uint8 chunks; put a transpose codec before it for (c, y, x) arrays."""

    is_fixed_size = False
    quality: int = DEFAULT_QUALITY

    @classmethod
    def from_dict(cls, data: dict) -> Self:  # type: ignore[type-arg]
        return cls(**data.get("configuration", {}))

    def to_dict(self) -> dict:  # type: ignore[type-arg]
        return {"name": CODEC_NAME, "configuration": {"quality": self.quality}}

    def evolve_from_array_spec(self, array_spec: ArraySpec) -> Self:
        return replace(self)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        pixels = decode_jpeg(chunk_bytes.to_bytes())
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(pixels.reshape(chunk_spec.shape))

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        encoded = encode_jpeg(np.ascontiguousarray(chunk_array.as_numpy_array()), self.quality)
        return chunk_spec.prototype.buffer.from_bytes(encoded)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("JPEG output size is data dependent")


register_codec(CODEC_NAME, JpegCodec)
