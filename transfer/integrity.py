"""Checksums of what we send and what a server's answer must say for an object to count as delivered.

Some servers check Content-MD5 / x-amz-checksum-* themselves (AWS, Ceph, MinIO); others store whatever arrives
(moto checks nothing). So a put only counts once the server's *response* proves the stored bytes are ours: the
SHA-256 checksum it computed, or else the ETag, which is the MD5 of the bytes for a single-part upload without
SSE-KMS and MD5-of-part-MD5s-N for a multipart one.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from transfer.errors import IntegrityError


@dataclass(frozen=True)
class Digest:
    """Hashes of one object's bytes, computed once and used for the request, the check and the journal."""

    size: int
    md5: bytes
    sha256: bytes

    @classmethod
    def of(cls, data: bytes) -> Digest:
        return cls(len(data), hashlib.md5(data).digest(), hashlib.sha256(data).digest())

    @property
    def content_md5(self) -> str:
        return base64.b64encode(self.md5).decode()

    @property
    def checksum_sha256(self) -> str:
        return base64.b64encode(self.sha256).decode()

    @property
    def sha256_hex(self) -> str:
        return self.sha256.hex()

    @property
    def etag(self) -> str:
        return self.md5.hex()


@dataclass(frozen=True)
class Expected:
    """What the server must answer for a given upload shape (single part, or multipart of `part_size`)."""

    etag: str
    checksum_sha256: str


def expected_single(digest: Digest) -> Expected:
    return Expected(digest.etag, digest.checksum_sha256)


def expected_multipart(data: bytes, part_size: int) -> Expected:
    """S3's composite values: hash of the concatenated part hashes, suffixed with the part count.

    The part size is the one s3transfer will really use (it grows the configured size past 10,000 parts).
    """
    from s3transfer.utils import ChunksizeAdjuster  # imported with the multipart upload, not at start-up

    size = ChunksizeAdjuster().adjust_chunksize(part_size, len(data))
    parts = [data[offset : offset + size] for offset in range(0, len(data), size)]
    md5s = b"".join(hashlib.md5(part).digest() for part in parts)
    shas = b"".join(hashlib.sha256(part).digest() for part in parts)
    composite_sha = base64.b64encode(hashlib.sha256(shas).digest()).decode()
    return Expected(f"{hashlib.md5(md5s).hexdigest()}-{len(parts)}", f"{composite_sha}-{len(parts)}")


class Mismatch(Exception):
    """The server stored other bytes than we sent: send again (bounded), never record as done."""


def check(where: str, expected: Expected, etag: str | None, checksum_sha256: str | None, encryption: str | None) -> str:
    """Return the ETag when the answer proves the stored bytes are ours; raise Mismatch when it proves otherwise.

    Under SSE-KMS the ETag is not an MD5, so only a returned SHA-256 checksum can prove anything: a server that
    returns none cannot be verified at all (IntegrityError, not a retry).
    """
    etag = (etag or "").strip('"')
    if checksum_sha256:
        if checksum_sha256 != expected.checksum_sha256:
            raise Mismatch(f"{where}: server SHA-256 {checksum_sha256} != sent {expected.checksum_sha256}")
        return etag
    if etag == expected.etag:
        return etag
    if encryption and encryption.startswith("aws:kms"):
        raise IntegrityError(
            f"{where}: the server encrypts with {encryption} (ETag is not an MD5) and returns no SHA-256 checksum, "
            "so the upload cannot be verified"
        )
    raise Mismatch(f"{where}: server ETag {etag or '(none)'} != sent {expected.etag}")
