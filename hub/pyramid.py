"""The hub completes the pyramid: the in-between levels a send leaves out are built from what arrived.

A send does not carry the levels `tiling` downsamples from a level stored as the scanner's own JPEG tiles (the
manifest's `hub_levels` and `hub_planned`, see `transfer.manifest`). Once every stored shard under one of their
shards has arrived, the hub reads those chunks from the store and builds the shard with `tiling`'s own code
(`downsample_shard`: the filter, codec, quality and shard layout the writer uses, the same bytes a
`send --full-pyramid` uploads), writes it verified, and lists it in its own record (`caseformat.results.PyramidRecord`),
never in the sender's manifest. The builds are deterministic, so a shard written twice (a hub that died after the
PUT and before the record, two hubs racing for an expired lease, a station that saw no hub within its `send
--hub-wait` and built the levels itself: `transfer.options.SendOptions.hub_wait`) is written with the same bytes.
The image's metadata is held to `caseformat.results.check_array`'s bounds before a shard is sized by it.

Every stored shard is verified before a chunk of it is used (its index's CRC32C, and each chunk's where the image
has them, `tiling.shard_format.verified_chunks`): a hub shard over a corrupt one is not built, and the corrupt shard is
listed in the slide version's corrupt.json (`inference.sources.update_corrupt`) for the station to send again; a
hub shard listed there is built again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from caseformat.errors import DocumentError
from caseformat.image import ImageAttributes, LevelArray
from caseformat.layout import IMAGE, PYRAMID, image_key
from caseformat.results import Manifest, PyramidRecord
from tiling.plan import ConvertOptions, LevelPlan, shard_address
from tiling.shard_format import CorruptShardError, verified_chunks
from tiling.shard_jobs import StoredLevel, downsample_shard

if TYPE_CHECKING:
    from objectstore.location import Location

RECORD_EVERY = 2.0  # seconds between rewrites of the record during a long pass, so viewers see the level fill in


def complete_pyramid(case: Location, manifest: Manifest, on_progress: Callable[[], None] | None = None) -> tuple[int, bool]:
    """Build every hub shard of `case` whose stored shards have arrived and that is not built yet.

    Returns (shards written now, whether every hub shard is built or known empty). `on_progress` is called after
    each shard (the hub renews its lease there)."""
    hub_levels, hub_planned = manifest.hub_levels, manifest.hub_planned or ()
    if not hub_levels:
        return 0, True
    if not manifest.plan_final:
        return 0, False
    data = case.read_bytes(PYRAMID)
    record = PyramidRecord(manifest.started_at) if data is None else PyramidRecord.read(data, PYRAMID)
    if record.started_at != manifest.started_at:
        record = PyramidRecord(manifest.started_at)  # a rescan under the same case ID: its shards are new
    from inference.sources import corrupt_keys, update_corrupt

    known_corrupt = corrupt_keys(case, manifest.started_at)
    built, empty = set(record.built) - known_corrupt, set(record.empty)  # a corrupt hub shard is built again
    planned, arrived = set(manifest.planned), set(manifest.arrived)
    image = case.child(IMAGE)
    attributes = ImageAttributes.read(image.read_bytes("zarr.json") or b"", image_key("zarr.json"))
    if attributes.chunk is None or attributes.shard_chunks is None:
        raise DocumentError(f"{image_key('zarr.json')}: no slidestream chunk and shard_chunks (not an image slidestream sent)")
    chunk, n, checksums = attributes.chunk, attributes.shard_chunks, attributes.chunk_checksums
    corrupt, whole = set(), set()
    levels: dict[int, tuple[LevelPlan, tuple[int, int], ConvertOptions, int]] = {}
    written, recorded = 0, time.monotonic()

    def save(done: bool) -> None:
        case.write_bytes(PYRAMID, PyramidRecord(manifest.started_at, done, tuple(built), tuple(empty)).to_json())

    for key in hub_planned:
        if key in built or key in empty:
            continue
        index, row, col = _address(key)
        source = int(hub_levels[str(index)])
        step = 2 ** (index - source)  # each level halves the one above
        sources = [f"{source}/c/0/{r}/{c}" for r in range(row * step, (row + 1) * step) for c in range(col * step, (col + 1) * step)]
        if any(k in planned and k not in arrived for k in sources):
            continue  # still travelling
        if index not in levels:
            levels[index] = _level(image, index, source, step, chunk, n)
        level, (width, height), options, fill = levels[index]
        chunks: dict[tuple[int, int], bytes] = {}
        for source_key in sources:
            if source_key in arrived:
                _, source_row, source_col = _address(source_key)
                try:
                    chunks.update(_stored_chunks(image, source_key, source_row, source_col, n, checksums))
                    whole.add(source_key)
                except CorruptShardError:
                    corrupt.add(source_key)
        if any(source_key in corrupt for source_key in sources):
            continue  # never built on: the station sends the corrupt shard again, and a later pass builds this one
        stored = StoredLevel(source, width, height, chunk, chunks, image.url)
        data = downsample_shard(level, row, col, chunk, n, stored, fill, options)
        if data is None:
            empty.add(key)
        else:
            image.write_verified(key, data)
            built.add(key)
            written += 1
        whole.add(key)
        if on_progress is not None:
            on_progress()
        if time.monotonic() - recorded > RECORD_EVERY:
            save(False)
            recorded = time.monotonic()
    update_corrupt(case, manifest.started_at, corrupt, whole)
    done = all(key in built or key in empty for key in hub_planned)
    if written or done != record.complete or len(empty) != len(record.empty):
        save(done)
    return written, done


def _level(image: Location, index: int, source: int, step: int, chunk: int, n: int) -> tuple[LevelPlan, tuple[int, int], ConvertOptions, int]:
    """The hub level as tiling plans it, (width, height) of its stored level, its encoding and fill, from the
    arrays' metadata (what the writer put there, within `check_array`'s bounds)."""
    metadata, stored = (LevelArray.read(image.read_bytes(f"{number}/zarr.json") or b"", image_key(f"{number}/zarr.json")) for number in (index, source))
    for number, array in ((index, metadata), (source, stored)):
        if array.chunk != (3, chunk, chunk) or array.shard != (3, chunk * n, chunk * n) or not array.jpeg or array.quality is None:
            raise DocumentError(f"{image_key(f'{number}/zarr.json')}: unreadable: not a level slidestream writes ({chunk} px JPEG chunks, {n} a shard)")
    height, width = metadata.shape[1], metadata.shape[2]
    level = LevelPlan(index, width, height, float(2**index), source, float(step), False, False, source, True)
    assert metadata.quality is not None
    return level, (stored.shape[2], stored.shape[1]), ConvertOptions(quality=metadata.quality), metadata.fill_value


def _stored_chunks(image: Location, key: str, row: int, col: int, n: int, checksums: bool) -> dict[tuple[int, int], bytes]:
    """The chunks of one stored shard by their (row, column) in the level, as self-contained JPEG bytes, each
    verified (`CorruptShardError` for a shard that is not what was written)."""
    data = image.read_bytes(key)
    if data is None:
        raise LookupError(f"{image.url}/{key}: listed as arrived but not on the store")
    chunks = verified_chunks(data, n, checksums, key)
    return {(row * n + i, col * n + j): chunk for (i, j), chunk in chunks.items()}


def _address(key: str) -> tuple[int, int, int]:
    """(level, row, column) of a shard key the manifest lists."""
    address = shard_address(key)
    if address is None:
        raise ValueError(f"{key!r}: not a shard key")
    return address
