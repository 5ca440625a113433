"""The scan checked at the hospital, and the macro image de-identified (issue #30).

A generated Aperio slide: a glass with a printed label (text blocks and a barcode) at one end, three pieces of real
tissue (CMU-1's pixels), two in the scanned area and one beyond it, and the scanner's green outline of the scanned
area on the macro. The macro must leave with the label's pixels gone, and the station must report the missed tissue.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from conftest import S3Server, sample
from PIL import Image
from scipy import ndimage
from support import send_args, server_objects, slidestream
from support.viewer import pyramid, serving, write_local

from caseformat.layout import SlideRef, image_key, macro_key, scan_qc_key
from caseformat.results import ScanCheck, ScanQc
from slides import open_slide
from slides.macro import BLANK, blank_label, deidentified_macro
from tiling.scan_qc import FOCUS, PEN, TISSUE_MISSED, check_scan, focus_check, pen_check
from viewer import LocalStorage

APERIO = "Aperio Image Library v12.0.16 "
SCALE = 8  # level-0 px per macro px
MACRO_W, MACRO_H = 1200, 400
LABEL_W = 300  # the label's end of the macro
SCANNED = (420, 60, 900, 340)  # the scan area on the macro: x0, y0, x1, y1
INSIDE = ((560, 180, 110, 70), (760, 210, 70, 90))  # tissue ellipses (centre x, y, radius x, y) on the macro
OUTSIDE = ((1060, 200, 70, 90),)  # the piece the scanner's tissue finder missed


def _cmu() -> np.ndarray:
    with openslide.OpenSlide(sample("CMU-1-Small-Region.svs")) as source:
        return np.asarray(source.read_region((0, 0), 0, source.dimensions).convert("RGB"))


def _ellipses(shape: tuple[int, int], pieces: tuple[tuple[int, int, int, int], ...], scale: float, origin: tuple[int, int]) -> np.ndarray:
    """Where the tissue pieces (in macro px) lie on an image of `shape` whose pixel is 1/`scale` of a macro px and
    whose (0, 0) is macro px `origin`."""
    y, x = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    x, y = origin[0] + x / scale, origin[1] + y / scale
    inside = np.zeros(shape, bool)
    for cx, cy, rx, ry in pieces:
        inside |= ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1
    return inside


def make_label() -> np.ndarray:
    """A printed label: white paper, black text lines and a barcode (what must never leave)."""
    rng = np.random.default_rng(7)
    label = np.full((MACRO_H, LABEL_W, 3), 250, np.uint8)
    for row in range(30, 200, 34):  # text: runs of letter-sized blocks
        for col in range(20, 270, 14):
            if rng.random() < 0.8:
                label[row : row + 20, col : col + 9] = 10
    x = 30
    while x < 270:  # a barcode: bars of random widths
        width = int(rng.integers(2, 7))
        if rng.random() < 0.55:
            label[240:370, x : x + width] = 0
        x += width
    return label


def make_slide(path: Path, outline: bool = True) -> Path:
    """An Aperio SVS as described in the module docstring (0.5 um/px; a label image, a macro, a thumbnail)."""
    tissue = _cmu()
    x0, y0, x1, y1 = SCANNED
    width, height = (x1 - x0) * SCALE, (y1 - y0) * SCALE
    ys, xs = np.mgrid[:height, :width]
    level0 = np.full((height, width, 3), 242, np.uint8)
    where = _ellipses((height, width), INSIDE, SCALE, (x0, y0))
    level0[where] = tissue[ys[where] % tissue.shape[0], xs[where] % tissue.shape[1]]
    macro = np.full((MACRO_H, MACRO_W, 3), 236, np.uint8)
    macro[y0:y1, x0:x1] = np.asarray(Image.fromarray(level0).reduce(SCALE))
    small = tissue[::SCALE, ::SCALE]
    beyond = _ellipses((MACRO_H, MACRO_W), OUTSIDE, 1, (0, 0))
    my, mx = np.nonzero(beyond)
    macro[my, mx] = small[my % small.shape[0], mx % small.shape[1]]
    label = make_label()
    macro[:, :LABEL_W] = label
    if outline:  # Aperio draws the scanned area in green
        macro[y0 - 1, x0 - 1 : x1 + 1] = macro[y1, x0 - 1 : x1 + 1] = (0, 255, 0)
        macro[y0 - 1 : y1 + 1, x0 - 1] = macro[y0 - 1 : y1 + 1, x1] = (0, 255, 0)
    thumbnail = np.asarray(Image.fromarray(level0).reduce(SCALE * 2))
    fields = f"AppMag = 20|MPP = 0.5|OriginalWidth = {width}|OriginalHeight = {height}"
    with tifffile.TiffWriter(path) as tif:
        tif.write(level0, tile=(256, 256), compression="zlib", photometric="rgb", subfiletype=0, metadata=None,
                  description=f"{APERIO}\r\n{width}x{height} [0,0 {width}x{height}] (256x256) RAW|{fields}")
        tif.write(thumbnail, photometric="rgb", metadata=None, description=f"{APERIO}\r\n{width}x{height} -> {thumbnail.shape[1]}x{thumbnail.shape[0]} - |{fields}")
        tif.write(label, photometric="rgb", subfiletype=1, metadata=None, description=f"{APERIO}\r\nlabel {LABEL_W}x{MACRO_H}")
        tif.write(macro, photometric="rgb", subfiletype=9, metadata=None, description=f"{APERIO}\r\nmacro {MACRO_W}x{MACRO_H}")
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_slide(tmp_path_factory.mktemp("scanner") / "ACC-2024-0042_DOE_JANE.svs")


def label_absent(macro: np.ndarray, tolerance: float = 0) -> None:
    """The label's own pixels are gone: its end of the macro is one uniform grey (within JPEG's `tolerance`), and
    nothing of the macro correlates with the label's pattern (its barcode and text)."""
    end = macro[:, :LABEL_W].astype(np.float32)
    assert np.abs(end - BLANK).max() <= tolerance
    label = make_label().astype(np.float32).mean(axis=2)
    grey = macro.astype(np.float32).mean(axis=2)
    for left in range(0, MACRO_W - LABEL_W + 1, 50):  # wherever it might have been put
        window = grey[:, left : left + LABEL_W]
        if window.std() > 0:
            assert abs(np.corrcoef(window.ravel(), label.ravel())[0, 1]) < 0.2, left


