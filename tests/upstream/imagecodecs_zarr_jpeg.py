# Vendored from imagecodecs v2026.5.10 (github.com/cgohlke/imagecodecs, commit 883b290), imagecodecs/zarr.py:

# Copyright (c) 2026, Christoph Gohlke
# All rights reserved.
#
# Redistribution and use in source and binary forms, with or without
# modification, are permitted provided that the following conditions are met:
#
# 1. Redistributions of source code must retain the above copyright notice,
#    this list of conditions and the following disclaimer.
#
# 2. Redistributions in binary form must reproduce the above copyright notice,
#    this list of conditions and the following disclaimer in the documentation
#    and/or other materials provided with the distribution.
#
# 3. Neither the name of the copyright holder nor the names of its
#    contributors may be used to endorse or promote products derived from
#    this software without specific prior written permission.
#
# THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
# AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
# IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE
# ARE DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE
# LIABLE FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR
# CONSEQUENTIAL DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF
# SUBSTITUTE GOODS OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS
# INTERRUPTION) HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN
# CONTRACT, STRICT LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE)
# ARISING IN ANY WAY OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE
# POSSIBILITY OF SUCH DAMAGE.

#
# The Jpeg Zarr 3 codec and the helpers it uses, unchanged, so that the tests can read our images with upstream's
# own codec class while the registry this project installs from only has imagecodecs 2026.3.6 (no Zarr 3 codecs).
# The one change: register_codecs registers only this codec ({"jpeg": Jpeg} for the module's _CODEC_CLASSES).
# Delete this file once the test extras require imagecodecs >= 2026.5.10 and import imagecodecs.zarr instead.

"""Zarr version 3 JPEG codec implemented using imagecodecs (excerpt of imagecodecs.zarr)."""

from __future__ import annotations

import asyncio
import base64
import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy

import imagecodecs

if TYPE_CHECKING:
    from collections.abc import Container
    from typing import Any, Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer
    from zarr.core.common import JSON

from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import parse_named_configuration


@dataclass(frozen=True)
class Jpeg(ArrayBytesCodec):
    """JPEG codec for Zarr 3."""

    is_fixed_size = False

    level: int | None = None
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

    def __init__(
        self,
        *,
        level: int | None = None,
        bitspersample: int | None = None,
        tables: bytes | None = None,
        header: bytes | None = None,
        colorspace_data: imagecodecs.JPEG8.CS | int | str | None = None,
        colorspace_jpeg: imagecodecs.JPEG8.CS | int | str | None = None,
        subsampling: str | tuple[int, int] | None = None,
        optimize: bool | None = None,
        smoothing: bool | None = None,
        lossless: bool | None = None,
        predictor: int | None = None,
    ) -> None:
        if not imagecodecs.JPEG8.available:
            msg = 'imagecodecs.JPEG8 not available'
            raise ValueError(msg)
        _setattrs(
            self,
            level=None if level is None else int(level),
            bitspersample=(
                None if bitspersample is None else int(bitspersample)
            ),
            tables=tables,
            header=header,
            colorspace_data=_enum_name(colorspace_data, imagecodecs.JPEG8.CS),
            colorspace_jpeg=_enum_name(colorspace_jpeg, imagecodecs.JPEG8.CS),
            subsampling=subsampling,
            optimize=None if optimize is None else bool(optimize),
            smoothing=None if smoothing is None else bool(smoothing),
            lossless=None if lossless is None else bool(lossless),
            predictor=None if predictor is None else int(predictor),
        )

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        cfg = _parse_config(data, 'jpeg')
        for key in ('header', 'tables'):
            value = cfg.get(key)
            if value is not None and isinstance(value, str):
                cfg[key] = base64.b64decode(value.encode())
        return cls(**cfg)

    def to_dict(self) -> dict[str, JSON]:
        cfg: dict[str, JSON] = {}
        for key in (
            'level',
            'bitspersample',
            'colorspace_data',
            'colorspace_jpeg',
            'subsampling',
            'optimize',
            'smoothing',
            'lossless',
            'predictor',
        ):
            value = getattr(self, key)
            if value is not None:
                cfg[key] = value
        for key in ('tables', 'header'):
            value = getattr(self, key)
            if value is not None:
                cfg[key] = base64.b64encode(value).decode()
        if cfg:
            return {'name': 'imagecodecs_jpeg', 'configuration': cfg}
        return {'name': 'imagecodecs_jpeg'}

    def _decode_sync(
        self, chunk_bytes: Buffer, chunk_spec: ArraySpec
    ) -> NDBuffer:
        buf: bytes | numpy.ndarray[Any, Any] = chunk_bytes.as_numpy_array()
        if self.header is not None:
            buf = b''.join((self.header, bytes(buf), b'\xff\xd9'))
        decoded = imagecodecs.jpeg8_decode(
            buf,
            tables=self.tables,
            colorspace=self.colorspace_jpeg,
            outcolorspace=self.colorspace_data,
        )
        return chunk_spec.prototype.nd_buffer.from_numpy_array(
            decoded.reshape(chunk_spec.shape)
        )

    async def _decode_single(
        self, chunk_bytes: Buffer, chunk_spec: ArraySpec
    ) -> NDBuffer:
        return await asyncio.to_thread(
            self._decode_sync, chunk_bytes, chunk_spec
        )

    def _encode_sync(
        self, chunk_array: NDBuffer, chunk_spec: ArraySpec
    ) -> Buffer | None:
        arr = numpy.atleast_2d(numpy.squeeze(chunk_array.as_numpy_array()))
        encoded = imagecodecs.jpeg8_encode(
            arr,
            level=self.level,
            colorspace=self.colorspace_data,
            outcolorspace=self.colorspace_jpeg,
            subsampling=self.subsampling,
            optimize=self.optimize,
            smoothing=self.smoothing,
            lossless=self.lossless,
            predictor=self.predictor,
        )
        return chunk_spec.prototype.buffer.from_bytes(encoded)

    async def _encode_single(
        self, chunk_array: NDBuffer, chunk_spec: ArraySpec
    ) -> Buffer | None:
        return await asyncio.to_thread(
            self._encode_sync, chunk_array, chunk_spec
        )

    def compute_encoded_size(
        self, input_byte_length: int, chunk_spec: ArraySpec
    ) -> int:
        raise NotImplementedError



def register_codecs(
    codecs: Container[str] | None = None,
    *,
    verbose: bool = True,
) -> None:
    """Register imagecodecs zarr 3 codecs with zarr."""
    from zarr.registry import register_codec

    for name, cls in {"jpeg": Jpeg}.items():
        if codecs is not None and name not in codecs:
            continue
        key = f'imagecodecs_{name}'
        try:
            register_codec(key, cls)
        except Exception:
            if verbose:
                logging.getLogger(__name__).warning(
                    'zarr codec %s registration failed', key
                )


def _parse_config(data: dict[str, JSON], name: str) -> Any:
    """Parse named configuration, returning the configuration dict."""
    _, configuration = parse_named_configuration(
        data, f'imagecodecs_{name}', require_configuration=False
    )
    return configuration if configuration is not None else {}


def _enum_name(
    value: int | str | enum.Enum | None, enum_cls: type[enum.Enum], /
) -> str | None:
    """Normalize int, str, or enum member to canonical enum name string."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, enum_cls):
        return value.name
    if isinstance(value, enum.Enum):
        return enum_cls(value.value).name
    return enum_cls(value).name


def _setattrs(obj: object, /, **kwargs: Any) -> None:
    """Set attributes on a frozen dataclass instance."""
    for k, v in kwargs.items():
        object.__setattr__(obj, k, v)
