"""`slidestream hub`: the pathology centre's side, the counterpart of `watch` at the hospital.

It polls a prefix for cases, and scores every arriving case at full magnification while it arrives, one pass at a
time (each pass scores the tissue tiles whose shards have arrived since the last, through `inference.analyze_case`,
and publishes the partial heatmap and triage.json, stage "hub"), the case with the least time left on its
30-minute clock first. Each pass first completes the pyramid (`slidestream.hub_pyramid`): the in-between
levels the send left out are built from the shards that arrived. A case is claimed with a lease object
(`transfer.target.LEASE`), so two hubs on one prefix share the cases instead of doubling the work. torch and Dask are imported inside the command.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from inference import AnalyzeOptions, Heatmap, Location, Runner

stderr = Console(stderr=True)


def hub(
    store: Annotated[str, typer.Argument(help="s3://BUCKET/PREFIX where the cases arrive.")],
    endpoint_url: Annotated[str | None, typer.Option("--endpoint-url", help="S3-compatible endpoint (MinIO, Ceph RGW, ...); default AWS.")] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="A dask.distributed scheduler, e.g. tcp://10.0.0.5:8786 (default: threads on this machine).")] = None,
    device: Annotated[str, typer.Option("--device", help="Where the model runs: cpu, cuda, cuda:1, ...")] = "cpu",
    poll: Annotated[float, typer.Option("--poll", min=0.1, help="Seconds between looks at the prefix when there is nothing to do.")] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Stop when every case found is analysed, failed or another hub's.")] = False,
    lease: Annotated[float, typer.Option("--lease", min=1, help="Seconds a claimed case stays this hub's without renewal: how long a dead hub's case waits for another.")] = 60.0,
) -> None:
    """Triage every case arriving under the prefix at full magnification, publishing the heatmap as it grows."""
    from transfer.target import parse_endpoint, parse_store_url

    parse_endpoint(endpoint_url)  # before torch loads and before obstore sees it (a malformed one panics there)
    parse_store_url(store)
    import torch

    from inference import AnalyzeOptions, Location, ModelRef, Runner
    from transfer.target import HUB

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise typer.BadParameter("no CUDA device is available to this torch build", param_hint="--device")
    options = AnalyzeOptions(model=ModelRef(device=device), scheduler=scheduler, stage=HUB)
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    with Runner(options.scheduler, options.threads, options.torch_threads) as runner:
        Hub(Location.parse(store, endpoint_url), options, runner, owner, lease).run(poll, once)


@dataclass
class Tracked:
    """What the hub knows of one case between polls."""

    location: Location
    started: float = 0.0  # the manifest's started_at (epoch seconds): its clock
    heatmap: Heatmap | None = None  # the last pass's, so the next scores only what arrived since
    seen: tuple[Any, ...] | None = None  # the manifest's state and arrivals at the last pass
    pending: tuple[Any, ...] | None = None  # the same now, for the pass about to run
    manifest: dict[str, Any] = field(default_factory=dict)  # as read for the pass about to run
    triaged: bool = False  # a hub's complete map is there: only the pyramid may be left to build
    last_error: str = ""


@dataclass
class Hub:
    root: Location
    options: AnalyzeOptions
    runner: Runner
    owner: str
    lease_seconds: float  # renewed at least every third of it
    cases: dict[str, Tracked] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)  # complete at full magnification, or failed: never looked at again
    store_failing: bool = False  # listing the prefix failed at the last poll (said once, not at every poll)

    def run(self, poll: float, once: bool) -> None:
        stderr.print(f"hub {self.owner} watching {self.root.url}", markup=False, highlight=False, soft_wrap=True)
        while True:
            ready, leased = self.discover()
            worked = False
            for case in sorted(ready, key=lambda c: c.started):  # least time left on its clock first
                if self.claim(case):
                    self.work(case)
                    worked = True
                    break  # re-choose after every pass: a case that started earlier may have arrived meanwhile
            if once and not ready and not leased and all(name in self.finished for name in self.cases):
                return
            if not worked:
                time.sleep(poll)

    def discover(self) -> tuple[list[Tracked], int]:
        """Cases with work to do now, and how many others are in progress (a hub's lease, nothing new arrived).

        Cost per poll: one LIST of the prefix, and per case not finished one GET of its manifest and one of its
        triage.json (and of the pyramid record once that is complete); a finished case costs nothing more."""
        from inference import InferenceError
        from transfer.manifest import FAILED, case_state, hub_pyramid_done
        from transfer.target import MANIFEST, PYRAMID, TRIAGE

        try:
            folders = self.root.subfolders()
        except InferenceError as error:  # the store is unreachable or the bucket gone: said once, retried each poll
            if not self.store_failing:
                self.store_failing = True
                self.say(f"RETRY {error}")
            return [], 0
        if self.store_failing:
            self.store_failing = False
            self.say(f"the store answers again: {self.root.url}")
        ready, waiting = [], 0
        for folder in folders:
            name = folder.name
            if name in self.finished:
                continue
            case = self.cases.setdefault(name, Tracked(folder))
            try:
                manifest = folder.read_json(MANIFEST)
                if manifest is None:
                    continue  # not a case (yet)
                state, reason = case_state(manifest)
                if state == FAILED:
                    self.finish(name, f"SKIP {name}: the send failed: {reason}")
                    continue
                triage = folder.read_json(TRIAGE) or {}
                if case.heatmap is None and _done_by_a_hub(triage, self.options):
                    case.triaged = True
                    if hub_pyramid_done(manifest, folder.read_json(PYRAMID)):
                        self.finish(name, f"DONE {name}: already analysed (score {triage.get('score') or 0:.3f})")
                        continue
            except InferenceError as error:
                self.note(case, str(error))
                continue
            case.started = _epoch(manifest.get("started_at"))
            progress = (state, len(manifest.get("arrived", [])), manifest.get("plan_final"))
            if progress == case.seen:
                waiting += 1
                continue
            case.pending, case.manifest = progress, manifest
            ready.append(case)
        return ready, waiting

    def claim(self, case: Tracked) -> bool:
        """Take or renew the case's lease; False when another hub holds it.

        `If-None-Match: *` makes a first claim exclusive where the server honours it (Ceph RGW here does); an
        expired lease is replaced by a plain PUT and read back, so two hubs racing for it both see the one that
        landed last (a window of one round trip)."""
        from transfer.target import LEASE

        lease = {"owner": self.owner, "expires": time.time() + self.lease_seconds}
        if case.location.create_json(LEASE, lease):
            return True
        held = case.location.read_json(LEASE) or {}
        if held.get("owner") != self.owner and float(held.get("expires", 0)) > time.time():
            return False
        case.location.write_json(LEASE, lease)
        return (case.location.read_json(LEASE) or {}).get("owner") == self.owner

    def work(self, case: Tracked) -> None:
        """One pass over the case: build the pyramid shards and score the tiles that arrived since the last,
        publish; the last pass releases the lease."""
        from inference import CaseNotReadyError, analyze_case
        from inference.pipeline import published_heatmap
        from slides.errors import one_line
        from slidestream.hub_pyramid import complete_pyramid

        name = case.location.name
        renewed = time.monotonic()

        def renew(*_: int) -> None:  # a long pass keeps its claim
            nonlocal renewed
            if time.monotonic() - renewed > self.lease_seconds / 3:
                renewed = time.monotonic()
                self.claim(case)

        seen = case.pending
        try:
            built, pyramid_done = complete_pyramid(case.location, case.manifest, renew)
        except Exception as error:  # noqa: BLE001 - as below: this case only
            self.note(case, one_line(error))
            case.seen = seen
            return
        if built:
            self.say(f"PYRAMID {name}: {built} shards built" + (", every level complete" if pyramid_done else ""))
        if case.triaged:
            case.seen = seen
            if pyramid_done:
                self.release(case)
                self.finish(name, f"DONE {name}: pyramid complete")
            return
        try:
            if case.heatmap is None:  # a partial map a stopped or dead hub published: continue from it
                case.heatmap = published_heatmap(case.location, self.options)
            before = 0 if case.heatmap is None else int(case.heatmap.scored.sum())
            heatmap = analyze_case(case.location, options=self.options, heatmap=case.heatmap, runner=self.runner,
                                   on_progress=renew)
        except CaseNotReadyError:
            case.seen = seen
            return
        except Exception as error:  # noqa: BLE001 - one case's failure, whatever it is, must not stop the hub
            self.note(case, one_line(error))
            case.seen = seen
            return
        case.heatmap, case.seen = heatmap, seen
        scored, tissue = int(heatmap.scored.sum()), int(heatmap.tissue.sum())
        if heatmap.complete and pyramid_done:
            self.release(case)
            self.finish(name, f"DONE {name}: {scored}/{tissue} tiles, score {heatmap.triage_score() or 0:.3f} "
                              f"(scored {scored - before} here)")
        elif heatmap.complete:  # the send completed after the pyramid's pass: the next pass builds the rest
            case.triaged = True
            self.say(f"TRIAGED {name}: {scored}/{tissue} tiles, score {heatmap.triage_score() or 0:.3f}")
        else:
            self.say(f"PARTIAL {name}: {scored}/{tissue} tiles (scored {scored - before} here)")

    def release(self, case: Tracked) -> None:
        """The case is done: its lease says so, and no hub waits for it to expire."""
        from transfer.target import LEASE

        case.location.write_json(LEASE, {"owner": self.owner, "expires": 0, "finished": True})

    def finish(self, name: str, line: str) -> None:
        self.finished.add(name)
        self.cases.pop(name, None)
        self.say(line)

    def note(self, case: Tracked, error: str) -> None:
        """An error, said once per case until it changes (a case that keeps failing must not flood the log)."""
        if error != case.last_error:
            case.last_error = error
            self.say(f"ERROR {case.location.name}: {error}")

    @staticmethod
    def say(line: str) -> None:
        stderr.print(line, markup=False, highlight=False, soft_wrap=True)


def _done_by_a_hub(triage: dict[str, Any], options: AnalyzeOptions) -> bool:
    """A complete full-magnification result of this model is there: a restarted hub does not redo it."""
    from transfer.target import is_final

    return is_final(triage, options.model.spec.name)


def _epoch(started_at: Any) -> float:
    """Seconds since the epoch of the manifest's ISO time; a case without one goes last."""
    try:
        return datetime.fromisoformat(started_at).timestamp()
    except (TypeError, ValueError):
        return datetime.max.replace(tzinfo=UTC).timestamp()
