"""The hub: the pathology centre's side, the counterpart of `watch` at the hospital.

A discovery thread reads the store's `_arrivals/` index every poll, so a new case, a new slide of a case or a
rescan is found within a poll of its first manifest, whatever the hub is busy with. The hub scores every arriving
slide version at full magnification while it arrives, in passes of about PASS_SECONDS each (a pass scores tissue
tiles whose shards have arrived, hottest first: beside the hottest tiles scored so far, else the hottest samples of the
station's edge map, else the tissue densest in hematoxylin on the overview, `inference.order`, through `inference.analyze_case`, and publishes the partial heatmap and triage.json, stage "hub", once it has a tile scored:
until then readers keep the station's edge map); after every pass it re-chooses, the case with the least time left
on its 30-minute clock first, and a case whose report is signed only when no other has work, so a long slide never
holds the workers while an urgent one waits. Each pass first completes the pyramid (`hub.pyramid`): the
in-between levels the send left out are built from the shards that arrived. A slide version is claimed with a lease object (`caseformat.layout.LEASE`), so
two hubs on one prefix share the work instead of doubling it. torch and Dask are imported by `slidestream hub`.

Every document on the store is untrusted (`caseformat.results`): a malformed manifest, triage, lease, pyramid record
or case.json costs its slide version one log line (said again only when the error changes) and that version is
skipped, or retried at a later poll, while every other case is scored; a failed lease write is a retry. The hub
never exits for what a store holds.

A pass that fails (the store unreachable, an unreadable piece) or ends without the complete map although the send is
complete is retried on its own, RETRY_FIRST seconds later, doubling to RETRY_MOST (jittered, so hubs that failed
together do not retry in step), and sooner again once the case makes progress: a store outage costs a case minutes,
never a hub restart. Each reason is one "RETRY" line, the case's end one "DONE" line.

Routing and refusal: the centre's routing table is an ordered list of model packages (`--model`, repeatable, or
`models = [...]` in the config's `[hub]`; default the Capricorn colorectal package), and a slide is scored only by one
validated for it (`inference.routing`). Before a slide version's first pass the hub reads the case's specimen site
(case.json), detects the stain from the slide's overview (`detect_stain`) and takes the image's um/px; the first
package whose intended use covers them scores the slide (`Hub.options_for`), and its triage.json records what it was
held to (`routed`). Where none does, the centre's triage.json says why ("no validated AI for skin") with no score and
no heatmap, and still gives QC (tissue tiles, focus, pen) measured on a sample of tissue tiles once the slide has
arrived. A scored slide's triage.json names what its model detects and its validation record in one line, so the
viewer shows them beside the map without the package.
"""

from __future__ import annotations

import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rich.console import Console

if TYPE_CHECKING:
    from caseformat.documents import CaseRecord
    from caseformat.layout import SlideRef
    from caseformat.results import Lease, Manifest
    from inference import AnalyzeOptions, Heatmap, Runner
    from inference.routing import Route, Routes
    from objectstore.location import Location
    from objectstore.notifications import EventListener

stderr = Console(stderr=True)
RETRY_FIRST, RETRY_MOST = 5.0, 300.0  # seconds before a failed pass is tried again: the first wait, and the longest
RECONCILE_SECONDS = 60.0  # with store events: seconds between LISTs of every station's arrivals (events can be lost)
PASS_SECONDS = 10.0  # a pass's target length: how long an urgent case may wait for the workers
SIGNED_LOOK = 30.0  # seconds between listings of an unsigned case's reports: a signature moves it back within this
OVERVIEW_PIXELS = 4096 * 4096  # the largest level `route` reads to detect the stain (a pyramid's coarsest is far smaller)
QC_SAMPLE = 300  # tissue tiles a refused slide's QC reads (as `inference.qc_slide`): a blur fraction within a few percent


