"""What makes two slide files the same bytes, without ever naming a case after them.

A case ID is random and given by the hospital's registry (station/registry.py); content only tells a resend
from a new scan. `sample_digest` is the cheap first look (size and the first and last MiB of each file: a 3 GB slide
costs two reads), and it is not enough on its own: two scans can share both ends and differ in the middle. Two files
are the same bytes only when their size and full SHA-256 (`content_sha256`) agree.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SAMPLE = 1 << 20  # bytes read from each end of a file for the sample digest
BLOCK = 8 << 20


def slide_files(slide: Path) -> list[Path]:
    """The files of a slide: the file itself, or a folder's (DICOM series) files in name order."""
    slide = Path(slide)
    return sorted(p for p in slide.rglob("*") if p.is_file()) if slide.is_dir() else [slide]


def sample_digest(slide: Path) -> str:
    """SHA-256 over each file's size and its first and last MiB: equal for the same bytes, and usually different
    for different scans (never trusted alone: see `content_sha256`)."""
    digest = hashlib.sha256()
    for path in slide_files(slide):
        with path.open("rb") as handle:
            size = path.stat().st_size
            digest.update(size.to_bytes(8, "little"))
            digest.update(handle.read(SAMPLE))
            if size > SAMPLE:
                handle.seek(max(SAMPLE, size - SAMPLE))
                digest.update(handle.read(SAMPLE))
    return digest.hexdigest()


def content_sha256(slide: Path) -> str:
    """SHA-256 over every file's size and every byte (a folder's files in name order)."""
    digest = hashlib.sha256()
    for path in slide_files(slide):
        with path.open("rb") as handle:
            digest.update(path.stat().st_size.to_bytes(8, "little"))
            while block := handle.read(BLOCK):
                digest.update(block)
    return digest.hexdigest()


def content_id(slide: Path) -> str:
    """A repeatable pseudonym of a slide file's content (16 hex digits of `content_sha256`), never its name: what
    `analyze` and `export-dicom` call a slide file's results when no case is given. It is not the case ID a send gives
    the slide (that one is random, see station/registry.py)."""
    return content_sha256(slide)[:16]
