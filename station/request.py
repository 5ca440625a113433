"""What one send is asked to do: the one record of a send's options that `slidestream send`, `watch`, `resume`, the
journal and `demo` share, so an option added here reaches all of them (and `resume` finishes a send as it began)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from collections.abc import Mapping

    from caseformat.layout import SlideRef

CONCURRENCY_MOST = 32
SSE_MODES = ("AES256", "aws:kms")


class SendRequestError(ValueError):
    """An option a send cannot run with; `option` names it, as the command line spells it."""

    def __init__(self, option: str, problem: str) -> None:
        super().__init__(problem)
        self.option = option


@dataclass(frozen=True)
class SendRequest:
    """A send of one slide file. The journal keeps it as JSON (`to_json`) and `resume` reads it back (`from_json`);
    the slide version (`case`, `slide_id`, `version_id`, `claim`) is filled in once the local registry has said
    which version the file is (`for_version`)."""

    slide: str  # the slide's absolute path (a file, or a DICOM series folder)
    destination: str  # s3://BUCKET/PREFIX
    endpoint_url: str | None = None
    case: str | None = None
    slide_id: str | None = None  # the slide version the registry gave this file (s1, v1)
    version_id: str | None = None
    claim: str | None = None  # the slide.json that takes the slide's number on the store, created by the send
    concurrency: str = "auto"  # uploads in flight: "auto" or 1-32
    max_rate: float | None = None  # Mbit/s
    quality: int = 90  # JPEG quality of re-encoded chunks
    lossless: bool = False
    keep_background: bool = False
    keep_phi: bool = False
    sse: str | None = None
    sse_kms_key_id: str | None = None
    ca_bundle: str | None = None
    deadline: float = 600.0  # seconds the link may stay down before the send gives up
    # Edge triage is on: the hospital's hot folder is the main job and the heatmap travelling first is the point; on
    # a 2-core machine it runs in one spawned process after the overview is out, and `watch` runs one at a time.
    edge: bool = True
    model: str | None = None  # the edge triage's model package (its folder; None: the default model)
    full_pyramid: bool = False
    hub_wait: float = 30.0  # seconds a send waits at its end for a hub to claim the in-between levels

    def __post_init__(self) -> None:
        if self.concurrency != "auto" and not (self.concurrency.isdigit() and 1 <= int(self.concurrency) <= CONCURRENCY_MOST):
            raise SendRequestError("--concurrency", f"{self.concurrency!r} is neither 'auto' nor a number from 1 to {CONCURRENCY_MOST}")
        if self.sse not in (None, *SSE_MODES):
            raise SendRequestError("--sse", f"{self.sse!r} is not {' or '.join(SSE_MODES)}")
        if self.sse_kms_key_id and self.sse != "aws:kms":
            raise SendRequestError("--sse-kms-key-id", "needs --sse aws:kms")

    @classmethod
    def of(cls, slide: Path, destination: str, **options: Any) -> Self:
        """A new send of `slide` (its path resolved, as the journal must find it again)."""
        return cls(slide=str(slide.resolve()), destination=destination, **options)

    def for_version(self, ref: SlideRef, claim: bytes | None) -> Self:
        return replace(self, case=ref.case, slide_id=ref.slide, version_id=ref.version, claim=claim.decode() if claim else None)

    @property
    def upload_concurrency(self) -> int | None:
        return None if self.concurrency == "auto" else int(self.concurrency)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """A request as the journal kept it; options a journal from before an option existed lacks take its default."""
        known = {field.name for field in fields(cls)}
        return cls(**{name: value for name, value in data.items() if name in known})
