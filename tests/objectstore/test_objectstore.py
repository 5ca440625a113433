"""The one store client: zarr's own store conformance suite over `ZarrView` on a local folder and on the real S3
server, and `objectstore.location.Location` (the hub's, analyze's and the edge's sync face) reading and failing as the
rest of `objectstore` does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zarr
from conftest import S3Server
from zarr.core.buffer import Buffer, cpu
from zarr.testing.store import StoreTests

from objectstore import AccessDeniedError, LocalStorage, S3Storage, StorageError, ZarrView
from objectstore.location import Location

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ViewTests(StoreTests[ZarrView, cpu.Buffer]):
    """zarr's suite, with its store fixtures made without a running loop (anyio, unlike pytest-asyncio, which zarr's
    own tests use, runs async fixtures only for async tests)."""

    store_cls = ZarrView
    buffer_cls = cpu.Buffer

    @pytest.fixture
    def store(self, open_kwargs: dict[str, Any]) -> ZarrView:
        return zarr.core.sync.sync(self.store_cls.open(**open_kwargs))

    @pytest.fixture
    def store_not_open(self, store_kwargs: dict[str, Any]) -> ZarrView:
        return self.store_cls(**store_kwargs)

    def test_store_supports_writes(self, store: ZarrView) -> None:
        assert store.supports_writes and store.supports_deletes

    def test_store_supports_listing(self, store: ZarrView) -> None:
        assert store.supports_listing


class TestZarrViewOnLocalStorage(ViewTests):
    """The whole of a local folder as a zarr store (the viewer's `convert` output)."""

    @pytest.fixture
    def store_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"storage": LocalStorage(tmp_path), "prefix": "", "read_only": False}

    async def set(self, store: ZarrView, key: str, value: Buffer) -> None:
        path = Path(store.storage.location, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(value.to_bytes())

    async def get(self, store: ZarrView, key: str) -> Buffer:
        return self.buffer_cls.from_bytes(Path(store.storage.location, key).read_bytes())

    def test_store_repr(self, store: ZarrView) -> None:
        assert repr(store) == f"ZarrView({store.storage.location}, read_only=False)"


class TestZarrViewOnS3(ViewTests):
    """One folder of a bucket on the real server as a zarr store (a slide version's heatmap.zarr, as the hub writes it)."""

    folder = "stations/h1/h1.c1/slides/s1/v1/heatmap.zarr"

    @pytest.fixture
    def store_kwargs(self, s3_server: S3Server, s3_bucket: str) -> dict[str, Any]:
        self.client = s3_server.client()
        return {"storage": S3Storage(s3_bucket, "", s3_server.endpoint_url), "prefix": self.folder, "read_only": False}

    def bucket(self, store: ZarrView) -> str:
        return store.storage.location.removeprefix("s3://")

    async def set(self, store: ZarrView, key: str, value: Buffer) -> None:
        self.client.put_object(Bucket=self.bucket(store), Key=f"{self.folder}/{key}", Body=value.to_bytes())

    async def get(self, store: ZarrView, key: str) -> Buffer:
        return self.buffer_cls.from_bytes(self.client.get_object(Bucket=self.bucket(store), Key=f"{self.folder}/{key}")["Body"].read())

    def test_store_repr(self, store: ZarrView) -> None:
        assert repr(store) == f"ZarrView({store.storage.location}/{self.folder}, read_only=False)"


@pytest.fixture
def denied_bucket(s3_server: S3Server, s3_bucket: str) -> Iterator[str]:
    """A bucket whose policy refuses every GET under `denied/` (403), as RGW answers an enrolled station that reads a
    missing object of its own folders."""
    client = s3_server.client()
    statement = {"Effect": "Deny", "Principal": "*", "Action": ["s3:GetObject"], "Resource": [f"arn:aws:s3:::{s3_bucket}/denied/*"]}
    client.put_bucket_policy(Bucket=s3_bucket, Policy=json.dumps({"Version": "2012-10-17", "Statement": [statement]}))
    yield s3_bucket
    client.delete_bucket_policy(Bucket=s3_bucket)


def test_a_read_answered_403_is_absent_for_location_and_refused_for_the_viewer(s3_server: S3Server, denied_bucket: str) -> None:
    """`Location` (the station's edge triage and the hub) reads a 403 as "not there yet", its zarr store too; the
    viewer's `S3Storage` says the store refused."""
    s3_server.client().put_object(Bucket=denied_bucket, Key="denied/triage.json", Body=b"{}")
    location = Location.parse(f"s3://{denied_bucket}/denied", s3_server.endpoint_url)
    assert location.read_bytes("triage.json") is None and not location.exists("triage.json")
    with pytest.raises(zarr.errors.NodeNotFoundError):
        zarr.open_group(location.zarr_store(), mode="r")
    viewer = S3Storage(denied_bucket, "denied", s3_server.endpoint_url)
    with pytest.raises(AccessDeniedError, match=f"s3://{denied_bucket}/denied/triage.json: "):
        zarr.core.sync.sync(viewer.get("triage.json"))


def test_a_store_that_cannot_be_reached_is_a_storage_error_naming_the_object(tmp_path: Path) -> None:
    """The hub tells "the store failed" (retry later) from a slide the model refuses by the error's family."""
    location = Location.parse("s3://somewhere/cases", "http://127.0.0.1:9")  # nothing listens on port 9
    for call in (lambda: location.read_bytes("h1.c1/manifest.json"), lambda: location.write_bytes("h1.c1/hub.lease", b"{}")):
        with pytest.raises(StorageError, match="^s3://somewhere/cases/h1.c1/") as failed:
            call()
        assert "\n" not in str(failed.value)
    with pytest.raises(StorageError, match="^s3://somewhere/cases/stations: "):
        location.keys("stations")


def test_a_verified_write_is_sent_again_until_the_servers_copy_is_what_was_written(s3_server: S3Server, s3_bucket: str,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub's shards: an ETag that is not the MD5 of the bytes (garbled on the way) means the PUT is sent again; a
    server that never agrees is a `StorageError`, not a shard taken as written."""
    import obstore

    answers: list[str] = []
    real_put = obstore.put_async

    async def garbling_put(*args: Any, **kwargs: Any) -> Any:
        result = await real_put(*args, **kwargs)
        return {**result, "e_tag": answers.pop(0)} if answers else result

    monkeypatch.setattr(obstore, "put_async", garbling_put)
    shard = Location.parse(f"s3://{s3_bucket}/cases", s3_server.endpoint_url)
    answers[:] = ['"0"', '"1"']
    shard.write_verified("h1.c1/image.zarr/1/c/0/0/0", b"shard bytes")
    assert not answers
    assert s3_server.client().get_object(Bucket=s3_bucket, Key="cases/h1.c1/image.zarr/1/c/0/0/0")["Body"].read() == b"shard bytes"
    answers[:] = ['"0"'] * S3Storage.VERIFY_ATTEMPTS
    with pytest.raises(StorageError, match=f"differs from what was written \\({S3Storage.VERIFY_ATTEMPTS} attempts\\)"):
        shard.write_verified("h1.c1/image.zarr/1/c/0/0/1", b"shard bytes")

