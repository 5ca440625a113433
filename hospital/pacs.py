"""The slides of a signed case into the hospital's own PACS (`watch --pacs URL`), filed under the patient.

When the first final report of a case reaches the station, the slide versions the pathologist read are queued here
(`hospital.outbox`: durable, once per case, an outage said once). A delivery exports each of them from the store as
a DICOM WSI series (`tiling.dicom`, JPEG tiles as stored) carrying the patient and the accession from the station's
registry, and stores it by STOW-RS (`transfer.stow`: only what the PACS lacks, each instance confirmed). The identity
is written here, at the hospital, into files that go only to the hospital's PACS; every export that may leave the
hospital names the case alone. An export is kept in the station's state folder until its series is in the PACS, so
a retry sends the same instances.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from caseformat.layout import version_number
from hospital.hl7 import Patient
from hospital.outbox import Outcome, Queue, Round, delivered, refused, retry, unreachable
from slides import SlidestreamError
from slides.errors import one_line

OUTBOX_FILE = "pacs-outbox.sqlite3"


class PacsOutboxError(SlidestreamError):
    """The PACS outbox cannot be used (its file, its disk)."""


class PacsUnreachable(SlidestreamError):
    """The PACS cannot be reached now (`Store` raises it): the case stays queued."""


class PacsRefused(SlidestreamError):
    """The PACS refused an instance or a request (`Store` raises it): the case is not sent again."""


@dataclass(frozen=True)
class CaseImages:
    """What one queued entry sends: the slide versions a report read, and the patient and order they are filed
    under."""

    case: str
    slides: tuple[tuple[str, str], ...]  # (slide, version)
    patient: Patient

    def to_json(self) -> str:
        return json.dumps({"case": self.case, "slides": [list(pair) for pair in self.slides], "identity": self.patient.to_identity()})

    @classmethod
    def from_json(cls, content: str) -> CaseImages:
        data = json.loads(content)
        return cls(data["case"], tuple((slide, version) for slide, version in data["slides"]), Patient.from_identity(data["identity"]))


Export = Callable[[CaseImages, str, str], Path]
"""(entry, slide, version) -> the folder of that slide version's identified DICOM series (made once, then reused)."""
Store = Callable[[Path], str]
"""A series folder -> what the PACS said ("12 instances, 12 sent"); raises `PacsUnreachable` while the PACS cannot be
reached, `PacsRefused` when it refuses."""


class Outbox(Queue):
    """The durable queue of cases whose slides go to the PACS (see `hospital.outbox`)."""

    def __init__(self, folder: Path) -> None:
        super().__init__(Path(folder) / OUTBOX_FILE, "PACS", "case(s)", PacsOutboxError)

    def enqueue(self, images: CaseImages) -> bool:
        """Queues the case's slides once; False where the case is queued or was sent already (an amendment reads the
        same slides)."""
        return self._add(images.case, images.case, images.to_json())

    def deliver(self, export: Export, store: Store, say: Callable[[str], None], now: float | None = None) -> Round:
        return self._deliver(lambda _case, content: _send(CaseImages.from_json(content), export, store), say, now)


def _send(images: CaseImages, export: Export, store: Store) -> Outcome:
    """Every slide version of the entry into the PACS; the exports (which name the patient) are removed once all are
    in, and kept until then so that a retry sends the same instances, not a second copy under new UIDs."""
    answers, folders = [], []
    for slide, version in images.slides:
        try:
            folders.append(folder := export(images, slide, version))
            answers.append(f"{slide}/{version}: {store(folder)}")
        except PacsUnreachable as error:
            return unreachable(f"PACS: {one_line(error)}")
        except PacsRefused as error:
            return refused(f"PACS {images.case} {slide}/{version}: {one_line(error)}")
        except (SlidestreamError, OSError) as error:  # the store, the export's disk: later
            return retry(f"PACS {images.case} {slide}/{version}: {one_line(error)}")
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    return delivered("; ".join(answers))


def slides_read(slides: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """Each slide once, at the newest version the report read."""
    newest: dict[str, str] = {}
    for slide, version in slides:
        if slide not in newest or version_number(version) > version_number(newest[slide]):
            newest[slide] = version
    return tuple(sorted(newest.items()))