def test_the_generated_slide_carries_its_label_on_the_macro_as_a_scanner_writes_it(generated: Path) -> None:
    with openslide.OpenSlide(generated) as osr:
        assert {"label", "macro", "thumbnail"} <= set(osr.associated_images)
        macro = np.asarray(osr.associated_images["macro"].convert("RGB"))
    assert np.array_equal(macro[:, :LABEL_W], make_label())  # the control: the label is there to be found


def test_the_macro_leaves_with_the_label_blanked_and_shows_where_the_scanner_scanned(generated: Path) -> None:
    with open_slide(generated) as slide:
        macro = deidentified_macro(slide)
    assert macro is not None
    label_absent(macro.pixels)
    x0, y0, x1, y1 = SCANNED
    area = macro.scan_area
    assert area is not None and abs(area.x0 - x0) <= 2 and abs(area.y0 - y0) <= 2 and abs(area.x1 - x1) <= 2 and abs(area.y1 - y1) <= 2
    assert all(box.x1 < x0 for box in macro.blanked)  # the glass beside the label shows: the missed tissue too
    assert macro.pixels[200, 1060].tolist() != [BLANK] * 3


def test_where_neither_end_is_clearly_the_labels_both_ends_are_blanked() -> None:
    label = make_label()
    macro = np.full((MACRO_H, MACRO_W, 3), 236, np.uint8)
    macro[:, :LABEL_W], macro[:, -LABEL_W:] = label, label[:, ::-1]
    blanked, boxes = blank_label(macro)
    assert len(boxes) == 2 and (blanked[:, :LABEL_W] == BLANK).all() and (blanked[:, -LABEL_W:] == BLANK).all()


def test_the_station_reports_the_tissue_the_scanner_missed(generated: Path) -> None:
    with open_slide(generated) as slide:
        report = check_scan(slide)
    missed = next(check for check in report.checks if check.name == TISSUE_MISSED)
    assert missed.passed is False and missed.line.startswith("rescan advised: tissue outside the scanned area")
    # one of three pieces, by area: (70*90) / (110*70 + 70*90 + 70*90) of the tissue on the glass is ~31%
    assert missed.measure is not None and 0.2 < missed.measure < 0.45, missed
    assert missed.line in report.advice


