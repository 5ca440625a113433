"""A reader's JPEG codec as imagecodecs' own Zarr 3 codec presents itself, for tests that read our store without
slidestream.

imagecodecs 2026.5.10 (release notes: "Add Zarr 3 compatible codecs") registers `imagecodecs_jpeg` with the
configuration keys below and refuses any other key (`Jpeg.__init__() got an unexpected keyword argument 'quality'`
was how our old metadata failed with it); it decodes with `jpeg8_decode` and no colour space, so libjpeg reads
each chunk's Adobe APP14 marker. The registry this project installs from has no release with it yet, so this is
written here against that interface (not copied from it) and loaded only by the clean-reader test's subprocess.
Delete it once the test extras can require that imagecodecs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Self

import imagecodecs
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.array_spec import ArraySpec
from zarr.core.buffer import Buffer, NDBuffer
from zarr.registry import register_codec

NAME = "imagecodecs_jpeg"
KEYS = frozenset(
    {"level", "bitspersample", "tables", "header", "colorspace_data", "colorspace_jpeg", "subsampling", "optimize", "smoothing", "lossless", "predictor"}
)


@dataclass(frozen=True)
class UpstreamJpeg(ArrayBytesCodec):
    """Decode-only: what an independent reader needs."""

    is_fixed_size = False
    configuration: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        configuration = data.get("configuration", {})
        unknown = sorted(set(configuration) - KEYS)
        if unknown:
            raise TypeError(f"Jpeg.__init__() got an unexpected keyword argument {unknown[0]!r}")
        return cls(tuple(sorted(configuration.items())))

    def to_dict(self) -> dict[str, Any]:
        return {"name": NAME, "configuration": dict(self.configuration)}

    def evolve_from_array_spec(self, array_spec: ArraySpec) -> Self:
        return self

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        pixels = imagecodecs.jpeg8_decode(chunk_bytes.to_bytes())
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(pixels.reshape(chunk_spec.shape))

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        raise NotImplementedError("a reader only")

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError("JPEG output size is data dependent")


def register_codecs() -> None:
    register_codec(NAME, UpstreamJpeg)
