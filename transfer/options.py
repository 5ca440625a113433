"""What a caller gives a send and what it gets back: the options (each a `slidestream send` flag), progress, the result.

Apart from the sender because they are a send's interface (the station's pipeline, `resume` and the progress displays
use them) while the sender's modules are its machinery; nothing here needs botocore (a quarter of a second to import).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from caseformat.layout import SlideRef

MiB = 1 << 20


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