def test_without_the_scanners_outline_the_thumbnail_finds_the_scan_area(tmp_path: Path) -> None:
    with open_slide(make_slide(tmp_path / "plain.svs", outline=False)) as slide:
        macro = deidentified_macro(slide)
        report = check_scan(slide)
    assert macro is not None and macro.scan_area is not None
    x0, y0, x1, y1 = SCANNED
    found = macro.scan_area  # within the scale steps of the search (~5% of the area's size)
    assert abs(found.x0 - x0) <= 24 and abs(found.y0 - y0) <= 24 and abs(found.x1 - x1) <= 24 and abs(found.y1 - y1) <= 24
    assert next(check for check in report.checks if check.name == TISSUE_MISSED).passed is False


def test_a_scan_with_all_its_tissue_in_the_scanned_area_passes() -> None:
    """CMU-1's macro: four pieces, all in the green outline (a noisy sensor row above the glass is no tissue)."""
    with open_slide(sample("CMU-1-Small-Region.svs")) as slide:
        report = check_scan(slide)
    assert next(check for check in report.checks if check.name == TISSUE_MISSED).passed is True


def _tiles(count: int, blur: float = 0) -> np.ndarray:
    tissue = _cmu()
    grid = [tissue[y : y + 256, x : x + 256] for y in range(0, tissue.shape[0] - 255, 256) for x in range(0, tissue.shape[1] - 255, 256)]
    tiles = np.stack(sorted(grid, key=lambda tile: float(tile.mean()))[:count])  # the most tissue
    return np.stack([ndimage.gaussian_filter(tile, (blur, blur, 0)) for tile in tiles]) if blur else tiles


def test_focus_tells_a_sharp_scan_from_a_blurred_one() -> None:
    sharp, blurred = focus_check(_tiles(6)), focus_check(_tiles(6, blur=4))  # 4 px at 0.5 um/px: a 2 um defocus
    assert sharp.name == FOCUS and sharp.passed is True, sharp
    assert blurred.passed is False and blurred.line.startswith("rescan advised: out of focus"), blurred


def test_pen_marks_are_found_and_stains_are_not_taken_for_ink() -> None:
    with open_slide(sample("CMU-1-Small-Region.svs")) as slide:
        overview = slide.associated_image("thumbnail").copy()
    assert pen_check(overview).passed is True
    overview[100:112, 60:400] = (30, 60, 200)  # a blue marker line
    overview[300:310, 100:300] = (40, 160, 60)  # and a green one
    inked = pen_check(overview)
    assert inked.name == PEN and inked.passed is False and inked.line.startswith("rescan advised: pen marks"), inked
    with open_slide(sample("wsi2dcm-jpeg.dcm")) as slide:  # a blue (Giemsa-like) stain with black pigment: no ink
        report = check_scan(slide)
    assert next(check for check in report.checks if check.name == PEN).passed is True


def test_the_scan_qc_document_reads_back_and_keys_lie_in_the_stations_slide_version() -> None:
    ref = SlideRef("h1.case", "s1", "v2")
    assert scan_qc_key(ref) == "stations/h1/h1.case/slides/s1/v2/scan_qc.json"
    assert macro_key(ref) == "stations/h1/h1.case/slides/s1/v2/macro.jpg"
    with open_slide(sample("CMU-1-Small-Region.svs")) as slide:
        report = check_scan(slide)
    document = ScanQc("h1.case", "s1", "v2", "2026-12-06T02:00:00.000Z", report.checks, macro=True)
    assert ScanQc.read(document.to_json()) == document


def _markers(jpeg: bytes) -> list[int]:
    """The JPEG's segment markers up to its first scan."""
    markers, at = [], 2
    while jpeg[at] == 0xFF and jpeg[at + 1] != 0xDA:
        markers.append(jpeg[at + 1])
        at += 2 + int.from_bytes(jpeg[at + 2 : at + 4], "big")
    return markers


