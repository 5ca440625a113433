"""Corruption caught at read: a stored piece whose bytes are not what was written is refused, reported (the slide's
status and corrupt.json, the centre's request to the station to send it again) and never served, scored or built on.

Against the real S3 server: a case is stored (as tests/viewer/test_viewer.py stores one), then bytes inside one chunk of
one stored shard, or inside a shard's index, are flipped on the store, as a failing disk or a bad copy would.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import S3Server
from support import stored_json
from support.viewer import TRUSTED, Bucket, chunk_of, pyramid, serving, shards

from caseformat.layout import CORRUPT, IMAGE, MANIFEST, PYRAMID, TRIAGE, SlideRef
from caseformat.results import COMPLETE, CorruptRecord, Manifest
from hub.pyramid import complete_pyramid
from inference import analyze_case
from objectstore.location import Location
from slides import open_slide
from tiling import ConvertOptions, PieceKind, plan_pyramid, produce
from tiling.shard_format import EMPTY, read_shard_index, shard_index_size
from transfer.manifest import resend_keys
from viewer.cases import Cases

pytestmark = pytest.mark.slow  # sends, a hub pass and the model

REPO = Path(__file__).resolve().parents[2]
FLIPPED, SCORED, BETWEEN = "h1.flipped", "h1.scored", "h1.between"  # case IDs: station h1's


def flip_in_chunk(shard: bytes, n: int, i: int, j: int) -> bytes:
    """The shard with bytes in the middle of chunk (i, j)'s entropy-coded data inverted (the index untouched)."""
    index = np.frombuffer(shard[-shard_index_size(n) : -4], "<u8").reshape(n, n, 2)
    offset, nbytes = (int(v) for v in index[i, j])
    assert offset != EMPTY
    middle = offset + nbytes // 2
    return shard[:middle] + bytes(b ^ 0xFF for b in shard[middle : middle + 64]) + shard[middle + 64 :]


def flip_in_index(shard: bytes, n: int) -> bytes:
    """The shard with one byte of its chunk index inverted (the chunks untouched)."""
    at = len(shard) - shard_index_size(n) + 3
    return shard[:at] + bytes([shard[at] ^ 0xFF]) + shard[at + 1 :]


def written_chunk(shard: bytes, n: int) -> tuple[int, int]:
    table = read_shard_index(shard[-shard_index_size(n) :], n)
    return next((i, j) for i in range(n) for j in range(n) if table[i, j, 0] != EMPTY)


def test_the_viewer_refuses_a_corrupt_chunk_and_index_never_caching_them_and_serves_the_rest(s3_server: S3Server) -> None:
    bucket = Bucket(s3_server)
    plan, pieces = pyramid()
    n, stored = plan.shard_chunks, shards(pieces)
    bucket.send(FLIPPED)
    ref = SlideRef(FLIPPED)
    root = ref.root
    chunk_shard, index_shard = "0/c/0/0/0", "0/c/0/1/1"
    bucket.put(f"{root}/{IMAGE}/{chunk_shard}", flip_in_chunk(stored[chunk_shard], n, 2, 3))
    bucket.put(f"{root}/{IMAGE}/{index_shard}", flip_in_index(stored[index_shard], n))
    with serving(bucket.storage()) as served:
        token = served.token(FLIPPED)
        tile = f"/api/cases/{FLIPPED}/slides/s1/v1/tiles/0"
        refused = served.get(f"{tile}/2/3", token)
        assert refused.status_code == 502 and refused.headers["cache-control"] == "no-store"
        assert f"corrupt on the store: {root}/{IMAGE}/{chunk_shard}" in refused.json()["detail"]
        beside = served.get(f"{tile}/2/4", token)  # the same shard's other chunks are whole: served as stored
        assert beside.status_code == 200 and beside.content == chunk_of(stored[chunk_shard], n, 2, 4)
        assert "immutable" in beside.headers["cache-control"]
        unreadable = served.get(f"{tile}/{n}/{n}", token)  # any chunk of the shard whose index is corrupt
        assert unreadable.status_code == 502 and unreadable.headers["cache-control"] == "no-store"
        assert f"corrupt on the store: {root}/{IMAGE}/{index_shard}" in unreadable.json()["detail"]
        assert served.get(f"{tile}/{n}/{n}", token).status_code == 502  # refused every time, never cached whole
        elsewhere = served.get(f"{tile}/0/{n}", token)
        assert elsewhere.status_code == 200 and elsewhere.content == chunk_of(stored["0/c/0/0/1"], n, 0, 0)
        status = served.get(f"/api/cases/{FLIPPED}/slides/s1/v1/status", token).json()
        assert status["corrupt"] == [chunk_shard, index_shard]
    request = CorruptRecord.read(bucket.get(ref.centre_key(CORRUPT)))  # what the station is asked to send again
    manifest = json.loads(bucket.get(ref.key(MANIFEST)))
    assert request.keys == (chunk_shard, index_shard) and request.started_at == manifest["started_at"]
    assert resend_keys(Manifest.from_document(manifest), request) == [chunk_shard, index_shard]  # the sender's to-do


