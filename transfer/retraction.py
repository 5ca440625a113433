"""How a send that no retry cures is given up: which failures those are, and taking back what it put on the store.

Apart from the sender because a retraction also runs without a send: the station retracts a journaled send that
`resume` finds can never finish. First a manifest that says "failed" (readers stop at once), then the image objects
(every key the journal or the send knows: no LIST permission needed), then the multipart uploads left open.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from caseformat.layout import MACRO, SCAN_QC, TRIAGE, heatmap_folder
from slides import SlidestreamError
from transfer.errors import BucketNotFoundError, CredentialsError, JournalError, NetworkError, TransferError
from transfer.publisher import Publisher
from transfer.put import Uploader, abort_stale_uploads
from transfer.target import Destination

RETRACT_WAIT = 30.0  # seconds a retraction waits for puts still in flight (a late put must not land after a delete)


def resumable(error: BaseException) -> bool:
    """Whether a send stopped by `error` should wait for `resume` (True) or be given up and retracted (False).

    The network, credentials, the bucket and the journal get fixed and a resume continues; a corrupt slide, an
    object the server keeps corrupting or refuses fail again on every try. A kill or Ctrl-C is resumable too.
    """
    if not isinstance(error, SlidestreamError):
        return True
    return isinstance(error, (NetworkError, CredentialsError, BucketNotFoundError, JournalError))


def take_back(uploader: Uploader, publisher: Publisher, failed: bytes, keys: list[str]) -> None:
    """The "failed" manifest `failed`, then the image objects `keys` deleted, then stale multipart uploads aborted;
    raises what the store answered when it could not be done (a later try retracts again)."""
    client, dest = uploader.client, uploader.dest
    publisher.publish_failed(failed)
    for first in range(0, len(keys), 1000):
        batch = [{"Key": dest.image_key(key)} for key in keys[first : first + 1000]]
        answer = client.delete_objects(Bucket=dest.bucket, Delete={"Objects": batch, "Quiet": True})
        if answer.get("Errors"):
            error = answer["Errors"][0]
            raise TransferError(f"cannot delete {error.get('Key')}: {error.get('Code')}")
    abort_stale_uploads(client, dest)


def take_back_results(client: Any, dest: Destination) -> None:
    """After a retraction, also take back what was published beside the image (the edge triage's heatmap and
    triage.json, the scan's checks and its macro): once its writer has stopped, so nothing lands after the delete. Best effort: without LIST
    permission the heatmap's chunks stay (readers ignore results of a failed case)."""
    try:
        keys = [dest.key(dest.ref.key(name)) for name in (TRIAGE, SCAN_QC, MACRO)]
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=dest.bucket, Prefix=dest.key(dest.ref.key(heatmap_folder())))
        keys += [entry["Key"] for page in pages for entry in page.get("Contents", [])]
        for first in range(0, len(keys), 1000):
            batch = [{"Key": key} for key in keys[first : first + 1000]]
            client.delete_objects(Bucket=dest.bucket, Delete={"Objects": batch, "Quiet": True})
    except (BotoCoreError, ClientError):
        pass  # the send's own error is the one to report
