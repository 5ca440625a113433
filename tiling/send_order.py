"""The shards still to produce, as a live queue: the plan fixes the order, but a send learns things while it runs
(the tissue, a heatmap, whether a hub came for the in-between levels), and the queue takes them in without
rebuilding what is already under way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace

from tiling.plan import PriorityMap, PyramidPlan, ShardTask, level0_box, send_rank
from tiling.tissue import TissueMask


class SendOrder:
    """The shards still to produce, in send order; thread-safe, so a heatmap that arrives while the slide is
    already streaming can re-rank what has not been built yet (`reprioritize`), and a plan made before the tissue
    was known grows by the tissue shards once it is (`settle`)."""

    def __init__(self, plan: PyramidPlan) -> None:
        self._plan = plan
        self._pending = list(plan.shards)
        self._priority: PriorityMap | None = None
        self._lock = threading.Lock()
        self._settled = threading.Event()
        if plan.settled:
            self._settled.set()
        self._hub_decision: Callable[[list[ShardTask]], bool] | None = None

    @property
    def plan(self) -> PyramidPlan:
        """The plan as known now: settled once the tissue is known."""
        return self._plan

    def next(self) -> ShardTask | None:
        with self._lock:
            return self._pending.pop(0) if self._pending else None

    def settle(self, tissue: TissueMask) -> PyramidPlan:
        """Complete a deferred plan with the tissue mask: its tissue shards join the shards still to produce."""
        with self._lock:
            known = {task.key for task in self._plan.shards}
            self._plan = self._plan.with_tissue(tissue, self._priority)
            added = [task for task in self._plan.shards if task.key not in known]
            self._pending = sorted(self._pending + added, key=lambda t: send_rank(self._plan.levels, t))
        self._settled.set()
        return self._plan

    def decide_hub_levels(self, decide: Callable[[list[ShardTask]], bool]) -> None:
        """Let `decide` say, once every other shard is produced, whether the writer builds the shards the plan left
        to the hub (it gets them) after all: True where no hub came for them. Without it they stay the hub's."""
        self._hub_decision = decide

    def take_hub_levels(self) -> bool:
        """`produce` asks this once nothing else is pending: whether the hub levels' shards became the writer's
        (`decide_hub_levels` said so) and joined the shards still to produce. Asks once; False ever after."""
        decide, self._hub_decision = self._hub_decision, None
        tasks = self._plan.hub_shards
        if decide is None or not tasks or not decide(tasks):
            return False
        with self._lock:
            self._plan = self._plan.without_hub_levels()
            self._pending = sorted(self._pending + tasks, key=lambda t: send_rank(self._plan.levels, t))
        return True

    def wait_settled(self, timeout: float | None = None) -> PyramidPlan | None:
        """The whole plan once the tissue is known, or None after `timeout` seconds."""
        return self._plan if self._settled.wait(timeout) else None

    def reprioritize(self, priority: PriorityMap) -> None:
        """Re-rank the shards not yet started by `priority` (hottest first within each level)."""
        levels, side = self._plan.levels, self._plan.shard_side
        with self._lock:
            self._priority = priority
            ranked = []
            for task in self._pending:
                level = levels[task.level]
                box = level0_box(level, task.col * side, task.row * side, (task.col + 1) * side, (task.row + 1) * side)
                ranked.append(replace(task, priority=priority(*box) if task.tissue else 0.0))
            self._pending = sorted(ranked, key=lambda t: send_rank(levels, t))
