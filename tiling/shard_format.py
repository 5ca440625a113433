"""The shard object's bytes (Zarr v3 sharding with slidestream's chunk checksums): written by `assemble_shard`
and read only through this module, so the writer, the hub, the viewer and analysis agree on one layout and every
reader refuses a damaged shard the same way (`CorruptShardError`).
"""

from __future__ import annotations

import struct

import google_crc32c
import numpy as np

EMPTY = 2**64 - 1  # shard-index marker of an absent chunk (Zarr v3 sharding spec)


def assemble_shard(chunks: dict[tuple[int, int], bytes], n: int) -> bytes:
    """A Zarr v3 shard: chunk bytes, the chunks' CRC32C table (`CHUNK_CHECKSUMS`), then the (offset, nbytes) index
    with its CRC32C, little-endian, at the end. Zarr reads chunks by the index alone, so the table is invisible to it."""
    index = np.full((1, n, n, 2), EMPTY, dtype="<u8")
    checksums = np.zeros((n, n), dtype="<u4")
    body = bytearray()
    for (i, j), data in sorted(chunks.items()):
        index[0, i, j] = (len(body), len(data))
        checksums[i, j] = google_crc32c.value(data)
        body += data
    index_bytes = index.tobytes()
    return bytes(body) + checksums.tobytes() + index_bytes + struct.pack("<I", google_crc32c.value(index_bytes))


class CorruptShardError(ValueError):
    """A shard whose bytes fail their checksums: damaged on the store, so none of it may be shown, scored or built on."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(key, detail)  # both in args: the error survives pickling (a Dask worker raises it)
        self.key, self.detail = key, detail

    def __str__(self) -> str:
        return f"corrupt on the store: {self.key} ({self.detail})"


def shard_index_size(n: int) -> int:
    """Bytes at the end of a shard of n x n chunks: (offset, nbytes) little-endian uint64 per chunk, then a CRC32C."""
    return 16 * n * n + 4


def shard_tail_size(n: int, checksums: bool) -> int:
    """Bytes at the end of a shard that a reader of single chunks needs: the index, after the chunks' CRC32C table
    when the image has one (`CHUNK_CHECKSUMS`)."""
    return shard_index_size(n) + (4 * n * n if checksums else 0)


def read_shard_index(tail: bytes, n: int) -> np.ndarray:
    """The (n, n, 2) offset/nbytes table from a shard's last `shard_index_size(n)` bytes, `assemble_shard`'s layout;
    ValueError when they are too short or fail their CRC32C (`EMPTY` marks an absent chunk)."""
    if len(tail) != shard_index_size(n):
        raise ValueError("shard shorter than its index")
    body, (crc,) = tail[:-4], struct.unpack("<I", tail[-4:])
    if google_crc32c.value(body) != crc:
        raise ValueError("shard index checksum mismatch")
    return np.frombuffer(body, dtype="<u8").reshape(n, n, 2)


def read_shard_tail(tail: bytes, n: int, checksums: bool, key: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(index, chunk CRC32Cs or None) from a shard's last `shard_tail_size(n, checksums)` bytes; `CorruptShardError`
    when the index fails its CRC32C or the tail is too short."""
    if len(tail) != shard_tail_size(n, checksums):
        raise CorruptShardError(key, "shorter than its index")
    try:
        index = read_shard_index(tail[-shard_index_size(n) :], n)
    except ValueError as error:
        raise CorruptShardError(key, str(error)) from None
    table = np.frombuffer(tail[: 4 * n * n], dtype="<u4").reshape(n, n) if checksums else None
    return index, table


def check_chunk(data: bytes, expected: int | None, key: str, i: int, j: int) -> bytes:
    """`data`, chunk (i, j) of shard `key`, once it matches its CRC32C (None: an image written before the table)."""
    if expected is not None and google_crc32c.value(data) != expected:
        raise CorruptShardError(key, f"chunk ({i}, {j}) fails its CRC32C")
    return data


def verified_chunks(data: bytes, n: int, checksums: bool, key: str) -> dict[tuple[int, int], bytes]:
    """Every chunk of a whole shard by its (i, j) inside the shard, each checked against the index's bounds and
    (`checksums`) its CRC32C; `CorruptShardError` for the first that is not what was written."""
    tail = shard_tail_size(n, checksums)
    if len(data) < tail:
        raise CorruptShardError(key, "shorter than its index")
    index, table = read_shard_tail(data[-tail:], n, checksums, key)
    chunks = {}
    for i in range(n):
        for j in range(n):
            offset, nbytes = (int(v) for v in index[i, j])
            if offset == EMPTY:
                continue
            if offset + nbytes > len(data) - tail:
                raise CorruptShardError(key, f"chunk ({i}, {j}) runs past the shard's end")
            chunks[(i, j)] = check_chunk(data[offset : offset + nbytes], None if table is None else int(table[i, j]), key, i, j)
    return chunks
