"""The arrival manifest (`manifest.json` beside `image.zarr`): which shards a reader may trust already.

A missing Zarr chunk reads as the fill value, so a viewer alone cannot tell "not arrived yet" from "background".
The manifest can: a shard key in `planned` but not in `arrived` has not arrived; once `plan_final` is true, a key
not planned at all holds no tissue (its chunks read as glass). While `plan_final` is false (the overview is sent
before the tissue is known), any shard not arrived may still come. `arrived` only ever lists shards whose bytes the
server verifiably holds.

`state` says what the case is: "sending" (more may come; also after a lost link, until `resume` finishes it),
"complete" (every object verified) or "failed" (the send was given up for a reason no retry cures, a corrupt slide
or a server that keeps corrupting an object; its image objects were deleted and `failed` gives the one-line
reason). The sender writes the manifest before any object of the image, so an image a slidestream send wrote never
exists without one. The document's type, and its one bounded reader (of `slidestream-manifest/1` too, which had no
`state`), is `caseformat.results.Manifest`: what `Arrivals.to_json` writes is what it reads back.

Levels the hub builds (`tiling.LevelPlan.at_hub`: the in-between levels downsampled from a stored level) are not
sent: `hub_levels` maps each to the level it is built from, and `hub_planned` lists their shards that hold tissue.
The hub records what it wrote in an object of its own beside the manifest (`caseformat.results.PyramidRecord`:
`built`, and `empty` for planned shards with nothing to write), so no object has two writers; `Manifest.with_hub_pyramid` merges
the two into the view every reader uses: a hub shard is planned, arrived once built, and never background
until the hub says so. Where no hub claimed the slide version by the end of the send (`SendOptions.hub_wait`), the
sender builds those levels itself and they are its own: planned and arrived like any shard, and the complete
manifest names no hub level, so no reader ever finds a complete image with an empty level.

A reader that finds a stored object corrupt (a shard whose index or chunk fails its CRC32C) refuses it and lists
it in corrupt.json beside the manifest (`caseformat.results.CorruptRecord`): the centre's request to the station,
which still holds the slide, to send it again. `resend_keys` says which of those objects a send is to upload again
(its journal's record of them as verified no longer counts).
"""

from __future__ import annotations

import threading
import time
from datetime import datetime

from caseformat.bounded import utc_now
from caseformat.layout import IMAGE, SlideRef
from caseformat.results import COMPLETE, FAILED, SENDING, CorruptRecord, Manifest
from caseformat.results import MANIFEST_FORMAT as FORMAT
from tiling import PyramidPlan, ShardTask

OVERVIEW = "overview"  # every overview (complete) level arrived: the whole slide is viewable at low power
FULL_RESOLUTION = "tissue_full_resolution"  # every tissue shard of level 0 arrived (and the overview)


