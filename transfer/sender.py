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

This module keeps that order of events and the send's bookkeeping; each job it orders has a module of its own beside
it: the verified put (`transfer.put`), link loss and the deadline (`transfer.link`), the worker pool and auto
concurrency (`transfer.pool`), the manifest's writer (`transfer.publisher`), retraction (`transfer.retraction`), the
centre's corrupt.json and hub claims (`transfer.centre`), and a send's options and results (`transfer.options`).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from caseformat.bounded import utc_now
from caseformat.layout import CASE_RECORD, case_key
from objectstore.clients import make_client
from slides import SlidestreamError
from tiling import Piece, PieceKind, SendOrder, ShardTask
from transfer.centre import corrupt_request, hub_came, take_off_corrupt
from transfer.errors import NetworkDeadlineError, SlideTakenError, TransferError
from transfer.integrity import Digest
from transfer.journal import Journal, SendRecord
from transfer.link import BACKOFF_BASE, Link
from transfer.manifest import Arrivals, failed_document
from transfer.network import Meter, error_code, fatal, is_transient
from transfer.options import Listener, Progress, SendOptions, SendResult
from transfer.pool import AUTO_START, Pool
from transfer.publisher import Publisher
from transfer.put import Uploader, abort_stale_uploads
from transfer.retraction import RETRACT_WAIT, resumable, take_back, take_back_results
from transfer.target import Destination