@dataclass
class Tracked:
    """What the hub knows of one case between polls."""

    location: Location
    name: str  # {case}/{slide}/{version}, as logs say it
    case: str = ""  # its case ID (whose case.json names the specimen site)
    started: float = 0.0  # the manifest's started_at (epoch seconds): its clock
    heatmap: Heatmap | None = None  # the last pass's, so the next scores only what arrived since
    priority: Any = None  # the edge triage's sampled scores on the hub's grid (-1 elsewhere), if it left any
    prior: Any = None  # the overview's hematoxylin rank of each tissue tile (`inference.pipeline.overview_priority`)
    seen: tuple[Any, ...] | None = None  # the manifest's state and arrivals at the last pass
    pending: tuple[Any, ...] | None = None  # the same now, for the pass about to run
    manifest: Manifest | None = None  # as read for the pass about to run
    triaged: bool = False  # a hub's complete map is there: only the pyramid may be left to build
    said: set[str] = field(default_factory=set)  # what the log said of it since its last progress, numbers aside
    backoff: float = 0.0  # seconds the last retry waited (0: the last pass made progress)
    retry_at: float | None = None  # time.monotonic() when a failed pass is tried again, though nothing new arrived
    routed: bool = False  # its site, stain and resolution were held to the model's intended use
    refused: str | None = None  # why the model may not score it ("no validated AI for skin"), once routed
    acknowledged: str | None = None  # the send (started_at) whose in-between levels this hub said it builds (`acknowledge`)
    route: Route | None = None  # once routed: the package that scores it, or why none may


