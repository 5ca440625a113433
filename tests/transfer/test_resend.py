"""The station sends again what the centre found corrupt, and an export never embeds a corrupt frame.

Against the real S3 server: a slide is sent, bytes inside one chunk of one stored shard are flipped on the store (as a
failing disk or a bad copy would), and the centre's corrupt.json names it (`CorruptRecord`, as the viewer, the hub and
analysis write it). `slidestream resume`, the same send command and a running `watch` upload that shard again from the
slide, and nothing else; the export of a case with the corrupt shard stops with one line naming it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import tifffile
from conftest import REPO, S3Server, sample
from support import journal_objects, send_args, slidestream, wait_for

from caseformat.bounded import utc_now
from caseformat.layout import CORRUPT, SlideRef
from caseformat.results import CorruptRecord
from tiling.shard_format import EMPTY, read_shard_index, shard_index_size
from transfer import parse_destination

pytestmark = pytest.mark.slow  # sends, a running watch, an export

SLIDE = "CMU-1-Small-Region.svs"


class Stored:
    """One sent slide version on the store: its objects, and the centre's side (a corrupt shard, corrupt.json)."""

    def __init__(self, server: S3Server, bucket: str, case: str) -> None:
        self.client, self.bucket = server.client(), bucket
        self.dest = parse_destination(f"s3://{bucket}/cases", case)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads(self.get(self.dest.manifest_key))

    @property
    def corrupt_key(self) -> str:
        return self.dest.key(self.dest.ref.centre_key(CORRUPT))

    def image_objects(self) -> dict[str, tuple[str, Any]]:
        """Every image object's (ETag, LastModified): a PUT changes the second, whatever the bytes."""
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.dest.image_key(""))
        return {item["Key"]: (item["ETag"], item["LastModified"]) for page in pages for item in page.get("Contents", [])}

    def corrupt_a_shard(self) -> tuple[str, bytes]:
        """Flip bytes inside the first written chunk of the first level-0 shard; returns (its manifest key, the
        bytes it held)."""
        key = next(key for key in self.manifest["planned"] if key.startswith("0/"))
        original = self.get(self.dest.image_key(key))
        n = json.loads(self.get(self.dest.image_key("zarr.json")))["attributes"]["slidestream"]["shard_chunks"]
        index = read_shard_index(original[-shard_index_size(n) :], n)
        offset, nbytes = next((int(o), int(b)) for o, b in index.reshape(-1, 2) if o != EMPTY)
        middle = offset + nbytes // 2
        self.put(self.dest.image_key(key), original[:middle] + bytes(b ^ 0xFF for b in original[middle : middle + 64]) + original[middle + 64 :])
        return key, original

    def ask_again(self, *keys: str) -> None:
        """corrupt.json as the centre writes it on finding `keys` corrupt in this send."""
        self.put(self.corrupt_key, CorruptRecord(self.manifest["started_at"], tuple(sorted(keys)), utc_now()).to_json())

    def still_asked(self) -> tuple[str, ...]:
        return CorruptRecord.read(self.get(self.corrupt_key)).keys


def send(server: S3Server, bucket: str, state: Path, slide: Path) -> dict[str, Any]:
    result = slidestream("send", slide, *send_args(server, bucket, state, "--json"))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("how", ["resume", "send"])
def test_the_station_sends_again_only_the_shard_the_centre_found_corrupt(s3_server: S3Server, s3_bucket: str, tmp_path: Path, how: str) -> None:
    state, slide = tmp_path / "state", tmp_path / "slide.svs"
    shutil.copyfile(sample(SLIDE), slide)
    first = send(s3_server, s3_bucket, state, slide)
    stored = Stored(s3_server, s3_bucket, first["case"])
    manifest = stored.manifest
    key, original = stored.corrupt_a_shard()

    def again() -> subprocess.CompletedProcess[str]:
        if how == "resume":
            return slidestream("resume", "--state-dir", state, "--json")
        return slidestream("send", slide, *send_args(s3_server, s3_bucket, state, "--json"))

    not_followed = {
        "malformed": b'{"format": "slidestream-corrupt/1", "keys": [',  # one line, ignored
        "of an earlier send": CorruptRecord("2026-01-01T00:00:00.000Z", (key,), utc_now()).to_json(),
        "of an object the sender did not write": CorruptRecord(manifest["started_at"], ("9/c/0/0/0",), utc_now()).to_json(),
    }
    for what, request in not_followed.items():
        stored.put(stored.corrupt_key, request)
        ignored = again()
        assert ignored.returncode == 0, ignored.stderr
        assert "RESENT" not in ignored.stderr and stored.get(stored.dest.image_key(key)) != original, what
        assert (stored.corrupt_key in ignored.stderr) == (what == "malformed"), ignored.stderr

    stored.ask_again(key)
    before = stored.image_objects()
    time.sleep(1.1)  # LastModified has whole seconds: any object written again from here on shows it
    result = again()
    assert result.returncode == 0, result.stderr
    assert f"RESENT {first['case']}/s1/v1: 1 pieces the centre found corrupt" in result.stderr
    summaries = json.loads(result.stdout)
    [summary] = summaries if how == "resume" else [summaries]
    assert summary["objects"] == 1 and summary["resent"] == 1 and summary["objects_skipped"] == first["objects"] - 1

    assert stored.get(stored.dest.image_key(key)) == original
    after = stored.image_objects()
    assert {name for name in after if after[name] != before[name]} == {stored.dest.image_key(key)}, "nothing else uploaded"
    assert stored.still_asked() == ()
    resent = stored.manifest
    assert resent["state"] == "complete" and resent["started_at"] == manifest["started_at"] and resent["arrived"] == manifest["arrived"]
    assert journal_objects(state)[key][2] == "sent-verified"

    quiet = slidestream("resume", "--state-dir", state)  # nothing is asked for any more: nothing is sent
    assert quiet.returncode == 0 and "nothing to resume" in quiet.stderr


