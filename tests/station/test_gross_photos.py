"""Gross photographs and sampling guidance (issue #30): a camera JPEG in a specimen folder travels with the case as
its pixels only (no EXIF, maker notes, GPS or comment; turned upright), shows in the case view, and a mark the
pathologist draws on it ("sample here") reaches the station at once, as reports do. The browser test runs Chromium
against a running `watch` and the real S3 server."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import S3Server
from PIL import Image
from support.viewer import ACCESSION, CENTRE_KEY, TRUSTED, Bucket, added, hospital, line_of, serving, sign_in, wait_on

from caseformat.documents import Author, GrossMark
from caseformat.errors import DocumentError
from caseformat.layout import gross_mark_key, gross_photo_key
from station.gross import GrossPhotos, PhotoError, photo_token, reencoded
from station.registry import Registry, storable
from station.station import SpecimenInfo, Station, Store

RED, BLUE = (220, 30, 30), (30, 30, 220)


def camera_jpeg(path: Path, width: int = 400, height: int = 300) -> None:
    """A photo as a phone or camera writes it: stored sideways with orientation 6 (turn 90° clockwise to view), the
    time it was taken, where (GPS), a maker note and a comment naming the accession. Its left half is red."""
    picture = Image.new("RGB", (width, height), BLUE)
    picture.paste(RED, (0, 0, width // 2, height))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation
    exif.get_ifd(0x8769).update({0x9003: "2026:12:06 03:00:00", 0x927C: b"MAKER-SECRET serial 123456"})
    exif.get_ifd(0x8825).update({1: "N", 2: (51.0, 30.0, 12.0), 3: "W", 4: (0.0, 7.0, 39.0)})
    picture.save(path, "JPEG", exif=exif.tobytes(), comment=f"{ACCESSION} theatre 3".encode(), quality=95)


def segments(jpeg: bytes) -> list[int]:
    """The markers of a JPEG's segments before its image data (APPn, COM, DQT, SOF...)."""
    assert jpeg[:2] == b"\xff\xd8"
    markers, at = [], 2
    while jpeg[at + 1] != 0xDA:  # start of scan: the pixels follow
        markers.append(jpeg[at + 1])
        at += 2 + int.from_bytes(jpeg[at + 2:at + 4], "big")
    return markers


def test_a_camera_photo_is_sent_as_its_upright_pixels_with_nothing_of_the_camera_file(tmp_path: Path) -> None:
    camera_jpeg(tmp_path / "photo.jpg")
    original = (tmp_path / "photo.jpg").read_bytes()
    assert b"MAKER-SECRET" in original and ACCESSION.encode() in original and b"Exif" in original

    sent = reencoded(tmp_path / "photo.jpg")
    assert [marker for marker in segments(sent) if 0xE0 <= marker <= 0xEF or marker == 0xFE] == [0xE0]  # JFIF alone
    assert b"Exif" not in sent and b"MAKER-SECRET" not in sent and ACCESSION.encode() not in sent and b"2026:12:06" not in sent
    with Image.open(io.BytesIO(sent)) as picture:
        assert picture.size == (300, 400)  # upright: orientation 6 turned it a quarter clockwise
        assert not picture.getexif() and "icc_profile" not in picture.info and "comment" not in picture.info
        pixels = np.asarray(picture)
    top, bottom = pixels[50, 150], pixels[350, 150]
    assert top[0] > 180 > top[2] and bottom[2] > 180 > bottom[0]  # the stored left half (red) is the top now


def test_a_large_photo_is_bounded_and_a_file_that_is_no_jpeg_is_refused_in_one_line(tmp_path: Path) -> None:
    Image.new("RGB", (6000, 1500), RED).save(tmp_path / "wide.jpg", "JPEG")
    with Image.open(io.BytesIO(reencoded(tmp_path / "wide.jpg"))) as picture:
        assert picture.size == (4096, 1024)
    (tmp_path / "label.jpg").write_bytes(b"not a photo")
    with pytest.raises(PhotoError, match="label.jpg: cannot read it as a JPEG photograph"):
        reencoded(tmp_path / "label.jpg")


def test_a_mark_is_read_only_as_the_centre_signed_it_and_only_inside_the_photo() -> None:
    mark = GrossMark("theatre-3.a1", 1, "0123456789abcdef", "point", ((10.0, 20.0),), "sample here",
                     Author("u0123abcd", "Dr P. Kovacs", "pathologist"), "2026-12-06T03:00:00.000Z", "theatre-3")  # fmt: skip
    assert GrossMark.read(mark.to_json(CENTRE_KEY), "mark", TRUSTED) == mark
    document = json.loads(mark.to_json(CENTRE_KEY))
    with pytest.raises(DocumentError):
        GrossMark.read(json.dumps({**document, "text": "sample elsewhere"}).encode(), "mark", TRUSTED)  # changed after signing
    for points in ([[10, 20], [30, 40]], [[-1, 20]], [[10, 5000]]):
        outside = GrossMark("theatre-3.a1", 1, "0123456789abcdef", "point", ((10.0, 20.0),), "", mark.author, mark.created_at)
        signed = CENTRE_KEY.sign({**json.loads(outside.to_json(CENTRE_KEY)), "points": points})
        with pytest.raises(DocumentError):
            GrossMark.read(json.dumps(signed).encode(), "mark", TRUSTED)


