"""What the centre tells a send through the store: the pieces to send again (corrupt.json) and whether a hub builds
the levels the send's plan left to it (the hub's lease, its pyramid.json).

Apart from the sender because these are the centre's documents, read (untrusted, through their typed readers) at a
send's start and end, not part of moving its pieces: the station's pipeline asks `corrupt_request` before a send too.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from caseformat.bounded import utc_now
from caseformat.errors import DocumentError
from caseformat.layout import CORRUPT, LEASE, PYRAMID
from caseformat.results import MANIFEST_LIMIT, CorruptRecord, Lease, Manifest, PyramidRecord
from transfer.errors import TransferError
from transfer.integrity import Digest
from transfer.manifest import resend_keys
from transfer.network import ABSENT, error_code, fatal
from transfer.put import Uploader
from transfer.target import Destination


def corrupt_request(client: Any, dest: Destination) -> list[str]:
    """What the centre asks this send for again: the image objects ("0/c/0/3/5") its readers found corrupt in this
    send (corrupt.json beside the manifest) that the sender wrote (`resend_keys`). `DocumentError` for a malformed
    request, `TransferError` when the store cannot be read: one line each, and nothing is sent again for it now."""
    key = corrupt_key(dest)
    try:
        data = _read_small(client, dest.bucket, key)
        if data is None:
            return []
        record = CorruptRecord.read(data, key)
        manifest = _read_small(client, dest.bucket, dest.manifest_key)
    except (BotoCoreError, ClientError) as error:
        raise fatal(error, dest.endpoint, f"s3://{dest.bucket}/{key}") from None
    return resend_keys(Manifest.read(manifest, dest.manifest_key) if manifest is not None else None, record)


def corrupt_key(dest: Destination) -> str:
    return dest.key(dest.ref.centre_key(CORRUPT))


def _read_small(client: Any, bucket: str, key: str) -> bytes | None:
    """A document of at most MANIFEST_LIMIT bytes (one byte more is read, for its reader to refuse); None if absent."""
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as error:
        if error_code(error) in ABSENT:
            return None
        raise
    try:
        data: bytes = body.read(MANIFEST_LIMIT + 1)
    finally:
        body.close()
    return data


def take_off_corrupt(uploader: Uploader, keys: list[str]) -> None:
    """The objects in `keys` were sent again and verified: corrupt.json without them (read afresh: the centre may
    have added others meanwhile). Best effort: a reader that finds them whole takes them off too."""
    dest = uploader.dest
    key = corrupt_key(dest)
    try:
        data = _read_small(uploader.client, dest.bucket, key)
        if data is None:
            return
        record = CorruptRecord.read(data, key)
        left = record.without(set(keys), utc_now())
        if left.keys != record.keys:
            document = left.to_json()
            uploader.put_verified(key, document, Digest.of(document), "application/json", "no-cache")
    except (DocumentError, BotoCoreError, ClientError, TransferError):
        return


def hub_came(client: Any, dest: Destination, started_at: str) -> bool:
    """Whether a hub claimed this slide version (a lease it has not released as finished) or recorded building
    its levels for the send that started at `started_at` (its pyramid.json). A document that cannot be read or
    parsed says no: building here as well costs bytes, never pixels."""
    ref, bucket = dest.ref, dest.bucket
    try:
        lease = _read_small(client, bucket, dest.key(ref.centre_key(LEASE)))
        if lease is not None and not Lease.read(lease, LEASE).finished:
            return True
        record = _read_small(client, bucket, dest.key(ref.centre_key(PYRAMID)))
        return record is not None and PyramidRecord.read(record, PYRAMID).started_at == started_at
    except (BotoCoreError, ClientError, DocumentError):
        return False
