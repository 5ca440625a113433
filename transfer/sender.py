"""Upload pieces while they are produced: bounded queue, N verified puts in flight, journal, manifest, deadline.

Order of events for one image: preflight (credentials, bucket, reachability; a link that is down waits, journaled,
until the deadline), a first manifest (state "sending") before any other object, so no reader ever finds an image
of ours without one, then metadata objects, then shards in send order. Shards do not wait for the metadata; the
manifest is next rewritten once every metadata object is verified, then at most once per `manifest_interval` (and at
once at each milestone and when a level completes), and last with `complete: true`, written only after every object
was verified. A rerun that finds everything verified already leaves the complete manifest as it is. A plan that
leaves the in-between levels to the hub waits at its end for a hub to claim the slide version, and where none does
within `SendOptions.hub_wait` the send builds and sends those levels itself before the complete manifest.

The centre asks for pieces again by listing the image objects its readers found corrupt in corrupt.json beside the
manifest (`caseformat.results.CorruptRecord`). `corrupt_request` reads it when a send starts or resumes; `send(...,
resend=keys)` marks those objects not verified in the journal, uploads them again from the (deterministic) pieces,
verifies them like any object, and takes them off corrupt.json once the complete manifest is written.

How a send ends, for readers and for `resume` (one place: `Sender.send`):
- verified: manifest "complete", journal finished;
- the network (or credentials, the bucket, the journal: things a later `resume` can get past): the partial image
  and a "sending" manifest stay (true: the rest is still to come), the journal keeps the send for `resume`;
- anything else (a corrupt slide, a server that keeps corrupting an object, a refused object): retracted. The
  manifest says "failed" with the reason, the image objects are deleted, and the journal marks the send given up.
"""

from __future__ import annotations

import io
import math
import queue
import random
import statistics
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from caseformat.bounded import utc_now as document_time
from caseformat.errors import DocumentError
from caseformat.layout import CASE_RECORD, CORRUPT, LEASE, MACRO, PYRAMID, SCAN_QC, TRIAGE, SlideRef, case_key, heatmap_folder
from caseformat.results import MANIFEST_LIMIT, CorruptRecord, Lease, Manifest, PyramidRecord
from slides import SlidestreamError
from tiling import Piece, PieceKind, SendOrder, ShardTask
from transfer.errors import (
    BucketNotFoundError,
    CredentialsError,
    IntegrityError,
    JournalError,
    NetworkDeadlineError,
    NetworkError,
    SlideTakenError,
    TransferError,
)
from transfer.integrity import Digest, Expected, Mismatch, check, expected_multipart, expected_single
from transfer.journal import Journal, SendRecord, utc_now
from transfer.manifest import COMPLETE, OVERVIEW, Arrivals, failed_document, resend_keys
from transfer.network import ABSENT, MAX_CONCURRENCY, Meter, describe, error_code, fatal, is_corruption, is_transient, make_client
from transfer.target import Destination

if TYPE_CHECKING:
    from s3transfer.manager import TransferManager

MiB = 1 << 20
AUTO_START = 8  # puts in flight before anything is measured: metadata and overview go in about one round trip
IN_FLIGHT_SECONDS = 1.0  # auto concurrency keeps at most this much link time in flight beyond two objects
BACKOFF_BASE, BACKOFF_CAP = 0.5, 20.0  # seconds, full jitter: link loss
RESEND_BASE = 0.1  # seconds: a corrupted object is sent again almost at once (nothing to wait out)
RETRACT_WAIT = 30.0  # seconds a retraction waits for puts still in flight (a late put must not land after a delete)
HUB_POLL = 1.0  # seconds between looks for a hub's claim while a send waits for one (`SendOptions.hub_wait`)


def resumable(error: BaseException) -> bool:
    """Whether a send stopped by `error` should wait for `resume` (True) or be given up and retracted (False).

    The network, credentials, the bucket and the journal get fixed and a resume continues; a corrupt slide, an
    object the server keeps corrupting or refuses fail again on every try. A kill or Ctrl-C is resumable too.
    """
    if not isinstance(error, SlidestreamError):
        return True
    return isinstance(error, (NetworkError, CredentialsError, BucketNotFoundError, JournalError))


@dataclass(frozen=True)
class SendOptions:
    """How to send; every field has a `slidestream send` flag.

    concurrency: puts in flight; None sizes it from measured throughput and round trip (`--concurrency auto`).
    max_rate_mbit: cap on the bytes handed to the network, to share a clinic's uplink.
    sse / sse_kms_key_id: server-side encryption ("AES256" or "aws:kms").
    deadline: seconds the link may stay down before the send gives up (the journal keeps what arrived).
    ca_bundle: PEM file of a private CA for TLS endpoints.
    multipart_threshold: objects above this go in parts (s3transfer), each part this size.
    manifest_interval: the manifest is rewritten at most this often (plus at milestones and the end).
    integrity_retries: re-sends of an object the server stored with other bytes, before giving up.
    hub_wait: seconds a send whose plan leaves levels to the hub waits, once its own objects are verified, for a hub
        to claim the slide version (its lease) or record building them (its pyramid.json); with no hub by then the
        send builds and sends them itself, so a complete manifest never names a level nobody builds (0: always here).
    """

    concurrency: int | None = None
    max_rate_mbit: float | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None
    deadline: float = 600.0
    ca_bundle: str | None = None
    multipart_threshold: int = 8 * MiB
    manifest_interval: float = 1.0
    integrity_retries: int = 5
    hub_wait: float = 30.0