def test_analysis_leaves_tiles_of_a_corrupt_shard_unscored_and_the_map_not_final_until_it_is_sent_again(s3_server: S3Server) -> None:
    bucket = Bucket(s3_server)
    plan, pieces = pyramid()
    n, stored = plan.shard_chunks, shards(pieces)
    bucket.send(SCORED)
    ref = SlideRef(SCORED)
    root = ref.root
    key = "0/c/0/0/0"  # level 0, where the model reads this slide
    bucket.put(f"{root}/{IMAGE}/{key}", flip_in_chunk(stored[key], n, *written_chunk(stored[key], n)))
    location = Location.slide_version(Location.parse(f"s3://{bucket.name}/{bucket.prefix}", bucket.endpoint_url), ref)

    heatmap = analyze_case(location)
    side = plan.shard_side / heatmap.grid.tile  # tiles per shard side: the model reads level 0 of this slide
    rows, cols = np.nonzero(heatmap.tissue)
    inside = (rows < side) & (cols < side)  # the corrupt shard's tiles (and those reaching into it)
    assert inside.any() and (~inside).any()
    assert not heatmap.scored[rows[inside], cols[inside]].any()
    assert heatmap.scored[rows[~inside], cols[~inside]].all()
    assert heatmap.complete is False and stored_json(location, TRIAGE)["complete"] is False  # never published as final
    assert CorruptRecord.read(location.read_bytes(CORRUPT) or b"").keys == (key,)
    assert CorruptRecord.read(bucket.get(ref.centre_key(CORRUPT))).keys == (key,)  # in the centre's folder, for the station

    bucket.put(f"{root}/{IMAGE}/{key}", stored[key])  # the station sends it again
    heatmap = analyze_case(location, heatmap=heatmap)
    assert heatmap.complete is True and heatmap.scored[heatmap.tissue].all()
    assert stored_json(location, TRIAGE)["complete"] is True
    assert CorruptRecord.read(location.read_bytes(CORRUPT) or b"").keys == ()


