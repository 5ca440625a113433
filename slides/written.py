"""Whether a scanner has finished writing a slide file, told by the file's own structure.

A TIFF-family slide (SVS, generic and Philips TIFF, OME-TIFF, NDPI, SCN, BIF) records where each of its image
directories and tiles lies: a file still being written, or cut short, points past its own end or has a directory
chain that does not end yet. That proves a slide complete the moment its last byte lands, where waiting for its size
to stop changing costs seconds of a frozen section's 30 minutes.
"""

from __future__ import annotations

import logging
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile

TIFF_SUFFIXES = frozenset({".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif"})


def fully_written(path: Path) -> bool | None:
    """True when the directory chain ends inside the file and every tile and tag value it lists lies inside the file;
    False when not (still being written, or truncated); None where the structure cannot tell: formats of several
    files (MRXS, DICOM series, VMS)."""
    try:
        if path.suffix.lower() not in TIFF_SUFFIXES or not stat.S_ISREG(path.stat().st_mode):
            return None
    except OSError:  # vanished, a link loop, unreadable: nothing to tell (the reader reports it)
        return None
    try:
        with tifffile_complaints() as complaints, tifffile.TiffFile(path) as tiff:
            complete = tiff_structure_whole(tiff)
    except Exception:  # noqa: BLE001 - a half-written (or vanished, or hostile) file can fail in any way: not complete
        return False
    return complete and not complaints


def tiff_structure_whole(tiff: tifffile.TiffFile) -> bool:
    """Whether the directory chain ends inside the file and every tile and tag value it lists lies inside it."""
    return _chain_ends(tiff) and _data_inside(tiff)


def _data_inside(tiff: tifffile.TiffFile) -> bool:
    size = tiff.filehandle.size
    pages = [*tiff.pages, *(page for series in tiff.series for level in series.levels for page in level.pages)]
    for page in pages:
        if page is None:
            return False
        ends = np.asarray(page.dataoffsets, dtype=np.uint64) + np.asarray(page.databytecounts, dtype=np.uint64)
        if ends.size and int(ends.max()) > size:
            return False
        if any(tag.valueoffset + tag.valuebytecount > size for tag in getattr(page, "tags", {}).values()):
            return False
    return True


def _chain_ends(tiff: tifffile.TiffFile) -> bool:
    """Whether the last directory's next-directory offset is zero: tifffile stops quietly at an offset past the end,
    so a chain cut short would otherwise look like a file with fewer pages."""
    position = tiff.pages.next_page_offset
    if position is None:
        return False
    fh = tiff.filehandle
    fh.seek(position)
    raw = fh.read(tiff.tiff.offsetsize)
    return len(raw) == tiff.tiff.offsetsize and struct.unpack(tiff.tiff.offsetformat, raw)[0] == 0


@contextmanager
def tifffile_complaints() -> Iterator[list[logging.LogRecord]]:
    """What tifffile logs while parsing: it skips a tag whose value lies past the end with an error message rather
    than an exception. Collected here instead of printed (a file half written is expected, not an error; a slide
    that is opened with complaints is damaged, see `open_slide`)."""
    logger = logging.getLogger("tifffile")
    complaints: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = complaints.append  # type: ignore[method-assign]
    propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield complaints
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