def _jpeg(pixels: np.ndarray, comment: bytes = b"") -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90, comment=comment)
    return out.getvalue()


def test_the_case_carries_each_slides_scan_checks_and_serves_its_macro_and_nothing_else(tmp_path: Path) -> None:
    _, pieces = pyramid()
    store = tmp_path / "store"
    good, hostile, oversized = SlideRef("h1.qc", "s1"), SlideRef("h1.qc", "s2"), SlideRef("h1.qc", "s3")
    for ref in (good, hostile, oversized):
        for piece in pieces:
            write_local(store, ref.key(image_key(piece.key)), piece.data)
    missed = "rescan advised: tissue outside the scanned area (about 31% of the tissue on the glass)"
    checks = (ScanCheck(TISSUE_MISSED, False, missed, 0.31), ScanCheck(FOCUS, True, "in focus over the tissue (12 of 12 tiles sharp)", 0.0))
    write_local(store, scan_qc_key(good), ScanQc(good.case, good.slide, good.version, "2026-12-06T02:00:00.000Z", checks, macro=True).to_json())
    write_local(store, macro_key(good), _jpeg(np.full((100, 300, 3), 200, np.uint8), comment=b"DOE^JANE"))
    write_local(store, scan_qc_key(hostile), b'{"format": "slidestream-scan-qc/1", "case": 5}')
    write_local(store, macro_key(hostile), b"\xff\xd8 not a picture")
    write_local(store, scan_qc_key(oversized), b'{"format": "slidestream-scan-qc/1", "x": "' + b"a" * 70_000 + b'"}')
    write_local(store, macro_key(oversized), _jpeg(np.zeros((10, 5000, 3), np.uint8)))
    with serving(LocalStorage(store)) as served:
        token = served.token("h1.qc")
        slides = {entry["slide"]: entry for entry in served.get("/api/cases/h1.qc", token).json()["slides"]}
        assert slides["s1"]["scan_qc"]["advice"] == [missed] and len(slides["s1"]["scan_qc"]["lines"]) == 2
        assert slides["s1"]["scan_qc"]["macro"] is True
        for bad in ("s2", "s3"):  # one line each, the rest of the case as it is
            line = slides[bad]["scan_qc"]["unreadable"]
            assert line.startswith("unreadable: ") and "\n" not in line and slides[bad]["state"] != "unreadable"
        response = served.get("/api/cases/h1.qc/slides/s1/v1/macro", token)
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(response.content)).size == (300, 100) and b"DOE^JANE" not in response.content
        assert served.get("/api/cases/h1.qc/slides/s2/v1/macro", token).status_code == 502
        assert served.get("/api/cases/h1.qc/slides/s3/v1/macro", token).status_code == 502
        assert served.get("/api/cases/h1.qc/slides/s4/v1/macro", token).status_code == 404
        assert served.get("/api/cases/h1.qc/slides/s1/v1/macro", served.token("h1.other")).status_code == 403


@pytest.mark.slow
def test_a_send_tells_the_technician_at_once_and_puts_the_checks_and_the_blanked_macro_beside_the_slide(
    generated: Path, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    sent = slidestream("send", generated, *send_args(s3_server, s3_bucket, tmp_path / "state", "--case", "macro", "--json"))
    assert sent.returncode == 0, sent.stderr
    assert "rescan advised: tissue outside the scanned area" in sent.stderr
    ref = SlideRef("h1.macro")
    objects = server_objects(s3_server, s3_bucket, "cases/")
    checked = ScanQc.read(objects[f"cases/{scan_qc_key(ref)}"])
    assert checked.macro and any(line.startswith("rescan advised: tissue outside") for line in checked.advice)
    jpeg = objects[f"cases/{macro_key(ref)}"]
    assert not {marker for marker in _markers(jpeg) if marker == 0xFE or 0xE1 <= marker <= 0xEF}  # no EXIF, XMP, comment
    assert not any(name in blob for blob in objects.values() for name in (b"DOE_JANE", b"ACC-2024-0042"))
    macro = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    assert macro.shape == (MACRO_H, MACRO_W, 3)
    label_absent(macro, tolerance=8)  # JPEG's ringing at the band's edge, no more
    assert not any(key.endswith("label.jpg") for key in objects)