def test_a_photo_is_sent_once_its_specimen_is_registered_and_never_again_after_a_restart(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = Bucket(s3_server, prefix="centre")
    specimen = tmp_path / "hot" / "frozen-20"
    specimen.mkdir(parents=True)
    camera_jpeg(specimen / "IMG_0001.jpg")
    store = Store.parse(f"s3://{bucket.name}/{bucket.prefix}", bucket.endpoint_url)
    said: list[str] = []

    def info(folder: Path) -> SpecimenInfo:
        return SpecimenInfo(folder.name, f"folder:{folder.resolve()}")

    def stored(case: str) -> list[str]:
        listed = bucket.client.list_objects_v2(Bucket=bucket.name, Prefix=f"{bucket.prefix}/stations/")
        return [item["Key"] for item in listed.get("Contents", []) if "/gross/" in item["Key"]]

    with Registry(tmp_path / "state") as registry:
        station = Station(store, registry, "theatre-3")
        photos = GrossPhotos()
        for _ in range(2):
            photos.send([specimen], lambda: station, info, said.append)
        assert said == []  # no case yet: the photo waits for its specimen's registration
        case = station.register(info(specimen)).case
        photos.send([specimen], lambda: station, info, said.append)
        token = photo_token(case, storable(str((specimen / "IMG_0001.jpg").resolve())))
        assert said == [f"PHOTO frozen-20/IMG_0001.jpg: case {case}'s gross photograph {token}, its pixels only"]
        assert stored(case) == [f"{bucket.prefix}/{gross_photo_key(case, token)}"]
        photos.send([specimen], lambda: station, info, said.append)

        restarted = GrossPhotos()  # a new run: the store has the photo, so it is not sent again, and its name is known
        for _ in range(2):
            restarted.send([specimen], lambda: station, info, said.append)
        assert len(said) == 1 and restarted.names == {(case, token): "frozen-20/IMG_0001.jpg"}


def test_a_mark_whose_notice_was_lost_reaches_the_station_from_the_case_itself(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = Bucket(s3_server, prefix="centre")
    store = Store.parse(f"s3://{bucket.name}/{bucket.prefix}", bucket.endpoint_url)
    said: list[str] = []
    with Registry(tmp_path / "state") as registry:
        station = Station(store, registry, "theatre-3")
        case = station.register(SpecimenInfo("frozen-21", f"folder:{tmp_path / 'frozen-21'}")).case
        mark = GrossMark(case, 1, "0123456789abcdef", "point", ((10.0, 20.0),), "sample here",
                         Author("u0123abcd", "Dr P. Kovacs", "pathologist"), "2026-12-06T03:00:00.000Z", "theatre-3")  # fmt: skip
        bucket.put(gross_mark_key(case, 1), mark.to_json(CENTRE_KEY))  # the centre's copy only: its notice never came
        photos = GrossPhotos()
        for _ in range(2):  # a second round delivers nothing again
            station.reconcile(TRUSTED, tmp_path / "outbox", said.append, marks=lambda found: photos.deliver(station, tmp_path / "outbox", found, said.append))
    assert [line for line in said if line.startswith("MARK")] == [
        f"MARK 1 case frozen-21 ({case}) photo 0123456789abcdef: sample here (point at 10, 20) — by Dr P. Kovacs at 2026-12-06T03:00:00.000Z"]
    assert len(list((tmp_path / "outbox").glob("*_mark_0001.txt"))) == 1


@pytest.mark.slow  # Chromium and a running watch
def test_gross_photos_show_in_the_case_view_and_a_mark_drawn_there_reaches_the_station_at_once(browser, s3_server: S3Server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    bucket = Bucket(s3_server, prefix="centre")
    with hospital(bucket, tmp_path) as (log, outbox), serving(bucket.storage()) as served:
        case = line_of(log, r"REGISTERED frozen-17: case (\S+),").group(1)
        # the technician drops the camera's photo into the specimen folder, named after the accession
        camera_jpeg(tmp_path / "hot" / "frozen-17" / f"{ACCESSION}_gross.jpg")
        token = line_of(log, rf"PHOTO frozen-17/{ACCESSION}_gross.jpg: case {case}'s gross photograph ([0-9a-f]{{16}})").group(1)
        stored = bucket.get(gross_photo_key(case, token))
        assert b"Exif" not in stored and b"MAKER-SECRET" not in stored and ACCESSION.encode() not in stored
        assert ACCESSION not in token

        _, user = added(bucket, "Dr Ana Ruiz")
        page = browser.new_context(viewport={"width": 1300, "height": 850}).new_page()
        sign_in(page, served, user)
        page.goto(f"{served.url}/view/{case}")
        photo = page.locator("#gross-photos figure img")
        wait_on(page, lambda: photo.count() == 1 and photo.evaluate("image => image.naturalWidth") == 300, "the gross photo, upright")
        assert page.locator("#gross-title").is_visible()

        # "sample here": a point on the red (upper) half of the photo
        page.locator("#gross-note").fill("sample here")
        page.locator("#gross-point").click()
        overlay = page.locator("#gross-photos figure svg")
        overlay.scroll_into_view_if_needed()
        box = overlay.bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.25)
        wait_on(page, lambda: page.locator("#gross-photos svg circle").count() == 1, "the mark drawn over the photo")
        drawn = time.monotonic()
        assert page.locator("#gross-photos .gross-marks li").text_content() == "sample here (point) · Dr Ana Ruiz"

        # the station prints it within its notice poll (1 s while the case awaits its report) and writes its outbox
        printed = line_of(log, rf"MARK 1 case frozen-17 \({case}\) photo frozen-17/{ACCESSION}_gross.jpg: sample here "
                               r"\(point at (\d+), (\d+)\) — by Dr Ana Ruiz", timeout=30)  # fmt: skip
        assert time.monotonic() - drawn < 10
        assert abs(int(printed.group(1)) - 150) <= 3 and abs(int(printed.group(2)) - 100) <= 3
        (written,) = outbox.glob(f"*_{case}_mark_0001.txt")
        assert written.read_text().startswith(printed.group(0))
        page.context.close()
