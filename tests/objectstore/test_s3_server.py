"""The real S3-compatible server that CI starts answers like S3 (put, get, list, checksum verification)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from botocore.exceptions import ClientError


def test_put_get_list_round_trip(s3_server, s3_bucket) -> None:
    client = s3_server.client()
    payload = bytes(range(256)) * 4096
    client.put_object(Bucket=s3_bucket, Key="case/a.bin", Body=payload)
    client.put_object(Bucket=s3_bucket, Key="case/b.bin", Body=b"second")
    assert client.get_object(Bucket=s3_bucket, Key="case/a.bin")["Body"].read() == payload
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="case/")
    assert sorted(item["Key"] for item in listed["Contents"]) == ["case/a.bin", "case/b.bin"]


def test_etag_of_a_simple_put_is_the_md5_of_the_bytes(s3_server, s3_bucket) -> None:
    """transfer/ verifies every object by this where the server itself does not check digests."""
    payload = b"slide bytes" * 1000
    response = s3_server.client().put_object(Bucket=s3_bucket, Key="k", Body=payload)
    assert response["ETag"].strip('"') == hashlib.md5(payload).hexdigest()


def test_server_rejects_a_wrong_content_md5(s3_server, s3_bucket) -> None:
    if s3_server.name.startswith("moto"):
        pytest.skip("moto stores objects without checking Content-MD5; transfer/ verifies by ETag there")
    client = s3_server.client()
    wrong = base64.b64encode(hashlib.md5(b"other bytes").digest()).decode()
    with pytest.raises(ClientError) as error:
        client.put_object(Bucket=s3_bucket, Key="x", Body=b"payload", ContentMD5=wrong)
    assert error.value.response["Error"]["Code"] in {"BadDigest", "InvalidDigest"}
    assert "Contents" not in client.list_objects_v2(Bucket=s3_bucket)


def test_a_create_only_put_never_replaces_an_object(s3_server, s3_bucket) -> None:
    """case.json, slide claims and reports are created with If-None-Match: *: the second writer must be refused."""
    client = s3_server.client()
    client.put_object(Bucket=s3_bucket, Key="case/slides/s1/slide.json", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as error:
        client.put_object(Bucket=s3_bucket, Key="case/slides/s1/slide.json", Body=b"second", IfNoneMatch="*")
    assert error.value.response["Error"]["Code"] in {"PreconditionFailed", "ConditionalRequestConflict"}
    assert client.get_object(Bucket=s3_bucket, Key="case/slides/s1/slide.json")["Body"].read() == b"first"