@pytest.fixture(scope="module")
def in_between(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A derived slide whose 2x level is an in-between level the hub builds (as in tests/hub/test_hub.py)."""
    out = tmp_path_factory.mktemp("derived") / "in-between.svs"
    made = subprocess.run([sys.executable, str(REPO / "bench" / "make_large_slide.py"), "--gigabytes", "0.01",
                           "--tissue-fraction", "0.15", "--output", str(out), "--workers", "2"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert made.returncode == 0, made.stderr
    return out


def test_the_hub_does_not_build_a_level_from_a_corrupt_shard(s3_server: S3Server, in_between: Path) -> None:
    bucket = Bucket(s3_server)
    with open_slide(in_between) as slide:
        plan = plan_pyramid(slide, ConvertOptions(hub_levels=True, workers=2))
        pieces = list(produce(slide, plan, "between", {}))
    ref, n = SlideRef(BETWEEN), plan.shard_chunks
    root = ref.root
    stored = {piece.key: piece.data for piece in pieces if piece.kind == PieceKind.SHARD}
    for piece in pieces:
        bucket.put(f"{root}/{IMAGE}/{piece.key}", piece.data)
    hub_planned = tuple(task.key for task in plan.hub_shards)
    level0 = sorted(key for key in stored if key.startswith("0/"))
    manifest = Manifest(BETWEEN, "s1", "v1", "2026-12-05T18:00:00Z", COMPLETE, planned=tuple(stored), arrived=tuple(stored),
                        hub_levels={"1": 0}, hub_planned=hub_planned)
    location = Location.slide_version(Location.parse(f"s3://{bucket.name}/{bucket.prefix}", bucket.endpoint_url), ref)
    location.write_bytes(MANIFEST, manifest.to_json())
    chunk_key, index_key = level0[0], level0[-1]
    bucket.put(f"{root}/{IMAGE}/{chunk_key}", flip_in_chunk(stored[chunk_key], n, *written_chunk(stored[chunk_key], n)))
    bucket.put(f"{root}/{IMAGE}/{index_key}", flip_in_index(stored[index_key], n))
    over = {f"1/c/0/{int(key.split('/')[3]) // 2}/{int(key.split('/')[4]) // 2}" for key in (chunk_key, index_key)}
    assert over <= set(hub_planned) and len(hub_planned) > len(over)

    built, done = complete_pyramid(location, manifest)
    record = json.loads(location.read_bytes(PYRAMID) or b"{}")
    assert done is False and not over & set(record["built"]) and built == len(record["built"]) > 0
    assert all(location.read_bytes(f"{IMAGE}/{key}") is None for key in over)  # nothing built from them
    assert CorruptRecord.read(location.read_bytes(CORRUPT) or b"").keys == tuple(sorted((chunk_key, index_key)))
    cases = Cases(bucket.storage(), TRUSTED)
    assert asyncio.run(cases.status(root))["corrupt"] == sorted((chunk_key, index_key))  # the hub's finding, shown

    for key in (chunk_key, index_key):  # the station sends them again
        bucket.put(f"{root}/{IMAGE}/{key}", stored[key])
    built, done = complete_pyramid(location, manifest)
    assert done is True and built == len(over)
    assert CorruptRecord.read(location.read_bytes(CORRUPT) or b"").keys == ()


def test_a_chunk_that_fails_its_checksum_is_corrupt_for_a_reader_of_whole_shards_too() -> None:
    from tiling.shard_format import CorruptShardError, verified_chunks

    plan, pieces = pyramid()
    n, shard = plan.shard_chunks, shards(pieces)["0/c/0/0/0"]
    assert len(verified_chunks(shard, n, True, "0/c/0/0/0")) == int((read_shard_index(shard[-shard_index_size(n) :], n)[..., 0] != EMPTY).sum())
    with pytest.raises(CorruptShardError, match=r"corrupt on the store: 0/c/0/0/0 \(chunk \(2, 3\) fails its CRC32C\)"):
        verified_chunks(flip_in_chunk(shard, n, 2, 3), n, True, "0/c/0/0/0")
    with pytest.raises(CorruptShardError, match="index checksum mismatch"):
        verified_chunks(flip_in_index(shard, n), n, True, "0/c/0/0/0")


def test_two_viewers_recording_corrupt_pieces_at_once_lose_neither(tmp_path: Path) -> None:
    """Two viewer processes find two corrupt shards of one slide at the same moment: both read corrupt.json before
    either writes. Each reads its write back, so the record ends with both (else the station is asked for one)."""
    from objectstore.storage import LocalStorage

    ref = SlideRef("h1.race", "s1", "v1")
    both_read = asyncio.Barrier(2)

    class Interleaving(LocalStorage):
        """Holds each viewer's first read of corrupt.json until the other has read it too."""

        def __init__(self, root: Path) -> None:
            super().__init__(root)
            self.first = True

        async def get(self, key: str) -> bytes:
            try:
                return await super().get(key)
            finally:
                if key.endswith(CORRUPT) and self.first:
                    self.first = False
                    await both_read.wait()

    async def race() -> CorruptRecord:
        viewers = [Cases(Interleaving(tmp_path), TRUSTED) for _ in range(2)]
        await asyncio.gather(*(viewer.tiles._report_corrupt(ref.root, "2026-12-05T10:00:00Z", shard)
                               for viewer, shard in zip(viewers, ("0/c/0/0/0", "0/c/0/0/1"), strict=True)))
        return CorruptRecord.read((tmp_path / ref.centre_key(CORRUPT)).read_bytes())

    assert asyncio.run(race()).keys == ("0/c/0/0/0", "0/c/0/0/1")
