"""Link loss during a send: when the link went down, how long a send waits for it (the deadline), and the backoff between tries.

One place for the outage because every request of a send meets the same link: the preflight, each worker's put and the
monitor (which stops a send whose requests hang in a dead link) all count against one deadline. Past it the send stops
with what the journal holds and `slidestream resume` continues later.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from transfer.errors import NetworkDeadlineError
from transfer.network import describe

BACKOFF_BASE, BACKOFF_CAP = 0.5, 20.0  # seconds, full jitter: link loss


class Link:
    """The state of the link to one endpoint during one send; thread-safe."""

    def __init__(self, endpoint: str | None, deadline: float, stop: threading.Event, on_change: Callable[[], None]) -> None:
        """`stop`: the send's stop, which ends a backoff early; `on_change`: called when a request failed for the network
        (the progress display shows the wait)."""
        self.endpoint = endpoint
        self.deadline = deadline
        self._stop = stop
        self._on_change = on_change
        self._lock = threading.Lock()
        self._outage_since: float | None = None
        self._last_ok = 0.0  # when a request last reached the server: an outage starts no earlier
        self._network_error: BaseException | None = None  # the last request that failed for the network

    @property
    def waiting(self) -> bool:
        """Whether the send is waiting for the link."""
        with self._lock:
            return self._outage_since is not None

    def ok(self) -> None:
        with self._lock:
            self._outage_since = None
            self._last_ok = time.monotonic()

    def down(self, error: BaseException, started: float) -> None:
        """Note a request that failed for the network; past the deadline the send stops with what the journal holds.

        The outage counts from when the failing request was started (a connect or read timeout is part of it), but
        not from before the last request that got through."""
        with self._lock:
            if self._outage_since is None:
                self._outage_since = max(started, self._last_ok)
            self._network_error = error
        self._on_change()
        self.check_deadline()

    def check_deadline(self) -> None:
        """Raise once the link has been down for the deadline (the monitor calls this too, so requests that hang
        in a dead link do not hold the send past it)."""
        with self._lock:
            since, error = self._outage_since, self._network_error
        down = time.monotonic() - since if since is not None else 0.0
        if since is not None and down >= self.deadline:
            server = self.endpoint or "AWS S3"
            reason = describe(error) if error is not None else "no answer"
            raise NetworkDeadlineError(
                f"no working connection to {server} for {down:.0f} s (--deadline {self.deadline:g}; last: {reason}); "
                "`slidestream resume` continues where this stopped"
            )

    def backoff(self, attempt: int, base: float, interrupt: threading.Event | None = None) -> None:
        """Exponential backoff with full jitter, never sleeping past the deadline."""
        delay = random.uniform(0, min(BACKOFF_CAP, base * 2**attempt))
        with self._lock:
            if self._outage_since is not None:
                delay = min(delay, max(0.0, self._outage_since + self.deadline - time.monotonic()))
        (interrupt or self._stop).wait(delay)
