"""The verified put: an object is sent until the server's answer proves it holds exactly our bytes.

Apart from the send's order and bookkeeping because every object of a send goes through it alike (the image's pieces,
the manifest, the case's registration, the slide's claim, documents beside the image): one PUT with Content-MD5 and
x-amz-checksum-sha256, or parts through s3transfer above the multipart threshold, checked against what the answer
says; a link that drops waits (`transfer.link`), an object the server stored with other bytes is sent again.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from transfer.errors import IntegrityError, TransferError
from transfer.integrity import Digest, Expected, Mismatch, check, expected_multipart, expected_single
from transfer.link import BACKOFF_BASE, Link
from transfer.network import Meter, error_code, fatal, is_corruption, is_transient
from transfer.options import SendOptions
from transfer.target import Destination

if TYPE_CHECKING:
    from s3transfer.manager import TransferManager

RESEND_BASE = 0.1  # seconds: a corrupted object is sent again almost at once (nothing to wait out)


class Uploader:
    """Verified puts of one send to its bucket; thread-safe (the send's workers share it)."""

    def __init__(self, client: Any, dest: Destination, options: SendOptions, meter: Meter, link: Link,
                 stopped: Callable[[], bool]) -> None:
        """`stopped`: whether the send stopped for a failure elsewhere (a put then gives up: that error is the one reported)."""
        self.client = client
        self.dest = dest
        self.options = options
        self.meter = meter
        self.link = link
        self._stopped = stopped
        self._lock = threading.Lock()
        self.retries = 0  # objects sent again because the server stored other bytes
        self._transfers: TransferManager | None = None

    def shutdown(self, cancel: bool) -> None:
        """End the multipart transfers (`cancel`: those still running, after a failure)."""
        if self._transfers is not None:
            self._transfers.shutdown(cancel=cancel)

    def put_verified(self, key: str, data: bytes, digest: Digest, content_type: str, cache_control: str | None = None,
                     interrupt: threading.Event | None = None, create: bool = False) -> str:
        """Put until the server's answer proves it holds exactly `data`; retry the network until the deadline.

        `interrupt` (default: the send's stop) ends the waits between tries; a retraction passes its own. `create`:
        only if no object has the key (`If-None-Match: *`); one that exists is left alone and "" returned.
        """
        attempt = corrupted = 0
        while True:
            if interrupt is None and self._stopped():
                raise TransferError("send stopped")  # another worker failed; its error is the one reported
            started = time.monotonic()
            try:
                if digest.size > self.options.multipart_threshold:
                    etag = self._put_multipart(key, data, content_type, cache_control)
                else:
                    etag = self._put_single(key, data, digest, content_type, cache_control, create)
                self.link.ok()
                return etag
            except Mismatch as error:
                corrupted, reason = corrupted + 1, str(error)
            except (BotoCoreError, ClientError) as error:
                if create and error_code(error) in ("PreconditionFailed", "ConditionalRequestConflict"):
                    self.link.ok()
                    return ""
                if is_corruption(error):
                    corrupted, reason = corrupted + 1, f"{key}: server reported {error_code(error)}"
                elif is_transient(error):
                    self.link.down(error, started)
                    self.link.backoff(attempt, BACKOFF_BASE, interrupt)
                    attempt += 1
                    continue
                else:
                    problem = fatal(error, self.dest.endpoint, f"s3://{self.dest.bucket}/{key}")
                    if self.options.sse and error_code(error) in {"InvalidRequest", "InvalidArgument", "NotImplemented"}:
                        problem = TransferError(f"{problem} (does the server support --sse {self.options.sse}?)")
                    raise problem from None
            self.link.ok()
            with self._lock:
                self.retries += 1
            if corrupted > self.options.integrity_retries:
                raise IntegrityError(f"{reason} ({corrupted} attempts); the object is not recorded as sent")
            self.link.backoff(corrupted - 1, RESEND_BASE, interrupt)

    def _extra(self, content_type: str, cache_control: str | None) -> dict[str, str]:
        extra = {"ContentType": content_type}
        if cache_control:
            extra["CacheControl"] = cache_control
        if self.options.sse:
            extra["ServerSideEncryption"] = self.options.sse
        if self.options.sse_kms_key_id:
            extra["SSEKMSKeyId"] = self.options.sse_kms_key_id
        return extra

    def _put_single(self, key: str, data: bytes, digest: Digest, content_type: str, cache_control: str | None, create: bool = False) -> str:
        """One PUT carrying Content-MD5 and x-amz-checksum-sha256, both of which AWS, MinIO and Ceph check."""
        response = self.client.put_object(
            Bucket=self.dest.bucket,
            Key=key,
            Body=data,
            ContentMD5=digest.content_md5,
            ChecksumSHA256=digest.checksum_sha256,
            **({"IfNoneMatch": "*"} if create else {}),
            **self._extra(content_type, cache_control),
        )
        self.meter.request_done()
        return check(
            key, expected_single(digest), response.get("ETag"), response.get("ChecksumSHA256"), response.get("ServerSideEncryption")
        )

    def _put_multipart(self, key: str, data: bytes, content_type: str, cache_control: str | None) -> str:
        """Parts through s3transfer (it aborts the upload if a part fails), then HEAD for the composite values.

        Under SSE-KMS each part carries a SHA-256 (the only verifiable value there); otherwise the composite ETag
        (MD5 of the part MD5s) proves the content, which every S3-compatible server computes.
        """
        extra = self._extra(content_type, cache_control)
        if self.options.sse == "aws:kms":
            extra["ChecksumAlgorithm"] = "SHA256"
        if self._transfers is None:
            from s3transfer.manager import (  # only large objects need it: 22 ms of start-up
                TransferConfig,
                TransferManager,
            )

            size = self.options.multipart_threshold
            config = TransferConfig(multipart_threshold=size, multipart_chunksize=size, max_request_concurrency=4)
            self._transfers = TransferManager(self.client, config)
        self._transfers.upload(io.BytesIO(data), self.dest.bucket, key, extra_args=extra).result()
        head = self.client.head_object(Bucket=self.dest.bucket, Key=key, ChecksumMode="ENABLED")
        expected: Expected = expected_multipart(data, self.options.multipart_threshold)
        return check(key, expected, head.get("ETag"), head.get("ChecksumSHA256"), head.get("ServerSideEncryption"))


def abort_stale_uploads(client: Any, dest: Destination) -> None:
    """Multipart uploads of this case still open once every object is verified were left by a killed run:
    invisible but billed. Abort them (a role without s3:ListBucketMultipartUploads leaves them to the bucket's
    lifecycle rules). Housekeeping, not the send: a link that drops here leaves them to the next run (the final
    manifest that follows waits for the link until --deadline like every object)."""
    try:
        uploads = client.list_multipart_uploads(Bucket=dest.bucket, Prefix=dest.root).get("Uploads", [])
        for upload in uploads:
            client.abort_multipart_upload(Bucket=dest.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    except (BotoCoreError, ClientError) as error:
        if error_code(error) != "AccessDenied" and not is_transient(error):
            raise fatal(error, dest.endpoint, f"s3://{dest.bucket}/{dest.root}") from None
