"""Gross photographs of a specimen, and the pathologist's marks on them (issue #30).

A JPEG in a specimen folder of the hot folder is a photograph of the specimen as it came from theatre, not a slide.
Once its specimen is registered it travels with the case as `stations/{station}/{case}/gross/{token}.jpg`: its pixels
only, decoded, turned upright as the camera's orientation says and encoded afresh, so nothing of the camera's file
goes (EXIF with GPS and times, maker notes, ICC, comments: a camera writes more than anyone reads). The token is a
digest of the case and the file's path, never the file name (a name can hold an accession number); faces and
labels in the picture are the hospital's to keep out of the frame. Sent once: a photo the store has is not sent
again by a restarted watch.

The pathologist marks a photo at the centre (a point "sample here", a line along a margin); each mark is signed
(`caseformat.documents.GrossMark`) and copied to the station's notices, so the station prints it and writes it to
the outbox within its notice poll, once per case and number (the registry's ledger, kind "mark"), as it does reports.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageOps

from caseformat.documents import GROSS_PHOTO_SIDE, GrossMark
from caseformat.errors import DocumentError
from caseformat.layout import NoticeName, gross_photo_key, station_of
from caseformat.signing import TrustedKeys
from slides import SlidestreamError
from slides.errors import printable

if TYPE_CHECKING:
    from station.station import Station

PHOTO_SUFFIXES = {".jpg", ".jpeg"}
PIXEL_LIMIT = 120_000_000  # a camera's largest frame is ~100 MP; anything larger is no photo to decode
MARK = "mark"


class PhotoError(SlidestreamError, ValueError):
    """A file with a photo's name that is no JPEG photograph (or one too large to decode)."""


def photo_token(case: str, path: str) -> str:
    """16 hex digits naming a photo on the store: a digest of its case and path at the hospital, never its name."""
    return hashlib.sha256(f"{case}\0gross\0{path}".encode("utf-8", "surrogateescape")).hexdigest()[:16]


def reencoded(path: Path) -> bytes:
    """The photo's pixels, upright, at most GROSS_PHOTO_SIDE px a side, as a new JPEG (JFIF and nothing else)."""
    try:
        with Image.open(path) as picture:
            if picture.format != "JPEG" or picture.width * picture.height > PIXEL_LIMIT:
                raise PhotoError(f"{path.name}: not a JPEG photograph of at most {PIXEL_LIMIT // 1_000_000} megapixels")
            upright = ImageOps.exif_transpose(picture).convert("RGB")
            upright.thumbnail((GROSS_PHOTO_SIDE, GROSS_PHOTO_SIDE))
    except PhotoError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever a camera's file holds (odd EXIF too) costs that photo only
        raise PhotoError(f"{path.name}: cannot read it as a JPEG photograph ({type(error).__name__}: {error})") from None
    fresh = Image.frombytes("RGB", upright.size, upright.tobytes())  # a new image: none of the file's info comes along
    out = io.BytesIO()
    fresh.save(out, "JPEG", quality=90)
    return out.getvalue()


def _signature(path: Path) -> tuple[int, float]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime


