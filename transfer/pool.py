"""The send's worker pool: a bounded queue, threads that each put one object at a time, and auto concurrency.

Apart from the sender because how many puts are in flight is a question of the link (its throughput, its round trip,
the size of the objects), not of what is sent: the sender hands jobs in and gets each one back in `deliver` on a
worker thread. The first failure anywhere (a worker, the monitor, the manifest writer) stops the pool and is raised
on the sender's thread at its next step.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Collection
from typing import Any, Generic, TypeVar

from objectstore.clients import MAX_CONCURRENCY
from transfer.network import Meter

AUTO_START = 8  # puts in flight before anything is measured: metadata and overview go in about one round trip
IN_FLIGHT_SECONDS = 1.0  # auto concurrency keeps at most this much link time in flight beyond two objects

Job = TypeVar("Job")


class Pool(Generic[Job]):
    """Workers delivering the jobs of one send."""

    def __init__(self, deliver: Callable[[Job], None], auto: bool, extra: Callable[[], int]) -> None:
        """`deliver`: puts one job (on a worker thread); `auto`: concurrency follows the link (`monitor`); `extra`:
        workers allowed beyond the sized count with auto concurrency (the sender's metadata objects not verified yet)."""
        self._deliver = deliver
        self._auto = auto
        self._extra = extra
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self.workers: list[threading.Thread] = []
        self.active = 0  # workers allowed to take jobs (auto concurrency moves it both ways)
        self._queue: queue.Queue[Job] = queue.Queue(maxsize=2 * MAX_CONCURRENCY)  # bounds memory: ~64 objects
        self._pending = 0  # jobs queued or in flight
        self._pending_changed = threading.Condition()
        self._workers_lock = threading.Lock()

    def put(self, job: Job, start: bool = False) -> None:
        """Queue `job`, waiting while the queue is full; `start`: start the workers it allows now (a metadata object)."""
        with self._pending_changed:
            self._pending += 1
        if start:
            self._start_workers()
        while True:
            self.raise_failure()
            try:
                self._queue.put(job, timeout=0.2)
                return
            except queue.Full:
                continue

    def drain(self) -> None:
        """Wait until every queued object is verified (or something failed)."""
        with self._pending_changed:
            while self._pending and self.failure is None:
                self._pending_changed.wait(0.5)
        self.raise_failure()

    def set_concurrency(self, target: int) -> None:
        """Let `target` workers take jobs (starting threads as needed); the others idle after their current put."""
        self.active = max(1, min(target, MAX_CONCURRENCY))
        self._start_workers()

    def _allowed(self) -> int:
        """Workers that may take a job now. With auto concurrency each metadata object not verified yet adds one:
        they are a few hundred bytes each, and the overview shards behind them should not wait a round trip."""
        return self.active + (self._extra() if self._auto else 0)

    def _start_workers(self) -> None:
        """Threads up to the allowed count. Locked: the main thread (metadata) and the monitor (sizing) both call it."""
        with self._workers_lock:
            while len(self.workers) < self._allowed():
                index = len(self.workers)
                thread = threading.Thread(target=self._work, args=(index,), name=f"upload-{index}", daemon=True)
                self.workers.append(thread)
                thread.start()

    def _work(self, index: int) -> None:
        while not self.stop.is_set():
            if index >= self._allowed():
                self.stop.wait(0.1)
                continue
            try:
                job = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._deliver(job)
            except BaseException as error:  # noqa: BLE001 - handed to the main thread, which raises it
                self.fail(error)
            finally:
                with self._pending_changed:
                    self._pending -= 1
                    self._pending_changed.notify_all()

    def guard(self, target: Any) -> Any:
        """`target` for a helper thread: what it raises stops the send like a worker's failure."""

        def run() -> None:
            try:
                target()
            except BaseException as error:  # noqa: BLE001
                self.fail(error)

        return run

    def fail(self, error: BaseException) -> None:
        with self._pending_changed:
            if self.failure is None:
                self.failure = error
            self.stop.set()
            self._pending_changed.notify_all()

    def failed(self) -> bool:
        """Whether the send stopped for a failure (rather than at its end)."""
        return self.stop.is_set() and self.failure is not None

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    def monitor(self, meter: Meter, tick: Callable[[], None], object_sizes: Callable[[], Collection[int]]) -> None:
        """Call `tick` twice a second (progress, the deadline); every 2 s let auto concurrency size the pool.

        Sizing happens only while objects wait for a worker (not when conversion is the bottleneck). Growth, two
        ways: a put idles one round trip before its answer, so a busy link needs 1 + bandwidth x RTT / object size
        puts in flight (we aim for twice that); and new connections cost handshakes and TCP slow start that the RTT
        sample does not see, so while the last growth raised throughput by more than 10 %, half as many workers
        again are added. The cap: never more than two objects plus IN_FLIGHT_SECONDS of link time in flight. Puts in
        flight share the link, so each extra one delays the next shard in line without adding throughput (on a
        20 Mbit/s link, 32 puts of 1.5 MB held the full-resolution milestone back by 20 s). Object size is counted
        per byte (`typical_size`): by a plain median, the metadata objects that open a send made room for 32 puts.
        """
        ticks, rate_at_growth = 0, 0.0
        while not self.stop.wait(0.5):
            ticks += 1
            tick()
            if not self._auto or ticks % 4 or self._queue.qsize() == 0:
                continue
            rtt, rate = meter.rtt(), meter.rate(2.0)
            size = typical_size(object_sizes())
            if not (rtt and rate and size):
                continue
            active = self.active
            target = math.ceil(2 * (1 + rate * rtt / size))
            if rate > 1.1 * rate_at_growth:
                target, rate_at_growth = max(target, active + max(1, active // 2)), rate
            self.set_concurrency(min(target, 2 + math.ceil(rate * IN_FLIGHT_SECONDS / size)))


def typical_size(sizes: Collection[int]) -> float:
    """The size of the object an average byte travels in (sum of squares over sum): what sizes the bytes in flight.

    A send opens with a dozen zarr.json of a few hundred bytes and small overview shards beside its first 1 MB ones;
    their median of a few kB let auto concurrency put 32 shards in flight on 5g, some of which then stalled for 20 s.
    """
    total = sum(sizes)
    return sum(size * size for size in sizes) / total if total else 0.0
