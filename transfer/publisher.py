"""The send's manifest.json: what readers learn of an image on its way, written in order and never after the last one.

Apart from the sender because when the manifest is rewritten is a rule of its own: not before this run writes
anything and every metadata object is verified, then at most once per `manifest_interval` (at once at a milestone or
a finished level), last with `complete: true` or, for a retraction, "failed"; serialised, so an older document never
lands after a newer one and nothing replaces the last.
"""

from __future__ import annotations

import threading
import time

from botocore.exceptions import BotoCoreError, ClientError

from caseformat.errors import DocumentError
from caseformat.results import COMPLETE, Manifest
from transfer.integrity import Digest
from transfer.journal import Journal
from transfer.manifest import OVERVIEW, Arrivals
from transfer.put import Uploader


class Publisher:
    """Writes the manifest of one send; `arrivals` is the send's account of its objects, set when it starts."""

    def __init__(self, uploader: Uploader, journal: Journal, stop: threading.Event, interval: float) -> None:
        self._uploader = uploader
        self._dest = uploader.dest
        self._journal = journal
        self._stop = stop
        self._interval = interval
        self.arrivals: Arrivals | None = None
        self._lock = threading.Lock()
        self._dirty = threading.Event()
        self._urgent = threading.Event()
        self._final = False
        self.opened = threading.Event()  # this run wrote its first manifest: it is about to write image objects
        self.metadata_verified = threading.Event()  # the first manifest may go
        self.overview_published = threading.Event()  # a manifest with the overview milestone is on the server

    def changed(self, urgent: bool = False) -> None:
        """Something arrived: the manifest is rewritten within the interval, at once if `urgent` (a milestone, a level)."""
        if urgent:
            self._urgent.set()
        self._dirty.set()

    def wake(self) -> None:
        """The send ended: let the loop see its stop wherever it waits."""
        self._dirty.set()
        self.metadata_verified.set()
        self.opened.set()

    def publish(self, complete: bool = False) -> None:
        """Write manifest.json now (serialized: an older document never lands after a newer one)."""
        assert self.arrivals is not None
        with self._lock:
            if self._final:
                return  # a late periodic write must not replace `complete: true`
            self._final = complete
            self._dirty.clear()
            self._urgent.clear()
            overview = self.arrivals.milestones.get(OVERVIEW) is not None
            document = self.arrivals.to_json(complete)
            self._uploader.put_verified(self._dest.manifest_key, document, Digest.of(document), "application/json", "no-cache")
            if overview:
                self.overview_published.set()
        if complete:
            return
        self._journal.update(self._dest, milestones=self.arrivals.milestones)

    def publish_failed(self, document: bytes) -> None:
        """The "failed" manifest of a retraction, the last one: put although the send has stopped (its tries wait
        out the link on an interrupt of their own)."""
        with self._lock:
            self._final = True  # no periodic write may follow
            self._uploader.put_verified(self._dest.manifest_key, document, Digest.of(document), "application/json", "no-cache",
                                        interrupt=threading.Event())

    def loop(self) -> None:
        """Rewrite the manifest when something arrived, at most once per interval unless a milestone was reached."""
        last = 0.0
        self.opened.wait()  # nothing to tell readers until this run writes something
        self.metadata_verified.wait()
        while not self._stop.is_set():
            self._dirty.wait()
            if self._stop.is_set():
                return
            self._urgent.wait(max(0.0, last + self._interval - time.monotonic()))
            if self._stop.is_set():
                return
            self.publish()
            last = time.monotonic()

    def finish(self) -> None:
        """The complete manifest, then the journal's finish. A run that uploaded nothing leaves a complete manifest
        of the same send as it is: rewriting it would only change `updated_at` under the readers' feet."""
        assert self.arrivals is not None
        if self.opened.is_set() or not self._complete_on_server():
            self.publish(complete=True)
        self._journal.update(self._dest, milestones=self.arrivals.milestones, finished=True)

    def _complete_on_server(self) -> bool:
        assert self.arrivals is not None
        try:
            body = self._uploader.client.get_object(Bucket=self._dest.bucket, Key=self._dest.manifest_key)["Body"].read()
            manifest = Manifest.read(body, self._dest.manifest_key)
        except (BotoCoreError, ClientError, DocumentError):
            return False
        if manifest.state != COMPLETE:
            return False
        ours = self.arrivals.document(complete=True)
        same = [set(theirs) == set(ours[name]) for name, theirs in (("planned", manifest.planned), ("arrived", manifest.arrived))]  # edge triage reorders
        return manifest.started_at == ours["started_at"] and all(same)