class GrossPhotos:
    """The hot folder's photos: which were sent (or refused) by this run, which are still being written, and the
    local name of each photo's token, so a mark on it names the file the technician took."""

    def __init__(self) -> None:
        self._seen: dict[Path, tuple[int, float]] = {}  # photo -> its size and mtime at the last look
        self._done: dict[Path, tuple[int, float]] = {}  # photo -> the size and mtime it was sent (or refused) with
        self.names: dict[tuple[str, str], str] = {}  # (case, token) -> "specimen/photo.jpg"

    def send(self, folders: list[Path], station_of: Callable[[], Station], info_of: Callable[[Path], Any], say: Callable[[str], None]) -> None:
        """Each photo of the specimen folders among `folders` whose specimen is registered, unchanged since the last look and held
        open by no writer, sent once (`info_of`: a folder's `SpecimenInfo`). The station (its registry) is opened
        only when a photo waits (`station_of`), so a folder without photos costs no registry. The store failing
        raises: tried again."""
        from station.hotfolder import open_for_writing, specimen_folder
        from station.registry import storable

        for folder in folders:
            try:
                if not specimen_folder(folder):
                    continue
                photos = [p for p in sorted(folder.iterdir()) if p.suffix.lower() in PHOTO_SUFFIXES and not p.name.startswith(".") and p.is_file()]
                pending = [(photo, _signature(photo)) for photo in photos]
            except OSError:  # gone or unreadable while we looked: the next look decides
                continue
            pending = [(photo, signature) for photo, signature in pending if self._done.get(photo) != signature]
            if not pending:
                continue
            station = station_of()
            try:
                specimen = station.registry.specimen(station.key, source=info_of(folder).source)
            except SlidestreamError:  # a sidecar refused: its photos wait with its slides
                continue
            for photo, signature in pending:
                if specimen is None or self._seen.get(photo) != signature or open_for_writing({photo}):
                    self._seen[photo] = signature
                    continue
                name = f"{folder.name}/{photo.name}"
                token = photo_token(specimen.case, storable(str(photo.resolve())))
                self.names[(specimen.case, token)] = name
                try:
                    if self._upload(station, specimen.case, token, photo):
                        say(f"PHOTO {name}: case {specimen.case}'s gross photograph {token}, its pixels only")
                except PhotoError as error:
                    say(f"PHOTO {name}: not sent: {error}")
                self._done[photo] = signature
                self._seen.pop(photo, None)

    def _upload(self, station: Station, case: str, token: str, photo: Path) -> bool:
        """The photo's re-encoded pixels at its key, unless the store has them (a restart): True when sent now."""
        key = station.store.key(gross_photo_key(case, token))
        if station.holds(key):
            return False
        station.put(key, reencoded(photo), "image/jpeg")
        return True

    def deliver(self, station: Station, outbox: Path, mark: GrossMark, say: Callable[[str], None]) -> None:
        """`mark` to the operating room once per (case, number): printed and written to the outbox as text, then
        recorded in the registry's ledger. A registry or outbox that cannot be used raises: tried again."""
        from station.station import create_whole, outbox_path

        if station.registry.delivered(station.key, mark.case, MARK, mark.number) is not None:
            return
        specimen = station.registry.specimen(station.key, case=mark.case)
        local = specimen.name if specimen is not None else mark.case
        line = mark_line(mark, local, self.names.get((mark.case, mark.photo), mark.photo))
        text = f"{line}\n\nSpecimen: {printable(local)}   Case: {mark.case}\n".encode()
        outbox.mkdir(parents=True, exist_ok=True)
        file = outbox_path(outbox, local, mark.case, MARK, mark.number)
        if create_whole(file, text):
            say(line)
            say(f"OUTBOX {file}")
        station.registry.set_delivered(station.key, mark.case, MARK, mark.number, hashlib.sha256(text).hexdigest(), False)


def is_mark(key: str) -> bool:
    """Whether a `_notices/` key names a gross mark's copy."""
    name = NoticeName.parse(key)
    return name is not None and name.kind == MARK


def read_mark(station: Station, key: str, data: bytes | None, trusted: TrustedKeys) -> GrossMark:
    """The gross mark at the notice `key` if the centre signed it, for this station, as its key names it;
    `DocumentError` naming the key and why otherwise."""
    name = NoticeName.parse(key)
    if name is None or data is None:
        raise DocumentError(f"{key}: gone before it could be read")
    mark = GrossMark.read(data, key, trusted)
    if (mark.case, mark.number) != (name.case, name.number):
        raise DocumentError(f"{key}: holds mark {mark.number} of case {mark.case}, not what its name says")
    if mark.station != station.name or station_of(mark.case) != station.name:
        raise DocumentError(f"{key}: is for station {mark.station or '(none)'}, not {station.name}")
    return mark


def mark_line(mark: GrossMark, specimen: str, photo: str) -> str:
    """MARK case frozen-17 (theatre-3.x) photo frozen-17/IMG_0001.jpg: sample here (point at 120, 340) — by Dr ..."""
    where = " to ".join(f"{x:.0f}, {y:.0f}" for x, y in mark.points)
    shape = f"point at {where}" if mark.kind == "point" else f"line from {where}"
    return printable(f"MARK {mark.number} case {specimen} ({mark.case}) photo {photo}: {mark.text or '(no text)'} ({shape}) — "
                     f"by {mark.author.name} at {mark.created_at}")  # fmt: skip