HUB_POLL = 1.0  # seconds between looks for a hub's claim while a send waits for one (`SendOptions.hub_wait`)


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
        self._pool: Pool[_Job] = Pool(self._deliver, options.concurrency is None, lambda: self._metadata_pending)
        self._link = Link(dest.endpoint, options.deadline, self._pool.stop, self._report)
        self._uploader = Uploader(self.client, dest, options, self.meter, self._link, self._pool.failed)
        self._publisher = Publisher(self._uploader, journal, self._pool.stop, options.manifest_interval)
        self._written: set[str] = set()  # image keys this run put (or tried to)
        self._resend: set[str] = set()  # image keys the centre found corrupt, no longer verified in the journal
        self.changed_since_sent: list[str] = []  # pieces a resend found the slide no longer gives as they were sent
        self._state_lock = threading.Lock()
        self._sizes: deque[int] = deque(maxlen=64)
        self._uploaded = self._skipped = 0
        self._bytes_verified = self._bytes_total = 0
        self._arrivals: Arrivals | None = None
        self._record: SendRecord | None = None
        self._start = 0.0
        self._metadata_pending = 0  # metadata objects not verified yet
        self._metadata_listed = False  # every metadata object is queued (the first shard came)

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
                        self._link.down(error, started)
                    except NetworkDeadlineError as gave_up:
                        if self._record is not None:
                            self._record_error(str(gave_up))
                        raise
                    self._link.backoff(attempt, BACKOFF_BASE)
                    attempt += 1
                    continue
            self._link.ok()
            return

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
        if self._uploader.put_verified(key, document, Digest.of(document), "application/json", "no-cache", create=True):
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
        arrivals = self._arrivals = self._publisher.arrivals = Arrivals(self.dest.ref, plan, record.started_at, record.milestones)
        order.decide_hub_levels(lambda tasks: self._hub_levels_here(tasks, known))
        self._pool.set_concurrency(self.options.concurrency or AUTO_START)
        monitor = self._pool.guard(lambda: self._pool.monitor(self.meter, self._tick, self._object_sizes))
        helpers = [threading.Thread(target=monitor, name="monitor", daemon=True),
                   threading.Thread(target=self._pool.guard(self._publisher.loop), name="manifest", daemon=True)]  # fmt: skip
        for thread in helpers:
            thread.start()
        failure: BaseException | None = None
        resent: list[str] = []
        try:
            metadata_unchanged, restarted = True, False
            for piece in pieces:
                self._pool.raise_failure()
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
                if not self._publisher.overview_published.is_set() and arrivals.overview_produced() and self._publisher.opened.is_set():
                    self._await_overview()
            if not self._metadata_listed:
                self._metadata_queued({})
            if order.plan is not plan:  # the hub's levels became ours, and none of their shards held anything
                arrivals.settle(order.plan)
            for name in arrivals.finished_producing():
                self._announce(name)
            self._pool.drain()
            abort_stale_uploads(self.client, self.dest)
            self._publisher.finish()
            resent = sorted(self._written & self._resend)
            if resent:
                take_off_corrupt(self._uploader, resent)
        except BaseException as error:
            failure = error
            self._pool.stop.set()
            if isinstance(error, SlidestreamError) and resumable(error):
                self._record_error(str(error))
            raise
        finally:
            self._pool.stop.set()
            self._publisher.wake()
            # a send asked again for pieces of a complete image never takes that image back: the pieces it could not
            # send again stay listed as corrupt (refused by every reader), the rest of the image stays readable
            retracting = failure is not None and not resumable(failure) and not self._resend
            # a worker stuck in a put is a daemon: do not wait for it forever (but a retraction must outlast it)
            until = time.monotonic() + (RETRACT_WAIT if retracting else 5)
            for thread in [*self._pool.workers, *helpers]:
                thread.join(timeout=max(0.0, until - time.monotonic()))
            self._uploader.shutdown(cancel=self._pool.failure is not None or failure is not None)
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
            self._uploader.retries,
            self._pool.active,
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
        self._pool.drain()
        until = time.monotonic() + self.options.hub_wait
        while time.monotonic() < until:
            self._pool.stop.wait(min(HUB_POLL, max(0.0, until - time.monotonic())))
            self._pool.raise_failure()
            if self._hub_came():
                return False
        return True

    def _hub_came(self) -> bool:
        """`hub_came` for this send's slide version and its `started_at`."""
        assert self._arrivals is not None
        return hub_came(self.client, self.dest, self._arrivals.started_at)

    def _open(self) -> None:
        """Before this run's first image object: a manifest that says "sending" (so an image we write is never
        without one; a rerun that finds everything verified never gets here and leaves a complete manifest alone)."""
        if not self._publisher.opened.is_set():
            self._register()
            self._publisher.publish()
            self._publisher.opened.set()

    def _register(self) -> None:
        """The case's registration (create-only: a case registered by its station, or by an earlier slide, keeps
        its clock and context) and this version's `_arrivals/` marker, by which hubs and worklists find it."""
        assert self._arrivals is not None
        if self.registration is not None:
            record = self.dest.key(case_key(self.dest.case, CASE_RECORD))
            self._uploader.put_verified(record, self.registration, Digest.of(self.registration), "application/json", "no-cache", create=True)
        marker = self.dest.key(self.dest.ref.arrival_key(self._arrivals.started_at))
        self._uploader.put_verified(marker, b"", Digest.of(b""), "application/octet-stream")

    def _new_image(self) -> None:
        """A metadata object differs from the one the journal verified: another image for this case (a rescan, or
        other options), so its clock starts now. Objects with the same key and bytes as before are still skipped."""
        assert self._arrivals is not None
        self._arrivals.restart(self.journal.restart(self.dest))

    def retract(self, reason: str) -> None:
        """Give the send up for good (`take_back`), then the journal marks the send failed so `resume` skips it.
        Best effort: if the server cannot be reached, the journal keeps the send unfinished, and the next try (which
        fails the same way) retracts again."""
        record = self._record or self.journal.send(self.dest)
        started = record.started_at if record else utc_now()
        public = reason
        for name in self.private:
            public = public.replace(name, "the slide")
        document = failed_document(self.dest.ref, started, public)
        keys = sorted({*self.journal.verified(self.dest), *self._written, *self._resend})
        try:
            take_back(self._uploader, self._publisher, document, keys)
            self.journal.fail(self.dest, reason)
            self.retracted = True
        except (SlidestreamError, BotoCoreError, ClientError):
            self._record_error(reason)  # the send's own error is the one to report; a resume retracts again

    def retract_results(self) -> None:
        """`take_back_results` of this send: once the edge triage and the scan checks stopped writing."""
        take_back_results(self.client, self.dest)

    def put_document(self, key: str, data: bytes, content_type: str) -> None:
        """A document beside the image (below the slide version: `key` as `SlideRef.key` gives it), put as the image's
        objects are: verified by the server's answer, retried until the deadline, encrypted as the send asks."""
        self._uploader.put_verified(self.dest.key(key), data, Digest.of(data), content_type, "no-cache")

    def _await_overview(self) -> None:
        """Hold production until readers can see the overview: what comes next (tissue detection, its imports,
        the first tissue shards) would otherwise compete with the overview for the CPU and the link."""
        while not self._publisher.overview_published.wait(0.2):
            self._pool.raise_failure()

    def _metadata_queued(self, known: dict[str, tuple[str, int]]) -> None:
        """Every metadata object is queued. When the metadata matched the journal's, the image is the same as an
        earlier run's, so shards it verified count as arrived right away (re-checked when reproduced)."""
        assert self._arrivals is not None
        self._arrivals.assume({key: size for key, (_, size) in known.items()})
        with self._state_lock:
            self._metadata_listed = True
            if self._metadata_pending == 0:
                self._publisher.metadata_verified.set()
        self._publisher.changed(urgent=True)

    def _record_error(self, message: str) -> None:
        try:
            self.journal.update(self.dest, error=message, milestones=self._arrivals.milestones if self._arrivals else None)
        except TransferError:
            pass  # the original error is the one to report

    # -- one object ----------------------------------------------------------------------------------------
    def _enqueue(self, job: _Job) -> None:
        if job.metadata:
            with self._state_lock:
                self._metadata_pending += 1
        self._pool.put(job, start=job.metadata)

    def _deliver(self, job: _Job) -> None:
        """A worker's put of one piece, then its bookkeeping: the journal, the counts, its arrival."""
        key = self.dest.image_key(job.piece.key)
        content_type = "application/json" if job.piece.key.endswith(".json") else "application/octet-stream"
        etag = self._uploader.put_verified(key, job.piece.data, job.digest, content_type)
        self.journal.record(self.dest, job.piece.key, job.digest.sha256_hex, job.digest.size, etag)
        with self._state_lock:
            self._uploaded += 1
            self._bytes_verified += job.digest.size
            self._sizes.append(job.digest.size)
            if job.metadata:
                self._metadata_pending -= 1
                if self._metadata_listed and self._metadata_pending == 0:
                    self._publisher.metadata_verified.set()
        self._arrived(job.piece.key, job.digest.size)

    def _arrived(self, key: str, size: int) -> None:
        assert self._arrivals is not None
        milestones, level_done = self._arrivals.arrive(key, size)
        for name in milestones:
            self._announce(name)
        self._publisher.changed(urgent=level_done)
        self._report()

    def _announce(self, name: str) -> None:
        assert self._arrivals is not None
        self._publisher.changed(urgent=True)
        if self.listener is not None:
            self.listener.milestone(name, self._arrivals.milestones[name])

    # -- progress ------------------------------------------------------------------------------------------
    def _report(self) -> None:
        if self.listener is None:
            return
        done, planned = self._arrivals.counts if self._arrivals is not None else (0, 0)
        rate = self.meter.rate()
        waiting = self._link.waiting
        with self._state_lock:
            verified = self._bytes_verified
            size = statistics.median(self._sizes) if self._sizes else None
        eta = (planned - done) * size / rate if size and rate else None
        self.listener.progress(Progress(done, planned, self.meter.sent, verified, rate, waiting, self._pool.active, eta))

    def _tick(self) -> None:
        """The monitor's half-second: progress, and the deadline (requests that hang in a dead link raise nothing)."""
        self._report()
        self._link.check_deadline()

    def _object_sizes(self) -> list[int]:
        """The sizes of the objects verified lately, which auto concurrency sizes the pool by."""
        with self._state_lock:
            return list(self._sizes)