@dataclass
class Hub:
    root: Location
    options: AnalyzeOptions
    runner: Runner
    owner: str
    lease_seconds: float  # renewed at least every third of it
    routes: Routes  # the centre's routing table: the models, in the order they are tried, and where each may be used
    cases: dict[str, Tracked] = field(default_factory=dict)  # by slide version ({case}/{slide}/{version})
    finished: set[str] = field(default_factory=set)  # complete at full magnification, or failed: never looked at again
    store_failing: bool = False  # listing the prefix failed at the last poll (said once, not at every poll)
    newest: dict[tuple[str, str], SlideRef] = field(default_factory=dict)  # (case, slide) -> its newest version
    listed_after: dict[str, str] = field(default_factory=dict)  # station -> where its next `_arrivals/` LIST starts
    records: dict[str, CaseRecord | None] = field(default_factory=dict)  # case -> its case.json (None: unreadable), read once
    signed: set[str] = field(default_factory=set)  # cases whose report is signed: reports are append-only, so for good
    unsigned_until: dict[str, float] = field(default_factory=dict)  # case -> time.monotonic() to list its reports again
    rate: float | None = None  # tiles per second of the last passes: sizes the next
    arrived: threading.Event = field(default_factory=threading.Event)  # discovery found something new
    listener: EventListener | None = None  # the store's events, when it pushes them (`listen`)
    heard: set[str] = field(default_factory=set)  # stations an event named since the discovery thread last looked
    woken: threading.Event = field(default_factory=threading.Event)  # an event came
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, poll: float, once: bool) -> None:
        from caseformat.layout import is_legacy

        stderr.print(f"hub {self.owner} watching {self.root.url}", markup=False, highlight=False, soft_wrap=True)
        if is_legacy(folder.name for folder in self.root.subfolders()):
            self.say(f"ERROR {self.root.url}: written by slidestream-case/1 (cases at its root): not read; see docs/format.md")
        stop = threading.Event()
        self.look()  # the first look before the first choice (and all of `once`'s)
        if not once:
            threading.Thread(target=self.discovery, args=(poll, stop), name="discovery", daemon=True).start()
        try:
            while True:
                ready, leased = self.discover()
                worked = False
                # unsigned cases first, the least time left on its clock first; a signed case's map is for the record
                for case in sorted(ready, key=lambda c: (self.is_signed(c.case), c.started)):
                    if self.claim(case):
                        self.work(case)
                        worked = True
                        break  # re-choose after every pass: a case that started earlier may have arrived meanwhile
                if once and not ready and not leased and all(name in self.finished for name in self.cases):
                    return
                if once:
                    self.look()
                if not worked:
                    self.arrived.wait(poll)
                    self.arrived.clear()
        finally:
            stop.set()

    def discovery(self, poll: float, stop: threading.Event) -> None:
        """Look at the index every `poll` seconds, whatever the scoring is doing; with store events (`listen`), look
        at once at the stations an event named, and at every station only every RECONCILE_SECONDS (an event lost
        while this hub was down or the store's push failed is found then)."""
        while not stop.is_set():
            if self.listener is None:
                if stop.wait(poll):
                    return
                self.look()
                continue
            self.woken.wait(RECONCILE_SECONDS)
            self.woken.clear()
            with self.lock:
                heard, self.heard = self.heard, set()
            self.look(sorted(heard) or None)

    def listen(self, address: str, push_url: str | None) -> None:
        """Have the store push an event for every arrival to `address` (HOST:PORT; `push_url` where the store reaches
        it, default http://HOST:PORT), and listen (`objectstore.notifications`). A store without topics is one line,
        and this hub polls as without events."""
        from objectstore.clients import make_client
        from objectstore.errors import StorageError
        from objectstore.notifications import EventListener, subscribe
        from transfer.target import parse_store_url

        host, _, port = address.rpartition(":")
        if not port.isdigit():
            raise ValueError(f"{address!r} is not HOST:PORT")
        bucket, prefix = parse_store_url(self.root.url)
        listener = EventListener(host or "0.0.0.0", int(port), prefix, self.hear).start()
        url = push_url or f"http://{host or socket.gethostname()}:{listener.port}"
        try:
            import boto3

            topics = boto3.client("sns", endpoint_url=self.root.endpoint_url)
            subscribe(make_client(self.root.endpoint_url), topics, bucket, prefix, url, f"slidestream-hub-{_topic(self.root.url, url)}")
        except StorageError as error:
            listener.stop()
            self.say(f"ERROR {error}")
            return
        self.listener = listener
        self.say(f"store events from {self.root.url} pushed to {url}; every station listed each {RECONCILE_SECONDS:g} s")

    def hear(self, station: str) -> None:
        """An event named a new arrival of `station`: the discovery thread lists that station now."""
        with self.lock:
            self.heard.add(station)
        self.woken.set()

    def look(self, stations: list[str] | None = None) -> None:
        """One LIST of the `_arrivals/` index (of `stations`, else every station's): announce what is new; a failing
        store is said once, not per poll."""
        from objectstore import StorageError

        try:
            found = self.arrivals(stations)
        except StorageError as error:  # the store is unreachable or the bucket gone: retried each poll
            if not self.store_failing:
                self.store_failing = True
                self.say(f"RETRY {error}")
            return
        if self.store_failing:
            self.store_failing = False
            self.say(f"the store answers again: {self.root.url}")
        for ref in found:
            self.say(f"FOUND {ref.label}")
        if found:
            self.arrived.set()

    def arrivals(self, stations: list[str] | None = None) -> list[SlideRef]:
        """Slide versions new since the last look, from each station's `_arrivals/` index: each slide's newest
        version (an older version a rescan superseded is no longer worked on). The first look reads a station's
        whole index; later ones start a day back (senders' clocks may differ a little from ours), so a look is one
        LIST of the stations and one LIST page per station and 1000 slide versions it sent in the last day. An
        arrival that names another station's case is skipped (`SlideRef.from_arrival`)."""
        from caseformat.layout import STATION_TREES, SlideRef, arrivals_folder, arrivals_since, is_station, version_number

        found = []
        day_ago = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() - 86400))
        if stations is None:
            stations = [folder.name for folder in self.root.child(STATION_TREES).subfolders()]
        for station in stations:
            if not is_station(station):
                continue
            keys = self.root.keys(arrivals_folder(station).rstrip("/"), self.listed_after.get(station))
            self.listed_after[station] = arrivals_since(station, day_ago)
            with self.lock:
                for key in keys:
                    ref = SlideRef.from_arrival(key)
                    known = self.newest.get((ref.case, ref.slide)) if ref else None
                    if ref is not None and (known is None or version_number(ref.version) > version_number(known.version)):
                        self.newest[(ref.case, ref.slide)] = ref
                        found.append(ref)
        return found

    def clock(self, case: str, manifest: Manifest) -> float:
        """When the case's 30-minute clock started: its registration (case.json), else the send."""
        record = self.record(case)
        return _epoch(manifest.started_at if record is None else record.registered_at)

    def record(self, case: str) -> CaseRecord | None:
        """The case's case.json (its registration and specimen site), one GET per case: the clock and the routing both
        read it. None while the station has not written it (read again at the next look) or when it is unreadable
        (said once, and kept: the send's start stands in for the clock, and the site is not known)."""
        from caseformat.documents import CaseRecord
        from caseformat.errors import DocumentError
        from caseformat.layout import CASE_RECORD, case_key

        if case in self.records:
            return self.records[case]
        data = self.root.read_bytes(case_key(case, CASE_RECORD))
        if data is None:
            return None
        try:
            self.records[case] = CaseRecord.read(data, CASE_RECORD)
        except DocumentError as error:
            self.say(f"ERROR {case}: the case's context is unreadable: {error}")
            self.records[case] = None
        return self.records[case]

    def is_signed(self, case: str) -> bool:
        """Whether the case's report is signed: its map is then for the record, not for a surgeon waiting, so it is
        worked only when no unsigned case has work. A LIST of the case's reports folder, not a verified report: only
        the centre writes there, and this orders work, it shows nothing and trusts nothing. Signed stays signed
        (reports are append-only); an unsigned case is listed again at most every SIGNED_LOOK seconds, and one whose
        listing fails counts as unsigned (the store's failure is said where the hub reads the case)."""
        from caseformat.layout import REPORTS, number_of, numbered_folder
        from objectstore import StorageError

        if case in self.signed:
            return True
        if time.monotonic() < self.unsigned_until.get(case, 0.0):
            return False
        try:
            keys = self.root.keys(numbered_folder(case, REPORTS).rstrip("/"))
        except StorageError:
            return False
        if any(number_of(key) is not None for key in keys):
            self.signed.add(case)
            self.say(f"SIGNED {case}: its report is signed; its slides are scored when no unsigned case has work")
            return True
        self.unsigned_until[case] = time.monotonic() + SIGNED_LOOK
        return False

    def discover(self) -> tuple[list[Tracked], int]:
        """Slide versions with work to do now, and how many others are in progress (a hub's lease, nothing new).

        Cost per poll: one LIST of the `_arrivals/` index (see `arrivals`), and per slide version not finished one
        GET of its manifest and one of its triage.json (and of the pyramid record once that is complete); a
        finished one costs nothing more. Choosing among them costs a LIST of an unsigned case's reports every
        SIGNED_LOOK seconds (`is_signed`) and one GET of each case's case.json (`record`)."""
        from objectstore import StorageError
        from objectstore.location import Location
        from slides.errors import one_line

        with self.lock:
            versions = sorted(self.newest.values())
        ready, waiting = [], 0
        for ref in versions:
            name = ref.label
            if name in self.finished:
                continue
            case = self.cases.setdefault(name, Tracked(Location.slide_version(self.root, ref), name, ref.case))
            try:
                manifest = self.examine(case)
                if manifest is None:
                    continue
                case.started = self.clock(ref.case, manifest)
                self.acknowledge(case, manifest)
            except StorageError as error:  # the store failed, not the case: the wait doubles each time it comes round
                if case.retry_at is None or time.monotonic() >= case.retry_at:
                    self.retry(case, one_line(error))
                continue
            except Exception as error:  # noqa: BLE001 - as in `work`: one slide version's documents, never the hub
                self.note(case, one_line(error))
                continue
            progress = (manifest.state, len(manifest.arrived), manifest.plan_final)
            if progress == case.seen and (case.retry_at is None or time.monotonic() < case.retry_at):
                waiting += 1
                continue
            case.pending, case.manifest = progress, manifest
            ready.append(case)
        return ready, waiting

    def acknowledge(self, case: Tracked, manifest: Manifest) -> None:
        """Tell the sending station, once per send, that a hub will build the levels it left out: an empty pyramid
        record of this send (`hub_pyramid`). Without it the station, which cannot know a busy hub will come, waits
        `send --hub-wait` seconds and builds them itself (`transfer.sender`: the same bytes, a quarter more upload)."""
        from caseformat.layout import PYRAMID
        from caseformat.results import PyramidRecord

        if case.acknowledged == manifest.started_at or not manifest.hub_planned:
            return
        if case.location.read_bytes(PYRAMID) is None:
            case.location.write_bytes(PYRAMID, PyramidRecord(manifest.started_at).to_json())
        case.acknowledged = manifest.started_at

    def examine(self, case: Tracked) -> Manifest | None:
        """The slide version's manifest when there is work to do on it; None when there is none (not a case yet,
        failed, or finished by a hub before). A malformed document raises `DocumentError`, a triage.json except:
        the hub scores the version again and its own result replaces it."""
        from caseformat.errors import DocumentError
        from caseformat.layout import MANIFEST, PYRAMID, TRIAGE
        from caseformat.results import FAILED, Manifest, PyramidRecord, Triage

        name, folder = case.name, case.location
        data = folder.read_bytes(MANIFEST)
        if data is None:
            return None  # not a case (yet)
        manifest = Manifest.read(data, MANIFEST)
        if manifest.state == FAILED:
            self.finish(name, f"SKIP {name}: the send failed: {manifest.failure}")
            return None
        if case.heatmap is None and (data := folder.read_bytes(TRIAGE)) is not None:
            try:
                triage = Triage.read(data, TRIAGE)
            except DocumentError as error:
                self.note(case, f"{error} (scored again)")
                return manifest
            # a restarted hub does not redo a complete result of a model of its table (or its refusal)
            if triage.final() and (triage.refused is not None or triage.model in {package.name for package in self.routes.packages}):
                case.triaged = True
                pyramid = folder.read_bytes(PYRAMID)
                if manifest.hub_pyramid_done(None if pyramid is None else PyramidRecord.read(pyramid, PYRAMID)):
                    self.finish(name, f"DONE {name}: already analysed ({triage.refused or f'score {triage.score or 0:.3f}'})")
                    return None
        return manifest

    def claim(self, case: Tracked) -> bool:
        """Take or renew the case's lease; False when another hub holds it.

        `If-None-Match: *` makes a first claim exclusive where the server honours it (Ceph RGW here does); an
        expired lease is replaced by a plain PUT and read back, so two hubs racing for it both see the one that
        landed last (a window of one round trip)."""
        from caseformat.layout import LEASE
        from caseformat.results import Lease
        from objectstore import StorageError

        lease = Lease(self.owner, time.time() + self.lease_seconds).to_json()
        try:
            if case.location.create_bytes(LEASE, lease):
                return True
            held = self.lease(case)
            if held is not None and held.owner != self.owner and held.expires > time.time():
                return False
            case.location.write_bytes(LEASE, lease)
            held = self.lease(case)
            return held is not None and held.owner == self.owner
        except StorageError as error:  # the store refused the write or the read: a retry with backoff, never an exit
            self.retry(case, str(error))
            return False

    def lease(self, case: Tracked) -> Lease | None:
        """The slide version's lease; None when there is none or it is unreadable (said once): no claim to respect."""
        from caseformat.errors import DocumentError
        from caseformat.layout import LEASE
        from caseformat.results import Lease

        data = case.location.read_bytes(LEASE)
        try:
            return None if data is None else Lease.read(data, LEASE)
        except DocumentError as error:
            self.note(case, f"{error} (replaced by this hub's)")
            return None

    def has_tiles_to_score(self, case: Tracked, options: AnalyzeOptions) -> bool:
        """Whether a first pass would score a tile: a tissue tile whose shards have all arrived. Until one has, the
        hub publishes nothing, so readers keep the station's edge map rather than a map of 0 tiles scored (the tissue
        mask lands after the plan, level 0 after the overview). A complete send's pass always runs: its map is the
        final word, a slide without tissue included."""
        from caseformat.layout import IMAGE
        from caseformat.results import COMPLETE
        from inference.pipeline import plan_heatmap, ready_tiles
        from inference.sources import ZarrRef, read_level

        assert case.manifest is not None
        if case.manifest.state == COMPLETE:
            return True
        source = ZarrRef(case.location.child(IMAGE)).open()
        heatmap = plan_heatmap(source, options, case.case)
        level = read_level(source, heatmap.grid.tile / heatmap.spec.input_size)
        return bool((heatmap.tissue & ready_tiles(source, heatmap.grid, level, case.manifest)).any())

    def work(self, case: Tracked) -> None:
        """One pass over the case, about PASS_SECONDS long: build the pyramid shards whose sources arrived, score
        what arrived since the last, hottest first (`inference.order`), publish; the last pass releases the
        lease."""
        from caseformat.results import COMPLETE
        from hub.pyramid import complete_pyramid
        from inference import CaseNotReadyError, analyze_case
        from inference.order import strongest
        from inference.pipeline import edge_priority, overview_priority, published_heatmap
        from slides.errors import one_line

        name = case.name
        renewed = time.monotonic()

        def renew(*_: int) -> None:  # a long pass keeps its claim
            nonlocal renewed
            if time.monotonic() - renewed > self.lease_seconds / 3:
                renewed = time.monotonic()
                self.claim(case)

        seen = case.pending
        try:
            assert case.manifest is not None  # `discover` read it for this pass
            built, pyramid_done = complete_pyramid(case.location, case.manifest, renew)
        except Exception as error:  # noqa: BLE001 - as below: this case only
            case.seen = seen
            self.retry(case, one_line(error))
            return
        if built:
            self.say(f"PYRAMID {name}: {built} shards built" + (", every level complete" if pyramid_done else ""))
        if case.triaged:
            case.seen = seen
            if pyramid_done:
                self.release(case)
                self.finish(name, f"DONE {name}: pyramid complete")
            elif case.manifest.state == COMPLETE:
                self.retry(case, "the send is complete but the pyramid is not")
            return
        try:
            routed = case.routed or self.route(case)
            if routed and case.refused is not None:
                self.refuse(case, pyramid_done)
        except Exception as error:  # noqa: BLE001 - as below: this case only
            case.seen = seen
            self.retry(case, one_line(error))
            return
        if not routed or case.refused is not None:
            case.seen = seen
            if not routed and case.manifest.state == COMPLETE:
                self.retry(case, "the send is complete but the slide's overview is not")
            return
        options = self.options_for(case)  # the package its route chose
        limit = max(options.batch, round((self.rate or 0.0) * PASS_SECONDS))
        try:
            if case.heatmap is None:  # a partial map a stopped or dead hub published: continue from it
                case.heatmap = published_heatmap(case.location, options)
            if case.priority is None:  # the edge map often lands after the hub's first pass: looked for until it has
                case.priority = edge_priority(case.location, options)
            before = 0 if case.heatmap is None else int(case.heatmap.scored.sum())
            if before == 0 and not self.has_tiles_to_score(case, options):  # nothing to publish: the edge map stays up
                case.seen = seen
                return
            if case.prior is None:  # once the overview it is read from has arrived
                case.prior = overview_priority(case.location, options, case.manifest)
            started = time.monotonic()
            heatmap = analyze_case(case.location, options=options, heatmap=case.heatmap, runner=self.runner, on_progress=renew,
                                   limit=limit, priority=strongest(case.priority, case.prior), **self.label(case))
        except CaseNotReadyError as error:
            case.seen = seen
            if case.manifest.state == COMPLETE:  # nothing more will arrive: what is there is unreadable
                self.retry(case, one_line(error))
            return
        except Exception as error:  # noqa: BLE001 - one case's failure, whatever it is, must not stop the hub
            case.seen = seen
            self.retry(case, one_line(error))
            return
        scored, tissue = int(heatmap.scored.sum()), int(heatmap.tissue.sum())
        if scored > before:
            measured = (scored - before) / max(time.monotonic() - started, 1e-3)
            self.rate = measured if self.rate is None else (self.rate + measured) / 2
            case.backoff, case.retry_at = 0.0, None
            case.said.clear()  # progress: a later failure is news again
        case.heatmap = heatmap
        case.seen = seen if scored - before < limit else None  # a full pass may have left arrived tiles: go on
        if heatmap.complete and pyramid_done:
            self.release(case)
            self.finish(name, f"DONE {name}: {scored}/{tissue} tiles, score {heatmap.triage_score() or 0:.3f} "
                              f"(scored {scored - before} here)")
        elif heatmap.complete:  # the send completed after the pyramid's pass: the next pass builds the rest
            case.triaged = True
            self.say(f"TRIAGED {name}: {scored}/{tissue} tiles, score {heatmap.triage_score() or 0:.3f}")
        else:
            self.say(f"PARTIAL {name}: {scored}/{tissue} tiles (scored {scored - before} here)")
        if case.seen is not None and case.manifest.state == COMPLETE and name not in self.finished:  # no arrival wakes it
            self.retry(case, "the send is complete but the pyramid is not" if heatmap.complete
                       else f"the send is complete but the pass ended at {scored}/{tissue} tiles")

    def route(self, case: Tracked) -> bool:
        """Hold the slide version to the routing table: its case's specimen site, the stain seen on its overview and
        its um/px choose the package that scores it (`case.route`), or the refusal. False while the overview (the
        coarsest level that arrived whole) is not there yet."""
        from caseformat.layout import IMAGE
        from inference.routing import detect_stain
        from inference.sources import ZarrRef

        assert case.manifest is not None
        if not case.manifest.plan_final:
            return False
        source = ZarrRef(case.location.child(IMAGE)).open()
        level = _overview_level(source, case.manifest)
        if level is None:
            return False
        overview: Any = source.arrays[level]
        height, width = overview.shape[1:]
        stain = detect_stain(source.read(level, 0, 0, width, height))
        record = self.record(case.case)  # None: not written, or unreadable (said once): the site is not known
        site = None if record is None else dict(record.context).get("specimen_site")
        case.route = self.routes.choose(site, stain, source.mpp)
        case.refused = case.route.refused
        case.routed = True
        if case.refused is not None:
            models = ", ".join(package.name for package in self.routes.packages)
            self.say(f"REFUSED {case.name}: {case.refused} (stain seen: {stain or 'not recognised'}; models {models})")
        elif case.route.package is not None and len(self.routes.packages) > 1:
            self.say(f"ROUTED {case.name}: model {case.route.package.name} (site {site}, stain {stain})")
        return True

    def options_for(self, case: Tracked) -> AnalyzeOptions:
        """How to score the slide version: with the package its route chose (the first package's options as they are,
        which is every slide's with a table of one)."""
        from inference.batch import package_options

        package = case.route.package if case.route is not None else None
        return self.options if package is None else package_options(self.options, package)

    def refuse(self, case: Tracked, pyramid_done: bool) -> None:
        """Publish the refusal in place of a score: QC only (tissue tiles while the slide arrives; focus and pen on a
        sample of them once it has), no score and no heatmap."""
        import numpy as np

        from caseformat.layout import HUB, IMAGE, TRIAGE
        from caseformat.results import COMPLETE, Triage
        from inference import InferenceError
        from inference.pipeline import plan_heatmap, ready_tiles
        from inference.sources import ZarrRef, read_level

        assert case.manifest is not None and case.refused is not None
        complete = case.manifest.state == COMPLETE
        ref = ZarrRef(case.location.child(IMAGE))
        source = ref.open()
        summary: dict[str, Any] = {"mpp": source.mpp, "mpp_assumed": source.mpp is None}
        try:
            heatmap = plan_heatmap(source, self.options, case.case)
        except InferenceError:  # too coarse for the model's tiles: QC is the tissue alone
            heatmap = None
        if heatmap is not None:
            spec, grid = heatmap.spec, heatmap.grid
            if complete:
                level = read_level(source, grid.tile / spec.input_size)
                tiles = np.argwhere(heatmap.tissue & ready_tiles(source, grid, level, case.manifest))
                tiles = tiles[np.random.default_rng(self.options.seed).permutation(len(tiles))[:QC_SAMPLE]]
                batch = self.options.batch
                tasks = [(ref, grid.tile, level, spec.input_size, tiles[k : k + batch], None) for k in range(0, len(tiles), batch)]
                self.runner.run(tasks, heatmap.add)  # no model: focus and pen only, the score stays NaN
            summary |= {"tissue_tiles": int(heatmap.tissue.sum()), "tiles_measured": int(heatmap.measured.sum()),
                        "tiles_scored": 0, "tile_level0_px": grid.tile, "qc": heatmap.qc()}
        triage = Triage(case.case, None, self.options.model.spec.name, HUB, complete, summary, "", case.refused)
        case.location.write_bytes(TRIAGE, triage.to_json())
        if not complete:
            return
        case.triaged = True
        if pyramid_done:
            self.release(case)
            self.finish(case.name, f"DONE {case.name}: {case.refused}; QC of {summary.get('tiles_measured', 0)} tiles")
        else:
            self.retry(case, "the send is complete but the pyramid is not")

    def label(self, case: Tracked) -> dict[str, Any]:
        """What the pass's triage.json says beside the score, written with it in one PUT: what the routing held the
        slide to (`routed`: without it no reader shows the score), what the model detects and its validation record."""
        route = case.route
        if route is None or route.package is None:
            return {}
        return {"routed": route.routed, "about": route.about()}

    def release(self, case: Tracked) -> None:
        """The slide version is done: its lease says so, and no hub waits for it to expire."""
        from caseformat.layout import LEASE
        from caseformat.results import Lease
        from objectstore import StorageError

        try:
            case.location.write_bytes(LEASE, Lease(self.owner, 0, finished=True).to_json())
        except StorageError as error:  # the lease then expires on its own
            self.note(case, str(error))

    def retry(self, case: Tracked, reason: str) -> None:
        """Look at the case again later though nothing new arrives: a failed pass is not its end. Said once per
        reason (a store that stays down must not flood the log); the wait doubles until the case makes progress."""
        case.backoff = min(RETRY_MOST, 2 * case.backoff or RETRY_FIRST)
        wait = min(RETRY_MOST, case.backoff * random.uniform(0.8, 1.2))
        case.retry_at = time.monotonic() + wait
        if _news(case, f"RETRY {reason}"):
            self.say(f"RETRY {case.name} in {wait:.0f} s: {reason}")

    def finish(self, name: str, line: str) -> None:
        self.finished.add(name)
        self.cases.pop(name, None)
        self.say(line)

    def note(self, case: Tracked, error: str) -> None:
        """An error, said once per case until it makes progress (a case that keeps failing, or fails two ways in
        turn, must not flood the log)."""
        if _news(case, f"ERROR {error}"):
            self.say(f"ERROR {case.name}: {error}")

    @staticmethod
    def say(line: str) -> None:
        stderr.print(line, markup=False, highlight=False, soft_wrap=True)


