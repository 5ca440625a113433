"""The case format's own promises, without a server: bounded parsing refuses what would cost memory, time or a
crash; signatures refuse what the centre did not write; keys parse back to what built them; `slidestream keys`
gives a station what it needs to verify the centre, across a rotation."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caseformat.bounded import DEPTH_LIMIT, DOCUMENT_LIMIT, Fields, load, parse_time, utc_now
from caseformat.documents import (
    Annotation,
    AuditEvent,
    Author,
    CaseRecord,
    OrderStatus,
    Person,
    Report,
    Request,
    SlideRead,
    read_notice,
)
from caseformat.errors import DocumentError, InvalidIdError, SignatureError
from caseformat.layout import (
    NoticeName,
    SlideRef,
    annotation_key,
    arrivals_folder,
    case_key,
    centre_folder,
    centre_twin,
    macro_key,
    notice_key,
    notices_folder,
    order_status_key,
    qualified_case,
    report_key,
    request_key,
    scan_qc_key,
    slide_claim_key,
    slides_key,
    station_folder,
    station_of,
    validate_case,
)
from caseformat.results import ScanCheck, ScanQc
from caseformat.signing import PRIVATE_KEY_FILE, PUBLIC_KEYS_FILE, SigningKey, TrustedKeys
from slides.errors import printable

KEY = SigningKey.generate()
TRUSTED = TrustedKeys([KEY.public])
DOCTOR = Author("u0123abcd", "Dr Ana Ruiz")
CASE = "theatre-3.S24_7"


def report(**changes: object) -> Report:
    genuine = Report(CASE, 1, "malignant", "adenocarcinoma at the margin", DOCTOR, utc_now(), "theatre-3",
                     slides=(SlideRead("s1", "v1"),))  # fmt: skip
    return replace(genuine, **changes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"[1, 2]", "expected a JSON object, found a list"),
        (b'{"a": NaN}', "not JSON"),
        (b'{"a": 1, "a": 2}', "a key appears twice"),
        (b'{"a": "\\ud800"}', "lone surrogate"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b"[" * 200_000 + b"]" * 200_000, "more than"),
        (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
        (b'{"a":' * (DEPTH_LIMIT + 1) + b"1" + b"}" * (DEPTH_LIMIT + 1), "nested deeper"),
        (b'{"a": "' + b"x" * DOCUMENT_LIMIT + b'"}', "more than"),
    ],
)
def test_a_document_that_would_cost_memory_time_or_a_crash_is_refused_with_its_reason(data: bytes, reason: str) -> None:
    with pytest.raises(DocumentError, match=reason):
        load(data, "s1/manifest.json")


@settings(max_examples=300, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=30))  # fmt: skip
def test_any_json_value_as_a_report_is_refused_with_a_document_error_never_another_exception(value: object) -> None:
    with pytest.raises(DocumentError):
        Report.read(json.dumps(value).encode(), "report 1", TRUSTED)
    if isinstance(value, dict):
        with pytest.raises(DocumentError):  # signed but malformed: the signature proves who, not what
            Report.read(json.dumps(KEY.sign(value)).encode(), "report 1", TRUSTED)


def test_every_centre_document_reads_back_as_written_and_refuses_tampering_and_strangers() -> None:
    now = utc_now()
    documents = [
        report(),
        report(number=2, amends=1, category="benign"),
        Request(CASE, 1, "deeper level of block A", DOCTOR, now, "theatre-3", "s1"),
        Request(CASE, 2, "PAS for fungi", DOCTOR, now, "theatre-3", "s1", "stain", "PAS"),
        Person("u0123abcd", "Dr Ana Ruiz", "pathologist", now),
        Person("u0123abce", "Theatre 3", "station", now, station="theatre-3"),
        AuditEvent(now, "sign", CASE, DOCTOR, report=1),
        AuditEvent(now, "open-case", CASE),
        Annotation("20261205T173001123Z-0a1b2c3d", CASE, "s1", "v1", "polygon", ((1.0, 2.0), (3.0, 4.0), (5.0, 1.0)),
                   replace(DOCTOR, role="pathologist"), now, "sample here"),  # fmt: skip
    ]
    stranger = SigningKey.generate()
    for document in documents:
        kind = type(document)
        data = document.to_json(KEY)
        assert kind.read(data, "doc", TRUSTED) == document
        with pytest.raises(SignatureError, match="does not trust"):
            kind.read(document.to_json(stranger), "doc", TRUSTED)
        unsigned = json.loads(data)
        del unsigned["signature"]
        with pytest.raises(SignatureError, match="not signed"):
            kind.read(json.dumps(unsigned).encode(), "doc", TRUSTED)
        tampered = json.loads(data)
        tampered["case" if "case" in tampered else "name"] += "x"
        with pytest.raises(SignatureError, match="does not match"):
            kind.read(json.dumps(tampered).encode(), "doc", TRUSTED)


def test_a_rework_order_reads_back_and_an_earlier_free_text_request_still_reads() -> None:
    order = Request(CASE, 3, "deeper level of s1", DOCTOR, utc_now(), "theatre-3", "s1", "deeper-level")
    assert Request.read(order.to_json(KEY), "request 3", TRUSTED).order_words == "deeper level of s1"
    earlier = {"format": "slidestream-request/2", "case": CASE, "number": 1, "what": "another section", "slide": None,
               "station": "theatre-3", "author": DOCTOR.to_dict(), "asked_at": utc_now()}  # fmt: skip
    assert Request.read(json.dumps(KEY.sign(earlier)).encode(), "request 1", TRUSTED).order is None


@pytest.mark.parametrize(("change", "reason"), [
    ({"order": "amputate"}, "order must be one of"),
    ({"order": "stain"}, "a stain order names its stain"),
    ({"stain": "PAS"}, "a stain order names its stain"),
    ({"order": "rescan", "slide": None}, "a rescan names the slide"),
    ({"order": "stain", "stain": "x" * 101}, "stain must be text of 1-100"),
])  # fmt: skip
def test_a_signed_order_that_cannot_be_carried_out_is_refused(change: dict[str, object], reason: str) -> None:
    document = json.loads(Request(CASE, 1, "recut", DOCTOR, utc_now(), "theatre-3", "s1", "recut").to_json(KEY))
    document = {**document, **change}
    del document["signature"]
    with pytest.raises(DocumentError, match=reason):
        Request.read(json.dumps(KEY.sign(document)).encode(), "request 1", TRUSTED)


def test_an_order_status_reads_back_and_a_hostile_one_is_refused_in_one_line() -> None:
    fulfilled = OrderStatus(CASE, 1, "deeper-level", "fulfilled", utc_now(), "s1", SlideRead("s2", "v1"))
    assert OrderStatus.read(fulfilled.to_json()) == fulfilled
    acknowledged = json.loads(replace(fulfilled, state="acknowledged", fulfilled_by=None).to_json())
    for hostile, reason in [({**acknowledged, "fulfilled_by": {"slide": "s2", "version": "v1"}}, "names no slide"),
                            ({**acknowledged, "state": "fulfilled"}, "fulfilled_by must be given"),
                            ({**acknowledged, "state": "done\x1b[2J"}, "state must be one of"),
                            ({**json.loads(fulfilled.to_json()), "fulfilled_by": {"slide": "../s2", "version": "v1"}}, "slide")]:
        with pytest.raises(DocumentError, match=reason) as refused:
            OrderStatus.read(json.dumps(hostile).encode(), "orders/0001.json")
        assert "\n" not in str(refused.value)


def test_a_report_whose_number_kind_and_amends_disagree_is_refused_even_when_signed() -> None:
    with pytest.raises(DocumentError, match="disagree"):
        Report.read(report(number=2).to_json(KEY), "report 2", TRUSTED)


def test_a_notice_is_the_signed_report_itself() -> None:
    genuine = report()
    data = genuine.to_json(KEY)
    assert read_notice(data, "notice", TRUSTED, "report") == genuine
    with pytest.raises(DocumentError):
        read_notice(data, "notice", TRUSTED, "request")


def test_scan_checks_read_back_and_a_hostile_one_is_refused_in_one_line() -> None:
    checks = (ScanCheck("tissue-missed", False, "rescan advised: tissue outside the scanned area (about 31% of the tissue on the glass)", 0.31),
              ScanCheck("focus", None, "focus not checked on a dark-field slide"))  # fmt: skip
    genuine = ScanQc(CASE, "s1", "v2", utc_now(), checks, macro=True)
    assert ScanQc.read(genuine.to_json()) == genuine and genuine.advice == [checks[0].line]
    document = json.loads(genuine.to_json())
    for bad in ({**document, "checks": [{**document["checks"][0], "passed": "no"}]},
                {**document, "checks": [{**document["checks"][0], "line": "x" * 301}]},
                {**document, "checks": [{**document["checks"][0], "name": "../../etc"}]},
                {**document, "checks": [document["checks"][0]] * 33},
                {**document, "checks": {"tissue-missed": False}},
                {**document, "case": 5},
                {**document, "version": "v0"},
                {**document, "format": "slidestream-scan-qc/9"},
                {**document, "padding": "x" * 70_000}):  # fmt: skip
        with pytest.raises(DocumentError) as refused:
            ScanQc.read(json.dumps(bad).encode())
        assert "\n" not in str(refused.value) and str(refused.value).startswith("scan_qc.json")


def test_case_record_bounds_dates_and_ids() -> None:
    genuine = CaseRecord(CASE, utc_now(), "theatre-3", (("clinical_question", "margin?"),))
    assert CaseRecord.read(genuine.to_json()) == genuine
    for bad in ({**json.loads(genuine.to_json()), "registered_at": "9999-01-01T00:00:00Z"},
                {**json.loads(genuine.to_json()), "registered_at": "yesterday"},
                {**json.loads(genuine.to_json()), "case": "../other"},
                {**json.loads(genuine.to_json()), "context": {"clinical_question": "x" * 501}},
                {**json.loads(genuine.to_json()), "station": 5}):  # fmt: skip
        with pytest.raises(DocumentError):
            CaseRecord.read(json.dumps(bad).encode())


def test_notice_keys_parse_back_even_when_the_case_id_holds_underscores() -> None:
    key = notice_key("theatre-3", "2026-12-05T17:30:01.123Z", "theatre-3.S24_0001_A", "report", 2)
    assert key.startswith(notices_folder("theatre-3"))
    assert NoticeName.parse(key) == NoticeName("20261205T173001123Z", "theatre-3.S24_0001_A", "report", 2)
    notices = notices_folder("x")
    for bad in ("20261205T1Z_x.a/b_report_0001.json", "20261205T1Z_.._report_0001.json", "20261205T1Z_x.c_invoice_0001.json",
                "20261205T1Z_unqualified_report_0001.json", "notes.txt"):  # fmt: skip
        assert NoticeName.parse(notices + bad) is None


def test_keys_refuse_names_that_would_leave_their_folder() -> None:
    for bad in ("../etc", "a/b", "", ".hidden", "x" * 65, "a..b", "h1../etc", "h1.a/b", "h1.", "H1.a", "_h1.a", "h1." + "x" * 65):
        with pytest.raises(InvalidIdError):
            validate_case(bad)
        with pytest.raises(InvalidIdError):
            report_key(bad, 1)
    arrivals = arrivals_folder("theatre-3")
    assert SlideRef.from_arrival(f"{arrivals}20261205T1Z_{CASE}_s1_v2") == SlideRef(CASE, "s1", "v2")
    assert SlideRef.from_arrival(f"{arrivals}20261205T1Z_.._s1_v2") is None
    assert SlideRef.from_arrival(f"{arrivals}20261205T1Z_theatre-3.._s1_v2") is None


STATIONS = st.from_regex(r"[a-z0-9][a-z0-9-]{0,31}", fullmatch=True)
LOCALS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True).filter(lambda name: ".." not in name)


@settings(max_examples=300, deadline=None)
@given(STATIONS, LOCALS, STATIONS, st.integers(1, 9999), st.integers(1, 9999))
def test_every_key_of_a_case_lies_in_its_own_stations_folder_or_the_centres_folder_for_that_station(
        station: str, local: str, other: str, slide: int, version: int) -> None:  # fmt: skip
    """One S3 policy per station (read-write stations/{station}/, read-only centre/{station}/) confines it only if
    no key of its cases lies anywhere else, whatever the station and case are called."""
    case = qualified_case(station, local)
    assert station_of(case) == station
    ref = SlideRef(case, f"s{slide}", f"v{version}")
    station_writes = [ref.root, ref.key("manifest.json"), ref.key("image.zarr/0/c/0/0"), ref.claim_key,
                      ref.arrival_key("2026-12-05T17:30:01.123Z"), case_key(case, "case.json"), slides_key(case),
                      slides_key(case, ref.slide), slide_claim_key(case, ref.slide), scan_qc_key(ref), macro_key(ref),
                      order_status_key(case, 7)]  # fmt: skip
    centre_writes = [ref.centre_root, ref.centre_key("triage.json"), ref.centre_key("heatmap.zarr/zarr.json"),
                     ref.centre_key("hub.lease"), report_key(case, 1), request_key(case, 3),
                     annotation_key(case, "20261205T173001123Z-0a1b2c3d"),
                     notice_key(station, "2026-12-05T17:30:01Z", case, "report", 1)]  # fmt: skip
    for key in station_writes:
        assert key.startswith(station_folder(station)), key
    for key in centre_writes:
        assert key.startswith(centre_folder(station)), key
    if other != station:
        for key in station_writes + centre_writes:
            assert not key.startswith((station_folder(other), centre_folder(other))), key
    assert SlideRef.parse(ref.root) == ref
    assert SlideRef.from_arrival(ref.arrival_key("2026-12-05T17:30:01.123Z")) == ref


def test_a_case_filed_under_another_stations_folder_is_refused() -> None:
    """A station can write only its own folder, so a case ID there that names another station is a forgery."""
    assert SlideRef.parse("stations/h1/h1.a/slides/s1/v2") == SlideRef("h1.a", "s1", "v2")
    for misfiled in ("stations/h2/h1.a/slides/s1/v2", "stations/h1-b/h1.a/slides/s1/v2", "centre/h1/h1.a/slides/s1/v2",
                     "h1.a/slides/s1/v2", "stations/h1/a/slides/s1/v2"):  # fmt: skip
        with pytest.raises(InvalidIdError):
            SlideRef.parse(misfiled)
    with pytest.raises(InvalidIdError, match="filed under station 'h2'"):
        SlideRef.parse("stations/h2/h1.a/slides/s1/v2")
    arrival = SlideRef("h1.a", "s1", "v2").arrival_key("2026-12-05T17:30:01Z")
    assert SlideRef.from_arrival(arrival) == SlideRef("h1.a", "s1", "v2")
    name = arrival.rsplit("/", 1)[1]
    for elsewhere in (arrivals_folder("h2"), arrivals_folder("h1-b"), "_arrivals/", "centre/h1/_arrivals/", ""):
        assert SlideRef.from_arrival(elsewhere + name) is None


def test_a_case_id_is_qualified_by_the_station_that_sends_it() -> None:
    assert qualified_case("theatre-3", "S24_7") == "theatre-3.S24_7"
    assert qualified_case("theatre-3", "theatre-3.S24_7") == "theatre-3.S24_7"  # already its own: kept
    assert qualified_case("h1", "h2.a") == "h1.h2.a" and station_of("h1.h2.a") == "h1"  # never another station's case
    for station, local in (("H1", "a"), ("h.1", "a"), ("_h1", "a"), ("h1", "../a"), ("h1", ""), ("h1", "a/b"), ("h1", "a" * 65)):
        with pytest.raises(InvalidIdError):
            qualified_case(station, local)


def test_the_centres_twin_of_a_slide_version_is_found_from_its_url_or_key() -> None:
    version = "h1.a/slides/s1/v2"
    assert centre_twin(f"stations/h1/{version}") == f"centre/h1/{version}"
    assert centre_twin(f"s3://bucket/site/stations/h1/{version}/") == f"s3://bucket/site/centre/h1/{version}"
    assert centre_twin(f"/srv/store/stations/h1/{version}") == f"/srv/store/centre/h1/{version}"
    assert centre_twin(f"stations/h1/{version}") == SlideRef("h1.a", "s1", "v2").centre_root
    for no_twin in ("/tmp/archive/h1.a/s1", f"stations/h2/{version}", f"centre/h1/{version}", f"s3://bucket/{version}",
                    "stations/h1/h1.a/slides/s1"):  # fmt: skip
        assert centre_twin(no_twin) is None


def test_times_are_written_one_way_and_read_with_bounds() -> None:
    assert parse_time(utc_now()).tzinfo is not None
    for bad in ("2026-12-05T17:30:01", "9999-12-31T00:00:00Z", "1900-01-01T00:00:00Z", "2026-13-01T00:00:00Z"):
        with pytest.raises(ValueError):
            parse_time(bad)
    assert Fields({"n": True}, "doc").boolean("n") is True
    with pytest.raises(DocumentError, match="n must be a whole number"):
        Fields({"n": True}, "doc").integer("n", 0, 5)


def test_text_from_outside_prints_as_one_line() -> None:
    forged = "benign\n2026-12-05 REPORT case X: malignant\x1b[2K\r\u202e"
    shown = printable(forged)
    assert "\n" not in shown and "\x1b" not in shown and "\r" not in shown and "\u202e" not in shown
    assert shown == "benign\\n2026-12-05 REPORT case X: malignant\\x1b[2K\\r\\u202e"


def test_keys_command_hands_a_station_what_verifies_the_centre_across_a_rotation(tmp_path: Path) -> None:
    centre, station = tmp_path / "centre", tmp_path / "station"

    def keys(*args: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "slidestream", "keys", *map(str, args)], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg")})  # fmt: skip

    assert keys("show", "--key-dir", centre).returncode == 0
    first = SigningKey.load(centre / PRIVATE_KEY_FILE)
    assert stat.S_IMODE((centre / PRIVATE_KEY_FILE).stat().st_mode) == 0o600 and stat.S_IMODE(centre.stat().st_mode) == 0o700
    genuine = report()
    signed_before = genuine.to_json(first)
    assert keys("rotate", "--key-dir", centre).returncode == 0
    second = SigningKey.load(centre / PRIVATE_KEY_FILE)
    assert second.id != first.id
    assert keys("export", tmp_path / "for-stations.pem", "--key-dir", centre).returncode == 0
    assert "PRIVATE" not in (tmp_path / "for-stations.pem").read_text()
    trusted = keys("trust", tmp_path / "for-stations.pem", "--state-dir", station)
    assert trusted.returncode == 0, trusted.stderr
    at_station = TrustedKeys.load(station / PUBLIC_KEYS_FILE)
    assert Report.read(signed_before, "old report", at_station) == genuine
    assert Report.read(genuine.to_json(second), "new report", at_station) == genuine
    with pytest.raises(SignatureError):
        Report.read(report().to_json(SigningKey.generate()), "forged", at_station)
    refused = keys("trust", tmp_path / "for-stations.pem.missing", "--state-dir", station)
    assert refused.returncode == 2 and refused.stderr.strip().count("\n") == 0 and "cannot read" in refused.stderr