class Arrivals:
    """Thread-safe state behind the manifest: planned shards (in send order), arrived ones, milestones.

    The plan lists the shards to send; a plan made before the tissue was known lists the overview only and grows
    by `settle`. A shard `produce()` never yields (no chunk worth writing) leaves `planned` when production ends.
    The send order may change mid-stream (a heatmap re-ranks it), so nothing here depends on the order in which
    shards come.
    """

    def __init__(self, ref: SlideRef, plan: PyramidPlan, started_at: str, milestones: dict[str, float]) -> None:
        self.ref = ref
        self.started_at = started_at
        self._started = datetime.fromisoformat(started_at).timestamp()
        self.milestones = dict(milestones)
        self._complete_levels = {level.index for level in plan.levels if level.complete}
        self._tasks: list[ShardTask] = []
        self._planned: dict[str, ShardTask] = {}
        self._by_level: dict[int, list[ShardTask]] = {}
        self._settled = False
        self._produced: set[str] = set()
        self._finished = False  # produce() is exhausted: shards never produced are empty, not pending
        self._arrived: dict[str, int] = {}  # key -> bytes
        self._assumed: dict[str, int] = {}
        self._metadata_bytes = 0
        self._hub_levels: dict[str, int | None] = {}
        self._hub_planned: list[str] = []
        self._lock = threading.Lock()
        self.settle(plan)

    # -- updates -------------------------------------------------------------------------------------------
    def settle(self, plan: PyramidPlan) -> None:
        """Take the plan as known now: a settled plan adds the tissue shards to a plan that had only the overview."""
        with self._lock:
            for task in plan.shards:
                if task.key not in self._planned:
                    self._tasks.append(task)
                    self._planned[task.key] = task
                    self._by_level.setdefault(task.level, []).append(task)
                    if task.key in self._assumed:
                        self._arrived[task.key] = self._assumed[task.key]
            self._settled = plan.settled
            # a send whose hub never came builds those levels itself: they become its own, planned above
            self._hub_levels = {str(level.index): level.downsampled_from for level in plan.levels if level.at_hub}
            self._hub_planned = [task.key for task in plan.hub_shards]

    def produced(self, key: str) -> None:
        """`key` came out of produce()."""
        with self._lock:
            self._produced.add(key)

    def finished_producing(self) -> list[str]:
        """produce() is exhausted: the rest of the plan was empty. Returns milestones this completes."""
        with self._lock:
            for task in self._tasks:
                if task.key not in self._produced:
                    self._planned.pop(task.key, None)
            self._finished = True
            return self._reached()

    def overview_produced(self) -> bool:
        """Every shard of the overview levels came out of produce()."""
        with self._lock:
            return all(task.key in self._produced for task in self._tasks if self._is_overview(task))

    def arrive(self, key: str, size: int) -> tuple[list[str], bool]:
        """The server verifiably holds `key`; returns the milestones reached just now, and whether this completed
        a level (worth telling readers at once: a level is what a viewer switches to)."""
        with self._lock:
            if key not in self._planned:
                self._metadata_bytes += size
                return self._reached(), False
            self._arrived[key] = size
            level = self._planned[key].level
            level_done = all(task.key in self._arrived or (self._finished and task.key not in self._planned) for task in self._by_level[level])
            return self._reached(), level_done

    def assume(self, sizes: dict[str, int]) -> None:
        """Shards an earlier run verified, for the same image: arrived until reproduced bytes say otherwise."""
        with self._lock:
            self._assumed = dict(sizes)
            self._arrived.update({key: size for key, size in sizes.items() if key in self._planned})

    def revoke(self, key: str) -> None:
        """A shard assumed from an earlier run turned out to differ (new options or version): not arrived after all."""
        with self._lock:
            self._arrived.pop(key, None)
            self._assumed.pop(key, None)

    def _reached(self) -> list[str]:
        new = []
        for name, wanted in ((OVERVIEW, self._is_overview), (FULL_RESOLUTION, self._is_tissue)):
            if name in self.milestones or (name == FULL_RESOLUTION and not self._settled):
                continue
            tasks = [task for task in self._tasks if wanted(task)]
            if all(task.key in self._arrived or (self._finished and task.key not in self._planned) for task in tasks):
                self.milestones[name] = round(time.time() - self._started, 3)
                new.append(name)
        return new

    def _is_overview(self, task: ShardTask) -> bool:
        return task.level in self._complete_levels

    def _is_tissue(self, task: ShardTask) -> bool:
        """Full resolution is reached when level 0's tissue is there (in-between levels may still follow)."""
        return (task.tissue and task.level == 0) or task.level in self._complete_levels

    # -- reading -------------------------------------------------------------------------------------------
    @property
    def counts(self) -> tuple[int, int]:
        with self._lock:
            return len(self._arrived), len(self._planned)

    def document(self, complete: bool = False) -> dict:  # type: ignore[type-arg]
        """The manifest's content right now (state "sending", or "complete")."""
        with self._lock:
            planned = list(self._planned)
            levels: dict[int, dict[str, int | bool]] = {}
            for task in self._planned.values():
                entry = levels.setdefault(
                    task.level, {"level": task.level, "planned": 0, "arrived": 0, "overview": self._is_overview(task)}
                )
                entry["planned"] += 1
                entry["arrived"] += task.key in self._arrived
            hub = {"hub_levels": self._hub_levels, "hub_planned": list(self._hub_planned)} if self._hub_levels else {}
            return {
                "format": FORMAT,
                "case": self.ref.case,
                "slide": self.ref.slide,
                "version": self.ref.version,
                "image": IMAGE,
                "started_at": self.started_at,
                "updated_at": utc_now(),
                "state": COMPLETE if complete else SENDING,
                "complete": complete,
                "plan_final": self._settled,
                "planned": planned,
                "arrived": [key for key in planned if key in self._arrived],
                "levels": [levels[index] for index in sorted(levels)],
                "milestones": {name: self.milestones.get(name) for name in (OVERVIEW, FULL_RESOLUTION)},
                "bytes_sent": self._metadata_bytes + sum(self._arrived.values()),
                **hub,
            }

    def to_json(self, complete: bool = False) -> bytes:
        """The manifest as written, through its type: a document its readers would refuse is never sent."""
        return Manifest.from_document(self.document(complete)).to_json()

    def restart(self, started_at: str) -> None:
        """The image differs from the one the journal knew (a rescan under the same case ID): a new send's clock."""
        with self._lock:
            self.started_at = started_at
            self._started = datetime.fromisoformat(started_at).timestamp()
            self.milestones = {}
            self._arrived.clear()
            self._assumed = {}


def failed_document(ref: SlideRef, started_at: str, reason: str) -> bytes:
    """The manifest of a send given up: nothing of its image is left to read, and the reason says why."""
    return Manifest(ref.case, ref.slide, ref.version, started_at, FAILED, reason, updated_at=utc_now()).to_json()


def resend_keys(manifest: Manifest | None, corrupt: CorruptRecord | None) -> list[str]:
    """The image objects ("0/c/0/3/5", the journal's keys) a reader found corrupt in this send (corrupt.json of the
    same `started_at`) and that the sender wrote: it uploads them again, whatever its journal says (the hub builds
    its own levels' shards again itself)."""
    if manifest is None or corrupt is None or corrupt.started_at != manifest.started_at:
        return []
    sent = set(manifest.planned)
    return [key for key in corrupt.keys if key in sent]