def _watch_log(state: Path) -> list[str]:
    logs = list(state.glob("watch-*.log"))
    return logs[0].read_text().splitlines() if logs else []


def test_watch_sends_again_on_its_own_what_the_centre_found_corrupt(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    hot, state = tmp_path / "hot", tmp_path / "state"
    hot.mkdir()
    shutil.copyfile(sample(SLIDE), hot / "slide.svs")
    watcher = subprocess.Popen(
        [sys.executable, "-m", "slidestream", "watch", str(hot), f"s3://{s3_bucket}/cases", "--endpoint-url", s3_server.endpoint_url,
         "--state-dir", str(state), "--settle", "0.2", "--no-edge", "--resend-every", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    try:
        wait_for(lambda: any(" SENT " in line for line in _watch_log(state)), "the slide to be sent", 120, process=watcher)
        [manifest] = [key for key in (o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]) if key.endswith("manifest.json")]
        stored = Stored(s3_server, s3_bucket, SlideRef.parse(manifest.removeprefix("cases/").rsplit("/", 1)[0]).case)
        key, original = stored.corrupt_a_shard()
        before = stored.image_objects()
        time.sleep(1.1)  # LastModified has whole seconds: any object written again from here on shows it
        stored.ask_again(key)
        wait_for(lambda: any(" RESENT " in line for line in _watch_log(state)), "the corrupt shard to be sent again", 60, process=watcher)
    finally:
        watcher.send_signal(signal.SIGINT)
        try:
            watcher.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            watcher.kill()
            watcher.communicate()
    [line] = [line for line in _watch_log(state) if " RESENT " in line]
    assert line.endswith(f"RESENT {stored.dest.ref.label}: 1 pieces the centre found corrupt")
    assert stored.get(stored.dest.image_key(key)) == original and stored.still_asked() == ()
    after = stored.image_objects()
    assert {name for name in after if after[name] != before[name]} == {stored.dest.image_key(key)}, "nothing else uploaded"


def test_an_export_of_a_case_with_a_corrupt_shard_stops_with_one_line_naming_it(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    stored = Stored(s3_server, s3_bucket, send(s3_server, s3_bucket, tmp_path / "state", sample(SLIDE))["case"])
    key, _ = stored.corrupt_a_shard()
    result = slidestream("export-dicom", f"s3://{s3_bucket}/{stored.dest.case_root}", tmp_path / "pacs", "--endpoint-url", s3_server.endpoint_url)
    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert f"corrupt on the store: image.zarr/{key} (chunk" in line and "fails its CRC32C" in line, line


def test_a_slide_that_went_bad_since_it_was_sent_is_never_sent_again_over_the_image(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    """The slide file rotted at the hospital (same size and time stamp, some tile bytes changed) after its image
    arrived complete: the resend fails on the slide (one line), and that costs only the corrupt piece: the image the
    pathologist reads is never retracted (a failed send's retraction deletes what it wrote), nothing is uploaded over
    it, and the corrupt piece stays listed."""
    state, slide = tmp_path / "state", tmp_path / "slide.svs"
    shutil.copyfile(sample(SLIDE), slide)
    first = send(s3_server, s3_bucket, state, slide)
    stored = Stored(s3_server, s3_bucket, first["case"])
    key, _ = stored.corrupt_a_shard()
    stored.ask_again(key)
    before = stored.image_objects()
    stamp = slide.stat()
    data = bytearray(slide.read_bytes())
    with tifffile.TiffFile(slide) as tiff:  # one bit in the middle of each full-resolution tile's entropy-coded data
        tiles = list(zip(tiff.pages[0].dataoffsets, tiff.pages[0].databytecounts, strict=True))
    for offset, count in tiles:  # a byte that stays a byte of entropy-coded data: no 0xFF marker made or broken
        at = next(at for at in range(offset + count // 2, offset + count) if data[at] not in (0xFE, 0xFF, 0x00) and data[at - 1] != 0xFF)
        data[at] ^= 0x01
    slide.write_bytes(bytes(data))
    os.utime(slide, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    time.sleep(1.1)  # LastModified has whole seconds: any object written again from here on shows it

    result = slidestream("resume", "--state-dir", state)
    refused = [line for line in result.stderr.splitlines() if line.startswith("slidestream: error:")]
    assert result.returncode == 2 and len(refused) == 1 and str(slide) in refused[0], result.stderr
    assert stored.image_objects() == before, "nothing was uploaded over the image, nothing deleted"
    assert stored.manifest["state"] != "failed"
    assert stored.still_asked() == (key,), "the piece it could not send again stays listed as corrupt"