def _overview_level(source: Any, manifest: Manifest) -> int | None:
    """The coarsest level of the image whose planned shards have all arrived (by the manifest), small enough to read
    whole; None while there is none."""
    from caseformat.results import COMPLETE

    counts = {count.level: count for count in manifest.levels}
    for level in reversed(range(len(source.arrays))):
        height, width = source.arrays[level].shape[1:]
        if height * width > OVERVIEW_PIXELS:
            return None
        count = counts.get(level)
        if count is not None and count.planned and count.arrived >= count.planned:
            return level
        if not counts and manifest.state == COMPLETE:  # a manifest without level counts: all of it, once complete
            return level
    return None


def _topic(store: str, push_url: str) -> str:
    """A topic name for this hub's subscription to the store's prefix (letters and digits, as SNS allows): one per
    prefix and listener address, so hubs on two machines each get the events and a hub restarted on the same address
    makes its subscription again rather than adding one."""
    import hashlib

    return hashlib.sha256(f"{store} {push_url}".encode()).hexdigest()[:16]


def _news(case: Tracked, line: str) -> bool:
    """Whether `line` was not said of `case` since its last progress, numbers aside (a store client's message names
    how long its retries took, which must not make every failed poll news); remembers it."""
    key = _NUMBERS.sub("#", line)
    if key in case.said:
        return False
    case.said.add(key)
    return True


_NUMBERS = re.compile(r"\d+(?:\.\d+)?")


def _epoch(started_at: Any) -> float:
    """Seconds since the epoch of the manifest's ISO time; a case without one goes last."""
    try:
        return datetime.fromisoformat(started_at).timestamp()
    except (TypeError, ValueError):
        return datetime.max.replace(tzinfo=UTC).timestamp()
