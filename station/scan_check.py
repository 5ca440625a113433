"""The scan checked while it is sent: what a pathologist would reject, told to the technician within seconds.

`tiling.scan_qc.check_scan` runs in a thread beside the upload (a second reader of the slide file: the send's own
is busy), on the macro, a small overview and a dozen tiles, so the first view is not held up (measured: +0.1-0.3 s
to it, median of three sends of each sample on a loaded 2-core machine). Each failed check is told as soon as it is
known ("rescan advised: ...", through `say`: the send's `RichListener.say`, at once on a terminal, with the milestone
lines off one); then scan_qc.json and the macro with its label blanked (macro.jpg, a JPEG encoded here from the
pixels: no EXIF, no comment) go to the slide version's folder through the send's own uploader, so the centre sees
with the case what the technician was told. The label image never leaves. A failure here never stops the send: the
slide still arrives, only without its checks.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from caseformat.bounded import utc_now
from caseformat.layout import macro_key, scan_qc_key
from caseformat.results import ScanQc

if TYPE_CHECKING:
    from transfer import Sender

MACRO_QUALITY = 85
JOIN_WAIT = 60.0  # seconds the end of a send waits for the checks' uploads (they take seconds)


class ScanChecks:
    """The checks of one send's slide, in a thread; `join` waits for them and their uploads."""

    def __init__(self, slide: Path, keep_phi: bool, sender: Sender, say: Callable[[str], None],
                 advise: Callable[[str], None] | None = None) -> None:
        """`say`: every line (the advice, and why the checks could not be made or sent); `advise`: the advice
        again, at once (watch's log: the technician's screen)."""
        self._slide, self._keep_phi, self._sender, self._say, self._advise = slide, keep_phi, sender, say, advise
        self._thread = threading.Thread(target=self._run, name="scan-checks", daemon=True)
        self.result: ScanQc | None = None

    def start(self) -> ScanChecks:
        self._thread.start()
        return self

    def join(self, timeout: float = JOIN_WAIT) -> ScanQc | None:
        self._thread.join(timeout)
        return self.result

    def _run(self) -> None:
        from slides import open_slide
        from slides.errors import one_line
        from tiling.scan_qc import check_scan

        try:
            with open_slide(self._slide, keep_phi=self._keep_phi) as slide:
                report = check_scan(slide)
        except Exception as error:  # noqa: BLE001 - any failure costs the checks, never the send
            self._say(f"scan checks unavailable: {one_line(error)}")
            return
        for line in report.advice:
            self._say(line)
            if self._advise is not None:
                self._advise(line)
        ref = self._sender.dest.ref
        document = ScanQc(ref.case, ref.slide, ref.version, utc_now(), report.checks, macro=report.macro is not None)
        try:
            if report.macro is not None:
                self._put(macro_key(ref), macro_jpeg(report.macro.pixels), "image/jpeg")
            self._put(scan_qc_key(ref), document.to_json(), "application/json")
        except Exception as error:  # noqa: BLE001 - the send's own error, if any, is the one to report
            self._say(f"scan checks not sent: {one_line(error)}")
            return
        self.result = document

    def _put(self, key: str, data: bytes, content_type: str) -> None:
        self._sender.put_document(key, data, content_type)


def macro_jpeg(pixels: np.ndarray) -> bytes:
    """The de-identified macro as a JPEG made from its pixels alone, without COM or APPn segments but a bare JFIF."""
    from PIL import Image

    from slides.jpeg import strip_metadata

    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels[..., :3]), "RGB").save(out, "JPEG", quality=MACRO_QUALITY)
    return strip_metadata(out.getvalue())
