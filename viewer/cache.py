"""A tiny async cache: bounded, optionally expiring, one load in flight per key, failures never kept; and how long
the viewer may keep what changes on the store (`LIVE_TTL`, `SIDECAR_TTL`: seconds, so the server stays stateless)."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
LIVE_TTL = 1.0  # seconds a manifest, a case's slides or its unsent records may be stale: how quickly a page sees arrivals
SIDECAR_TTL = 2.0  # triage, registration, reports, heatmap version, corrupt.json


class AsyncCache(Generic[K, V]):
    """Caches the *task* that loads a value, so fifty viewers asking for one shard index cost one GET.

    `maxsize` bounds the sum of the entries' weights: each entry weighs 1 unless `get` says otherwise (a tile's
    bytes weigh their length, so the bound is in bytes)."""

    def __init__(self, maxsize: int, ttl: float | None = None) -> None:
        self._maxsize = maxsize
        self._ttl = ttl
        self._entries: OrderedDict[K, tuple[float, asyncio.Task[V], int]] = OrderedDict()
        self._weight = 0

    async def get(self, key: K, load: Callable[[], Awaitable[V]], weight: int = 1) -> V:
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry is None or (self._ttl is not None and now - entry[0] > self._ttl):
            self.forget(key)
            entry = (now, asyncio.ensure_future(load()), weight)
            self._entries[key] = entry
            self._weight += weight
            entry[1].add_done_callback(lambda task: self._forget_failure(key, task))
            while self._weight > self._maxsize and self._entries:
                self._weight -= self._entries.popitem(last=False)[1][2]
        else:
            self._entries.move_to_end(key)
        # shield: a client that hangs up must not cancel a load other requests are waiting for
        return await asyncio.shield(entry[1])

    def forget(self, key: K) -> None:
        """Drop a value the caller knows to be stale (e.g. after writing it)."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._weight -= entry[2]

    def _forget_failure(self, key: K, task: asyncio.Task[V]) -> None:
        if task.cancelled() or task.exception() is not None:
            entry = self._entries.get(key)
            if entry is not None and entry[1] is task:
                self.forget(key)