@dataclass(frozen=True)
class Progress:
    """A snapshot for progress displays."""

    objects_done: int
    objects_planned: int
    bytes_sent: int  # handed to the network by this run, re-sends included
    bytes_verified: int  # of objects verified on the server by this run
    rate: float  # bytes per second, recent
    waiting_for_network: bool
    concurrency: int
    eta: float | None  # seconds, from the shards still planned, their typical size and the recent rate


class Listener(Protocol):
    """Receives progress (from worker threads: keep it quick) and milestone announcements."""

    def progress(self, state: Progress) -> None: ...

    def milestone(self, name: str, seconds: float) -> None: ...


@dataclass(frozen=True)
class SendResult:
    ref: SlideRef
    url: str
    objects: int  # uploaded by this run
    objects_skipped: int  # already verified on the server by an earlier run
    bytes_sent: int  # handed to the network by this run
    bytes_total: int  # size of the whole image (every object)
    seconds: float
    milestones: dict[str, float | None] = field(default_factory=dict)
    retries: int = 0
    concurrency: int = 0  # puts in flight at the end (what auto concurrency settled on)
    resent: int = 0  # of `objects`, those the centre had found corrupt on the server (corrupt.json)

    @property
    def case(self) -> str:
        return self.ref.case

    def summary(self) -> dict[str, Any]:
        """What `--json` prints."""
        return {
            "case": self.ref.case,
            "slide": self.ref.slide,
            "version": self.ref.version,
            "url": self.url,
            "objects": self.objects,
            "objects_skipped": self.objects_skipped,
            "bytes_sent": self.bytes_sent,
            "bytes_total": self.bytes_total,
            "seconds": round(self.seconds, 3),
            "time_to_first_view": self.milestones.get("overview"),
            "time_to_heatmap": self.milestones.get("heatmap"),
            "time_to_full_resolution": self.milestones.get("tissue_full_resolution"),
            "average_mbit_s": round(self.bytes_sent * 8 / 1e6 / self.seconds, 3) if self.seconds > 0 else None,
            "retries": self.retries,
            "concurrency": self.concurrency,
            "resent": self.resent,
        }


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


@dataclass
class _Job:
    piece: Piece
    digest: Digest
    metadata: bool  # one of the objects a reader needs before the first manifest


class Sender:
    """Sends one case to one destination; reusable for one `send()` call."""

    def __init__(self, dest: Destination, journal: Journal, options: SendOptions = SendOptions(), listener: Listener | None = None,
                 private: Collection[str] = (), registration: bytes | None = None) -> None:
        """`private`: strings that must not reach the store (the slide's path and name: they hold accession
        numbers); a failure reason written to the manifest says "the slide" instead. `registration`: the case's
        case.json, created before the first manifest unless the case has one (the clock never restarts)."""
        self.dest = dest
        self.registration = registration
        self.private = sorted({name for name in private if len(name) >= 4}, key=len, reverse=True)
        self.retracted = False  # set once `retract` took what this send published back
        self.journal = journal
        self.options = options
        self.listener = listener
        self.client = make_client(dest.endpoint, options.ca_bundle)
        self.meter = Meter(options.max_rate_mbit * 1e6 / 8 if options.max_rate_mbit else None)
        self.meter.attach(self.client)
        self._transfers: TransferManager | None = None
        self._queue: queue.Queue[_Job] = queue.Queue(maxsize=2 * MAX_CONCURRENCY)  # bounds memory: ~64 objects
        self._pending = 0  # jobs queued or in flight
        self._pending_changed = threading.Condition()
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._workers: list[threading.Thread] = []
        self._active = 0  # workers allowed to take jobs (auto concurrency moves it both ways)
        self._outage_since: float | None = None
        self._last_ok = 0.0  # when a request last reached the server: an outage starts no earlier
        self._network_error: BaseException | None = None  # the last request that failed for the network
        self._opened = threading.Event()  # this run wrote its first manifest: it is about to write image objects
        self._written: set[str] = set()  # image keys this run put (or tried to)
        self._resend: set[str] = set()  # image keys the centre found corrupt, no longer verified in the journal
        self.changed_since_sent: list[str] = []  # pieces a resend found the slide no longer gives as they were sent
        self._state_lock = threading.Lock()
        self._sizes: deque[int] = deque(maxlen=64)
        self._uploaded = self._skipped = self._retries = 0
        self._bytes_verified = self._bytes_total = 0
        self._arrivals: Arrivals | None = None
        self._record: SendRecord | None = None
        self._start = 0.0
        self._manifest_lock = threading.Lock()
        self._manifest_dirty = threading.Event()
        self._manifest_urgent = threading.Event()
        self._manifest_final = False
        self._metadata_pending = 0  # metadata objects not verified yet
        self._metadata_listed = False  # every metadata object is queued (the first shard came)
        self._metadata_verified = threading.Event()  # the first manifest may go
        self._overview_published = threading.Event()  # a manifest with the overview milestone is on the server

    # -- before anything is produced -----------------------------------------------------------------------
    def preflight(self, args: dict[str, Any] | None = None) -> None:
        """Fail in a second, not after a conversion: credentials, bucket and endpoint, in one request.

        A LIST needs s3:ListBucket, which a write-only uploader role may lack: AccessDenied here is not fatal. A link
        that is down is no reason to give up: the send is journaled (with `args`) at the first failure and the
        request retried until `deadline`, as when the link drops mid-way; past it, `resume` sends it later.
        """
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                self.client.list_objects_v2(Bucket=self.dest.bucket, Prefix=self.dest.root, MaxKeys=1)
            except (BotoCoreError, ClientError) as error:
                if error_code(error) != "AccessDenied":
                    if not is_transient(error):
                        raise fatal(error, self.dest.endpoint, f"s3://{self.dest.bucket}/{self.dest.root}") from None
                    if args is not None:
                        self.begin(args)
                    try:
                        self._network_down(error, started)
                    except NetworkDeadlineError as gave_up:
                        if self._record is not None:
                            self._record_error(str(gave_up))
                        raise
                    self._backoff(attempt, BACKOFF_BASE)
                    attempt += 1
                    continue
            self._network_ok()
            return

    def _abort_stale_uploads(self) -> None:
        """Multipart uploads of this case still open once every object is verified were left by a killed run:
        invisible but billed. Abort them (a role without s3:ListBucketMultipartUploads leaves them to the bucket's
        lifecycle rules). Housekeeping, not the send: a link that drops here leaves them to the next run (the final
        manifest that follows waits for the link until --deadline like every object)."""
        try:
            uploads = self.client.list_multipart_uploads(Bucket=self.dest.bucket, Prefix=self.dest.root).get("Uploads", [])
            for upload in uploads:
                self.client.abort_multipart_upload(Bucket=self.dest.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        except (BotoCoreError, ClientError) as error:
            if error_code(error) != "AccessDenied" and not is_transient(error):
                raise fatal(error, self.dest.endpoint, f"s3://{self.dest.bucket}/{self.dest.root}") from None

    # -- the send ------------------------------------------------------------------------------------------
    def begin(self, args: dict[str, Any]) -> None:
        """Start the clock and register the send (with the arguments `resume` needs) before anything is uploaded:
        milestones count from here (a resend keeps the first send's clock, see `Journal.begin`). Once only."""
        if self._record is None:
            self._start = time.monotonic()
            self._record = self.journal.begin(self.dest, args)

    def claim(self, document: bytes) -> None:
        """Take this slide's number on the store before anything of it is written: `CASE/slides/SLIDE/slide.json`,
        created only if absent (waiting for the link until --deadline like every object). One that exists with other
        bytes is another station's claim on the number: the send is given up (nothing of it was written) with
        `SlideTakenError`, and sending again takes the next free number."""
        key = self.dest.key(self.dest.ref.claim_key)
        if self._put_verified(key, document, Digest.of(document), "application/json", "no-cache", create=True):
            return
        try:
            existing = self.client.get_object(Bucket=self.dest.bucket, Key=key)["Body"].read()
        except (BotoCoreError, ClientError) as error:
            raise fatal(error, self.dest.endpoint, f"s3://{self.dest.bucket}/{key}") from None
        if existing != document:
            reason = f"slide {self.dest.slide} of case {self.dest.case} was taken by another station meanwhile; send again to take the next free slide"
            if self._record is not None:
                self.journal.fail(self.dest, reason)
            raise SlideTakenError(reason)

    @property
    def milestones(self) -> dict[str, float]:
        """Milestones reached so far, by this run or (same image) an earlier one."""
        if self._arrivals is not None:
            return dict(self._arrivals.milestones)
        return dict(self._record.milestones) if self._record else {}

    def requested_resends(self) -> list[str]:
        """`corrupt_request` for this send: the objects to pass to `send` as `resend`."""
        return corrupt_request(self.client, self.dest)

    def send(self, order: SendOrder, pieces: Iterable[Piece], resend: Collection[str] = ()) -> SendResult:
        """Upload every piece (skipping those the journal proves are there); returns once all are verified.

        `order` is the plan `pieces` come from: a plan made before the tissue was known settles mid-stream. A failure
        that no retry cures retracts what the send wrote (see the module's docstring) and is raised. `resend`: image
        objects the centre found corrupt (`requested_resends`): uploaded again whatever the journal says, then taken
        off corrupt.json.
        """
        if self._record is None:
            self.begin({})
        assert self._record is not None
        record, start = self._record, self._start
        # a send asked again for pieces of a complete image: the bytes each piece had when it was verified, which the
        # slide must give again (a file that rotted since would otherwise send valid-looking wrong pixels)
        sent_before = self.journal.verified(self.dest) if resend else {}
        if resend:
            self._resend = set(resend)
            self.journal.unverify(self.dest, self._resend)
        known = self.journal.verified(self.dest)
        plan = order.plan
        arrivals = self._arrivals = Arrivals(self.dest.ref, plan, record.started_at, record.milestones)
        order.decide_hub_levels(lambda tasks: self._hub_levels_here(tasks, known))
        self._set_concurrency(self.options.concurrency or AUTO_START)
        helpers = [threading.Thread(target=self._guard(self._monitor), name="monitor", daemon=True),
                   threading.Thread(target=self._guard(self._publish_loop), name="manifest", daemon=True)]  # fmt: skip
        for thread in helpers:
            thread.start()
        failure: BaseException | None = None
        resent: list[str] = []
        try:
            metadata_unchanged, restarted = True, False
            for piece in pieces:
                self._raise_failure()
                if order.plan is not plan:
                    plan = order.plan
                    arrivals.settle(plan)
                digest = Digest.of(piece.data)
                self._bytes_total += digest.size
                if piece.kind is PieceKind.SHARD:
                    if not self._metadata_listed:
                        self._metadata_queued(known if metadata_unchanged else {})
                    arrivals.produced(piece.key)
                previous = known.get(piece.key)
                if previous is not None and previous[0] == digest.sha256_hex:
                    self._skipped += 1
                    self._arrived(piece.key, digest.size)
                    continue
                original = sent_before.get(piece.key)
                if self._resend and (original is None or original[0] != digest.sha256_hex):
                    # not what was sent: never uploaded over the image; a corrupt piece stays listed as corrupt
                    self.changed_since_sent.append(piece.key)
                    self._skipped += 1
                    self._arrived(piece.key, original[1] if original else digest.size)
                    continue
                if piece.kind is PieceKind.SHARD:
                    arrivals.revoke(piece.key)
                else:
                    metadata_unchanged = False
                    if previous is not None and not restarted:
                        self._new_image()
                        restarted = True
                self._open()
                self._written.add(piece.key)
                self._enqueue(_Job(piece, digest, metadata=not self._metadata_listed))
                if not self._overview_published.is_set() and arrivals.overview_produced() and self._opened.is_set():
                    self._await_overview()
            if not self._metadata_listed:
                self._metadata_queued({})
            if order.plan is not plan:  # the hub's levels became ours, and none of their shards held anything
                arrivals.settle(order.plan)
            for name in arrivals.finished_producing():
                self._announce(name)
            self._drain()
            self._abort_stale_uploads()
            self._finish()
            resent = sorted(self._written & self._resend)
            if resent:
                self._take_off_corrupt(resent)
        except BaseException as error:
            failure = error
            self._stop.set()
            if isinstance(error, SlidestreamError) and resumable(error):
                self._record_error(str(error))
            raise
        finally:
            self._stop.set()
            self._manifest_dirty.set()
            self._metadata_verified.set()
            self._opened.set()
            # a send asked again for pieces of a complete image never takes that image back: the pieces it could not
            # send again stay listed as corrupt (refused by every reader), the rest of the image stays readable
            retracting = failure is not None and not resumable(failure) and not self._resend
            # a worker stuck in a put is a daemon: do not wait for it forever (but a retraction must outlast it)
            until = time.monotonic() + (RETRACT_WAIT if retracting else 5)
            for thread in [*self._workers, *helpers]:
                thread.join(timeout=max(0.0, until - time.monotonic()))
            if self._transfers is not None:
                self._transfers.shutdown(cancel=self._failure is not None or failure is not None)
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
            if retracting:
                self.retract(str(failure))
        return SendResult(
            self.dest.ref,
            self.dest.url,
            self._uploaded,
            self._skipped,
            self.meter.sent,
            self._bytes_total,
            time.monotonic() - start,
            {name: arrivals.milestones.get(name) for name in ("overview", "tissue_full_resolution")},
            self._retries,
            self._active,
            len(resent),
        )

    def _hub_levels_here(self, tasks: list[ShardTask], known: dict[str, tuple[str, int]]) -> bool:
        """Whether this send builds the shards (`tasks`) its plan left to the hub, asked once every other shard is
        produced: yes where an earlier run of it sent some (it finishes what it started) or `hub_wait` is 0; no for
        a resend of pieces the centre found corrupt (the hub builds its own again) or once a hub came; otherwise,
        once every object is verified, yes if no hub came within `hub_wait` seconds more. A hub and this send may
        both build them (a hub that comes late): the shards are deterministic, so both write the same bytes."""
        if any(task.key in known for task in tasks):
            return True
        if self._resend:
            return False
        if self.options.hub_wait <= 0:
            return True
        if self._hub_came():
            return False
        self._drain()
        until = time.monotonic() + self.options.hub_wait
        while time.monotonic() < until:
            self._stop.wait(min(HUB_POLL, max(0.0, until - time.monotonic())))
            self._raise_failure()
            if self._hub_came():
                return False
        return True

    def _hub_came(self) -> bool:
        """Whether a hub claimed this slide version (a lease it has not released as finished) or recorded building
        its levels for this send (pyramid.json of this `started_at`). A document that cannot be read or parsed
        says no: building here as well costs bytes, never pixels."""
        assert self._arrivals is not None
        ref, bucket = self.dest.ref, self.dest.bucket
        try:
            lease = _read_small(self.client, bucket, self.dest.key(ref.centre_key(LEASE)))
            if lease is not None and not Lease.read(lease, LEASE).finished:
                return True
            record = _read_small(self.client, bucket, self.dest.key(ref.centre_key(PYRAMID)))
            return record is not None and PyramidRecord.read(record, PYRAMID).started_at == self._arrivals.started_at
        except (BotoCoreError, ClientError, DocumentError):
            return False

    def _open(self) -> None:
        """Before this run's first image object: a manifest that says "sending" (so an image we write is never
        without one; a rerun that finds everything verified never gets here and leaves a complete manifest alone)."""
        if not self._opened.is_set():
            self._register()
            self._publish()
            self._opened.set()

    def _register(self) -> None:
        """The case's registration (create-only: a case registered by its station, or by an earlier slide, keeps
        its clock and context) and this version's `_arrivals/` marker, by which hubs and worklists find it."""
        assert self._arrivals is not None
        if self.registration is not None:
            record = self.dest.key(case_key(self.dest.case, CASE_RECORD))
            self._put_verified(record, self.registration, Digest.of(self.registration), "application/json", "no-cache", create=True)
        marker = self.dest.key(self.dest.ref.arrival_key(self._arrivals.started_at))
        self._put_verified(marker, b"", Digest.of(b""), "application/octet-stream")

    def _new_image(self) -> None:
        """A metadata object differs from the one the journal verified: another image for this case (a rescan, or
        other options), so its clock starts now. Objects with the same key and bytes as before are still skipped."""
        assert self._arrivals is not None
        self._arrivals.restart(self.journal.restart(self.dest))

    def _finish(self) -> None:
        """The complete manifest, then the journal's finish. A run that uploaded nothing leaves a complete manifest
        of the same send as it is: rewriting it would only change `updated_at` under the readers' feet."""
        assert self._arrivals is not None
        if self._opened.is_set() or not self._complete_on_server():
            self._publish(complete=True)
        self.journal.update(self.dest, milestones=self._arrivals.milestones, finished=True)

    def _take_off_corrupt(self, keys: list[str]) -> None:
        """The objects in `keys` were sent again and verified: corrupt.json without them (read afresh: the centre may
        have added others meanwhile). Best effort: a reader that finds them whole takes them off too."""
        key = corrupt_key(self.dest)
        try:
            data = _read_small(self.client, self.dest.bucket, key)
            if data is None:
                return
            record = CorruptRecord.read(data, key)
            left = record.without(set(keys), document_time())
            if left.keys != record.keys:
                document = left.to_json()
                self._put_verified(key, document, Digest.of(document), "application/json", "no-cache")
        except (DocumentError, BotoCoreError, ClientError, TransferError):
            return

    def _complete_on_server(self) -> bool:
        assert self._arrivals is not None
        try:
            body = self.client.get_object(Bucket=self.dest.bucket, Key=self.dest.manifest_key)["Body"].read()
            manifest = Manifest.read(body, self.dest.manifest_key)
        except (BotoCoreError, ClientError, DocumentError):
            return False
        if manifest.state != COMPLETE:
            return False
        ours = self._arrivals.document(complete=True)
        same = [set(theirs) == set(ours[name]) for name, theirs in (("planned", manifest.planned), ("arrived", manifest.arrived))]  # edge triage reorders
        return manifest.started_at == ours["started_at"] and all(same)

    def retract(self, reason: str) -> None:
        """Give the send up for good: first a manifest that says "failed" (readers stop at once), then the image
        objects go (every key the journal or this run knows: no LIST permission needed), then the journal marks
        the send failed so `resume` skips it. Best effort: if the server cannot be reached, the journal keeps the
        send unfinished, and the next try (which fails the same way) retracts again."""
        record = self._record or self.journal.send(self.dest)
        started = record.started_at if record else utc_now()
        public = reason
        for name in self.private:
            public = public.replace(name, "the slide")
        document = failed_document(self.dest.ref, started, public)
        keys = sorted({*self.journal.verified(self.dest), *self._written, *self._resend})
        try:
            with self._manifest_lock:
                self._manifest_final = True  # no periodic write may follow
                self._put_verified(self.dest.manifest_key, document, Digest.of(document), "application/json", "no-cache", interrupt=threading.Event())
            for first in range(0, len(keys), 1000):
                batch = [{"Key": self.dest.image_key(key)} for key in keys[first : first + 1000]]
                answer = self.client.delete_objects(Bucket=self.dest.bucket, Delete={"Objects": batch, "Quiet": True})
                if answer.get("Errors"):
                    error = answer["Errors"][0]
                    raise TransferError(f"cannot delete {error.get('Key')}: {error.get('Code')}")
            self._abort_stale_uploads()
            self.journal.fail(self.dest, reason)
            self.retracted = True
        except (SlidestreamError, BotoCoreError, ClientError):
            self._record_error(reason)  # the send's own error is the one to report; a resume retracts again

    def retract_results(self) -> None:
        """After a retraction, also take back what was published beside the image (the edge triage's heatmap and
        triage.json, the scan's checks and its macro): once its writer has stopped, so nothing lands after the delete. Best effort: without LIST
        permission the heatmap's chunks stay (readers ignore results of a failed case)."""
        try:
            keys = [self.dest.key(self.dest.ref.key(name)) for name in (TRIAGE, SCAN_QC, MACRO)]
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.dest.bucket, Prefix=self.dest.key(self.dest.ref.key(heatmap_folder())))
            keys += [entry["Key"] for page in pages for entry in page.get("Contents", [])]
            for first in range(0, len(keys), 1000):
                batch = [{"Key": key} for key in keys[first : first + 1000]]
                self.client.delete_objects(Bucket=self.dest.bucket, Delete={"Objects": batch, "Quiet": True})
        except (BotoCoreError, ClientError):
            pass  # the send's own error is the one to report

    def put_document(self, key: str, data: bytes, content_type: str) -> None:
        """A document beside the image (below the slide version: `key` as `SlideRef.key` gives it), put as the image's
        objects are: verified by the server's answer, retried until the deadline, encrypted as the send asks."""
        self._put_verified(self.dest.key(key), data, Digest.of(data), content_type, "no-cache")

    def _await_overview(self) -> None:
        """Hold production until readers can see the overview: what comes next (tissue detection, its imports,
        the first tissue shards) would otherwise compete with the overview for the CPU and the link."""
        while not self._overview_published.wait(0.2):
            self._raise_failure()

    def _metadata_queued(self, known: dict[str, tuple[str, int]]) -> None:
        """Every metadata object is queued. When the metadata matched the journal's, the image is the same as an
        earlier run's, so shards it verified count as arrived right away (re-checked when reproduced)."""
        assert self._arrivals is not None
        self._arrivals.assume({key: size for key, (_, size) in known.items()})
        with self._state_lock:
            self._metadata_listed = True
            if self._metadata_pending == 0:
                self._metadata_verified.set()
        self._manifest_urgent.set()
        self._manifest_dirty.set()

    def _record_error(self, message: str) -> None:
        try:
            self.journal.update(self.dest, error=message, milestones=self._arrivals.milestones if self._arrivals else None)
        except TransferError:
            pass  # the original error is the one to report

    # -- queue and workers ---------------------------------------------------------------------------------
    def _enqueue(self, job: _Job) -> None:
        with self._pending_changed:
            self._pending += 1
        if job.metadata:
            with self._state_lock:
                self._metadata_pending += 1
            self._start_workers()
        while True:
            self._raise_failure()
            try:
                self._queue.put(job, timeout=0.2)
                return
            except queue.Full:
                continue

    def _drain(self) -> None:
        """Wait until every queued object is verified (or something failed)."""
        with self._pending_changed:
            while self._pending and self._failure is None:
                self._pending_changed.wait(0.5)
        self._raise_failure()

    def _set_concurrency(self, target: int) -> None:
        """Let `target` workers take jobs (starting threads as needed); the others idle after their current put."""
        self._active = max(1, min(target, MAX_CONCURRENCY))
        self._start_workers()

    def _allowed(self) -> int:
        """Workers that may take a job now. With auto concurrency each metadata object not verified yet adds one:
        they are a few hundred bytes each, and the overview shards behind them should not wait a round trip."""
        return self._active + (self._metadata_pending if self.options.concurrency is None else 0)

    def _start_workers(self) -> None:
        """Threads up to the allowed count. Locked: the main thread (metadata) and the monitor (sizing) both call it."""
        with self._state_lock:
            while len(self._workers) < self._allowed():
                index = len(self._workers)
                thread = threading.Thread(target=self._work, args=(index,), name=f"upload-{index}", daemon=True)
                self._workers.append(thread)
                thread.start()

    def _work(self, index: int) -> None:
        while not self._stop.is_set():
            if index >= self._allowed():
                self._stop.wait(0.1)
                continue
            try:
                job = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._deliver(job)
            except BaseException as error:  # noqa: BLE001 - handed to the main thread, which raises it
                self._fail(error)
            finally:
                with self._pending_changed:
                    self._pending -= 1
                    self._pending_changed.notify_all()

    def _guard(self, target: Any) -> Any:
        def run() -> None:
            try:
                target()
            except BaseException as error:  # noqa: BLE001
                self._fail(error)

        return run

    def _fail(self, error: BaseException) -> None:
        with self._pending_changed:
            if self._failure is None:
                self._failure = error
            self._stop.set()
            self._pending_changed.notify_all()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    # -- one object ----------------------------------------------------------------------------------------
    def _deliver(self, job: _Job) -> None:
        key = self.dest.image_key(job.piece.key)
        content_type = "application/json" if job.piece.key.endswith(".json") else "application/octet-stream"
        etag = self._put_verified(key, job.piece.data, job.digest, content_type)
        self.journal.record(self.dest, job.piece.key, job.digest.sha256_hex, job.digest.size, etag)
        with self._state_lock:
            self._uploaded += 1
            self._bytes_verified += job.digest.size
            self._sizes.append(job.digest.size)
            if job.metadata:
                self._metadata_pending -= 1
                if self._metadata_listed and self._metadata_pending == 0:
                    self._metadata_verified.set()
        self._arrived(job.piece.key, job.digest.size)

    def _arrived(self, key: str, size: int) -> None:
        assert self._arrivals is not None
        milestones, level_done = self._arrivals.arrive(key, size)
        for name in milestones:
            self._announce(name)
        if level_done:
            self._manifest_urgent.set()
        self._manifest_dirty.set()
        self._report()

    def _put_verified(self, key: str, data: bytes, digest: Digest, content_type: str, cache_control: str | None = None,
                      interrupt: threading.Event | None = None, create: bool = False) -> str:
        """Put until the server's answer proves it holds exactly `data`; retry the network until the deadline.

        `interrupt` (default: the send's stop) ends the waits between tries; a retraction passes its own. `create`:
        only if no object has the key (`If-None-Match: *`); one that exists is left alone and "" returned.
        """
        attempt = corrupted = 0
        while True:
            if interrupt is None and self._stop.is_set() and self._failure is not None:
                raise TransferError("send stopped")  # another worker failed; its error is the one reported
            started = time.monotonic()
            try:
                if digest.size > self.options.multipart_threshold:
                    etag = self._put_multipart(key, data, content_type, cache_control)
                else:
                    etag = self._put_single(key, data, digest, content_type, cache_control, create)
                self._network_ok()
                return etag
            except Mismatch as error:
                corrupted, reason = corrupted + 1, str(error)
            except (BotoCoreError, ClientError) as error:
                if create and error_code(error) in ("PreconditionFailed", "ConditionalRequestConflict"):
                    self._network_ok()
                    return ""
                if is_corruption(error):
                    corrupted, reason = corrupted + 1, f"{key}: server reported {error_code(error)}"
                elif is_transient(error):
                    self._network_down(error, started)
                    self._backoff(attempt, BACKOFF_BASE, interrupt)
                    attempt += 1
                    continue
                else:
                    problem = fatal(error, self.dest.endpoint, f"s3://{self.dest.bucket}/{key}")
                    if self.options.sse and error_code(error) in {"InvalidRequest", "InvalidArgument", "NotImplemented"}:
                        problem = TransferError(f"{problem} (does the server support --sse {self.options.sse}?)")
                    raise problem from None
            self._network_ok()
            with self._state_lock:
                self._retries += 1
            if corrupted > self.options.integrity_retries:
                raise IntegrityError(f"{reason} ({corrupted} attempts); the object is not recorded as sent")
            self._backoff(corrupted - 1, RESEND_BASE, interrupt)

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

    # -- link loss -----------------------------------------------------------------------------------------
    def _network_ok(self) -> None:
        with self._state_lock:
            self._outage_since = None
            self._last_ok = time.monotonic()

    def _network_down(self, error: BaseException, started: float) -> None:
        """Note a request that failed for the network; past the deadline the send stops with what the journal holds.

        The outage counts from when the failing request was started (a connect or read timeout is part of it), but
        not from before the last request that got through."""
        with self._state_lock:
            if self._outage_since is None:
                self._outage_since = max(started, self._last_ok)
            self._network_error = error
        self._report()
        self._check_deadline()

    def _check_deadline(self) -> None:
        """Raise once the link has been down for the deadline (the monitor calls this too, so requests that hang
        in a dead link do not hold the send past it)."""
        with self._state_lock:
            since, error = self._outage_since, self._network_error
        down = time.monotonic() - since if since is not None else 0.0
        if since is not None and down >= self.options.deadline:
            server = self.dest.endpoint or "AWS S3"
            reason = describe(error) if error is not None else "no answer"
            raise NetworkDeadlineError(
                f"no working connection to {server} for {down:.0f} s (--deadline {self.options.deadline:g}; last: {reason}); "
                "`slidestream resume` continues where this stopped"
            )

    def _backoff(self, attempt: int, base: float, interrupt: threading.Event | None = None) -> None:
        """Exponential backoff with full jitter, never sleeping past the deadline."""
        delay = random.uniform(0, min(BACKOFF_CAP, base * 2**attempt))
        with self._state_lock:
            if self._outage_since is not None:
                delay = min(delay, max(0.0, self._outage_since + self.options.deadline - time.monotonic()))
        (interrupt or self._stop).wait(delay)

    # -- manifest ------------------------------------------------------------------------------------------
    def _publish(self, complete: bool = False) -> None:
        """Write manifest.json now (serialized: an older document never lands after a newer one)."""
        assert self._arrivals is not None
        with self._manifest_lock:
            if self._manifest_final:
                return  # a late periodic write must not replace `complete: true`
            self._manifest_final = complete
            self._manifest_dirty.clear()
            self._manifest_urgent.clear()
            overview = self._arrivals.milestones.get(OVERVIEW) is not None
            document = self._arrivals.to_json(complete)
            self._put_verified(self.dest.manifest_key, document, Digest.of(document), "application/json", "no-cache")
            if overview:
                self._overview_published.set()
        if complete:
            return
        self.journal.update(self.dest, milestones=self._arrivals.milestones)

    def _publish_loop(self) -> None:
        """Rewrite the manifest when something arrived, at most once per interval unless a milestone was reached."""
        interval = self.options.manifest_interval
        last = 0.0
        self._opened.wait()  # nothing to tell readers until this run writes something
        self._metadata_verified.wait()
        while not self._stop.is_set():
            self._manifest_dirty.wait()
            if self._stop.is_set():
                return
            self._manifest_urgent.wait(max(0.0, last + interval - time.monotonic()))
            if self._stop.is_set():
                return
            self._publish()
            last = time.monotonic()

    def _announce(self, name: str) -> None:
        assert self._arrivals is not None
        self._manifest_urgent.set()
        self._manifest_dirty.set()
        if self.listener is not None:
            self.listener.milestone(name, self._arrivals.milestones[name])

    # -- progress and auto concurrency ---------------------------------------------------------------------
    def _report(self) -> None:
        if self.listener is None:
            return
        done, planned = self._arrivals.counts if self._arrivals is not None else (0, 0)
        rate = self.meter.rate()
        with self._state_lock:
            waiting = self._outage_since is not None
            verified = self._bytes_verified
            size = statistics.median(self._sizes) if self._sizes else None
        eta = (planned - done) * size / rate if size and rate else None
        self.listener.progress(Progress(done, planned, self.meter.sent, verified, rate, waiting, self._active, eta))

    def _monitor(self) -> None:
        """Refresh progress twice a second; every 2 s let auto concurrency size the pool.

        Sizing happens only while objects wait for a worker (not when conversion is the bottleneck). Growth, two
        ways: a put idles one round trip before its answer, so a busy link needs 1 + bandwidth x RTT / object size
        puts in flight (we aim for twice that); and new connections cost handshakes and TCP slow start that the RTT
        sample does not see, so while the last growth raised throughput by more than 10 %, half as many workers
        again are added. The cap: never more than two objects plus IN_FLIGHT_SECONDS of link time in flight. Puts in
        flight share the link, so each extra one delays the next shard in line without adding throughput (on a
        20 Mbit/s link, 32 puts of 1.5 MB held the full-resolution milestone back by 20 s). Object size is counted
        per byte (`typical_size`): by a plain median, the metadata objects that open a send made room for 32 puts.
        """
        tick, rate_at_growth = 0, 0.0
        while not self._stop.wait(0.5):
            tick += 1
            self._report()
            self._check_deadline()
            if self.options.concurrency is not None or tick % 4 or self._queue.qsize() == 0:
                continue
            rtt, rate = self.meter.rtt(), self.meter.rate(2.0)
            with self._state_lock:
                size = typical_size(self._sizes)
            if not (rtt and rate and size):
                continue
            active = self._active
            target = math.ceil(2 * (1 + rate * rtt / size))
            if rate > 1.1 * rate_at_growth:
                target, rate_at_growth = max(target, active + max(1, active // 2)), rate
            self._set_concurrency(min(target, 2 + math.ceil(rate * IN_FLIGHT_SECONDS / size)))


def typical_size(sizes: Collection[int]) -> float:
    """The size of the object an average byte travels in (sum of squares over sum): what sizes the bytes in flight.

    A send opens with a dozen zarr.json of a few hundred bytes and small overview shards beside its first 1 MB ones;
    their median of a few kB let auto concurrency put 32 shards in flight on 5g, some of which then stalled for 20 s.
    """
    total = sum(sizes)
    return sum(size * size for size in sizes) / total if total else 0.0

