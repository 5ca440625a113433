"""The report into the hospital's LIS and the LIS's orders into the station, over real MLLP sockets: reports go to
hl7apy's own MLLP server, which parses each message at hl7apy's STRICT level; orders come from a test LIS that frames
its messages by hand."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import stat
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message
from support import free_port

from caseformat.bounded import utc_now
from caseformat.documents import Author, Report
from caseformat.signing import SigningKey, TrustedKeys
from hospital.hl7 import HL7Error, Order, Patient, Routing, control_id, report_message
from hospital.mllp import OUTBOX_FILE, Endpoint, OrderListener, Outbox, exchange
from hospital.outbox import RETRY_FIRST
from objectstore import S3Storage
from station.registry import Registry, Specimen, new_case_id
from viewer.cases import Cases

KEY = SigningKey.generate()
TRUSTED = TrustedKeys([KEY.public])
STORE = "http://s3.test bucket prefix"
ROUTING = Routing("SLIDESTREAM", "ST-MARY-OR", "LIS", "ST-MARY-LAB", "ST-MARY")
IDENTITY = {"accession": "S26-4711", "patient_name": "Müller-Lüdenscheidt, Hans", "patient_id": "MRN-004711", "birth_date": "1961-02-03"}
DIAGNOSIS = ("Invasive ductal carcinoma | grade ^2 & ~ 3 \\ with \\F\\ written out, naïve Ärzte, 日本語\n\n"
             + "Second  paragraph with  double spaces " * 6 + "\n" + "X" * 250)  # fmt: skip


def signed_report(case: str, number: int = 1, category: str = "malignant", diagnosis: str = DIAGNOSIS,
                  margins: str | None = "Clear: closest 2 mm (posterior) | 5 mm ^ superior") -> Report:  # fmt: skip
    """A report as the station gets it: signed by the centre, read back verified."""
    report = Report(case, number, category, diagnosis, Author("u0123abcd", "Dr. Ana Pérez"), utc_now(), "st-mary", margins,
                    None, (), number - 1 if number > 1 else None)  # fmt: skip
    return Report.read(report.to_json(KEY), f"{case}/reports/{number:04d}.json", TRUSTED)


def registered_patient(state: Path, case: str) -> Patient:
    """The patient as the station's registry holds them."""
    with Registry(state) as registry:
        registry.add_specimen(STORE, Specimen(case, "OR-2 frozen", "accession:S26-4711", IDENTITY, {}, "st-mary", utc_now()))
        specimen = registry.specimen(STORE, case=case)
    assert specimen is not None
    return Patient.from_identity(specimen.identity)


class ReportLIS:
    """hl7apy's MLLP server as the hospital's LIS: each message parsed and validated at hl7apy's STRICT level (a
    message that fails is recorded in `invalid` and gets no answer); answers AA, or what `answers` holds for a control
    ID (each answer used once; an empty code: it hangs up without answering)."""

    def __init__(self, port: int) -> None:
        self.received: list[Any] = []
        self.invalid: list[str] = []
        self.answers: dict[str, list[tuple[str, str]]] = {}
        lis = self

        class Handler(AbstractHandler):  # type: ignore[misc]
            def reply(self) -> str:
                try:
                    message = parse_message(self.incoming_message, validation_level=VALIDATION_LEVEL.STRICT)
                    message.validate()
                except Exception as error:
                    lis.invalid.append(repr(error))
                    raise
                control = message.msh.msh_10.value
                lis.received.append(message)
                code, reason = (lis.answers.get(control) or [("AA", "")]).pop(0)
                if not code:
                    raise ConnectionAbortedError("hangs up without an ACK")
                ack = (f"MSH|^~\\&|LIS|ST-MARY-LAB|SLIDESTREAM|ST-MARY-OR|{datetime.now(UTC):%Y%m%d%H%M%S}||ACK^R01^ACK|A{len(lis.received)}|P|2.5.1\r"
                       f"MSA|{code}|{control}|{reason}\r")  # fmt: skip
                return f"\x0b{ack}\x1c\r"

        self.server = MLLPServer("127.0.0.1", port, {"ORU^R01^ORU_R01": (Handler,)}, timeout=5)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def controls(self) -> list[str]:
        return [message.msh.msh_10.value for message in self.received]


@pytest.fixture
def lis() -> Iterator[ReportLIS]:
    server = ReportLIS(0)
    yield server
    server.close()


def endpoint_of(port: int) -> Endpoint:
    return Endpoint("127.0.0.1", port, connect_timeout=2, ack_timeout=5)


def order_observation(message: Any) -> Any:
    return message.oru_r01_patient_result.oru_r01_order_observation


def observations(message: Any) -> list[Any]:
    return [group.obx for group in order_observation(message).oru_r01_observation]


def plain(value: str) -> str:
    """HL7's escape sequences undone, independently of hospital.hl7."""
    return re.sub(r"\\([FSTRE])\\", lambda match: {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\"}[match.group(1)], value)


def text_of(message: Any, code: str) -> str:
    """A TX observation's text: its OBX segments' OBX-5 by paragraph (OBX-4 "paragraph.line"), lines joined."""
    paragraphs: dict[str, str] = {}
    for obx in observations(message):
        if obx.obx_3.obx_3_1.value == code:
            paragraph = obx.obx_4.value.split(".")[0]
            paragraphs[paragraph] = paragraphs.get(paragraph, "") + plain(obx.obx_5.to_er7())
    return "\n".join(paragraphs.values())


def deliver(outbox: Outbox, port: int, now: float | None = None) -> tuple[Any, list[str]]:
    said: list[str] = []
    return outbox.deliver(endpoint_of(port), said.append, now), said


def test_a_signed_report_reaches_the_lis_with_the_registrys_identity_as_final(tmp_path: Path, lis: ReportLIS) -> None:
    case = f"st-mary.{new_case_id()}"
    message = report_message(signed_report(case), registered_patient(tmp_path / "state", case), ROUTING)
    with Outbox(tmp_path / "state") as outbox:
        assert outbox.enqueue(message)
        done, said = deliver(outbox, lis.server.server_address[1])
        assert [(entry.state, entry.message) for entry in outbox.entries()] == [("delivered", "")]  # the identity it carried is gone
    assert (done.delivered, done.queued, said, lis.invalid) == (1, 0, [], [])
    [received] = lis.received
    assert received.msh.msh_10.value == control_id(case, 1)
    assert [received.msh.msh_3.to_er7(), received.msh.msh_4.to_er7(), received.msh.msh_5.to_er7(), received.msh.msh_6.to_er7()] == \
        ["SLIDESTREAM", "ST-MARY-OR", "LIS", "ST-MARY-LAB"]  # fmt: skip
    pid = received.oru_r01_patient_result.oru_r01_patient.pid
    assert (pid.pid_3.cx_1.value, pid.pid_3.cx_4.to_er7(), pid.pid_3.cx_5.value) == ("MRN-004711", "ST-MARY", "MR")
    assert (pid.pid_5.xpn_1.to_er7(), pid.pid_5.xpn_2.value, pid.pid_7.to_er7()) == ("Müller-Lüdenscheidt", "Hans", "19610203")
    obr = order_observation(received).obr
    assert (obr.obr_2.to_er7(), obr.obr_3.ei_1.value, obr.obr_25.value) == ("S26-4711", case, "F")
    assert {obx.obx_11.value for obx in observations(received)} == {"F"}
    category = observations(received)[0]
    assert (category.obx_2.value, category.obx_5.to_er7()) == ("CWE", "malignant^Malignant^L")


def test_the_diagnosis_arrives_whole_escaped_and_unescaped(tmp_path: Path, lis: ReportLIS) -> None:
    case = f"st-mary.{new_case_id()}"
    report = signed_report(case)
    with Outbox(tmp_path / "state") as outbox:
        outbox.enqueue(report_message(report, registered_patient(tmp_path / "state", case), ROUTING))
        deliver(outbox, lis.server.server_address[1])
    [received] = lis.received
    assert text_of(received, "22637-3") == DIAGNOSIS
    assert text_of(received, "MARGINS") == report.margins
    diagnosis_lines = [obx.obx_5.to_er7() for obx in observations(received) if obx.obx_3.obx_3_1.value == "22637-3"]
    assert "\\F\\" in diagnosis_lines[0] and "\\E\\F\\E\\" in diagnosis_lines[0] and "|" not in "".join(diagnosis_lines)
    assert max(len(plain(line)) for line in diagnosis_lines) <= 80  # lines an LIS screen shows


def test_an_amendment_is_a_correction_and_a_deferred_report_preliminary(tmp_path: Path, lis: ReportLIS) -> None:
    case = f"st-mary.{new_case_id()}"
    patient = registered_patient(tmp_path / "state", case)
    deferred = signed_report(case, 1, "deferred", "Deferred to permanent sections")
    final_after_deferred = signed_report(case, 2, "benign", "Benign fibroadenoma")
    correction = signed_report(case, 3, "malignant", "Correction: focal carcinoma in situ")
    with Outbox(tmp_path / "state") as outbox:
        outbox.enqueue(report_message(deferred, patient, ROUTING))
        outbox.enqueue(report_message(final_after_deferred, patient, ROUTING, corrects_final=False))
        outbox.enqueue(report_message(correction, patient, ROUTING))
        done, _ = deliver(outbox, lis.server.server_address[1])
    assert done.delivered == 3 and lis.invalid == []
    statuses = [(order_observation(m).obr.obr_25.value, {obx.obx_11.value for obx in observations(m)}) for m in lis.received]
    assert statuses == [("P", {"P"}), ("F", {"F"}), ("C", {"C"})]
    assert lis.controls() == [control_id(case, number) for number in (1, 2, 3)]
    assert "replaces report 2" in order_observation(lis.received[2]).nte.nte_3.to_er7()


def test_an_outage_and_a_restart_lose_nothing_and_send_nothing_twice(tmp_path: Path) -> None:
    first, second = f"st-mary.{new_case_id()}", f"st-mary.{new_case_id()}"
    patient = registered_patient(tmp_path / "state", first)
    messages = [report_message(signed_report(first), patient, ROUTING), report_message(signed_report(first, 2), patient, ROUTING),
                report_message(signed_report(second), patient, ROUTING)]  # fmt: skip
    port = free_port()  # nothing listens there: the LIS is down
    with Outbox(tmp_path / "state") as outbox:
        assert [outbox.enqueue(message) for message in messages] == [True, True, True]
        done, said = deliver(outbox, port)
        assert (done.delivered, done.queued) == (0, 3)
        assert len(said) == 1 and "unreachable" in said[0] and "3 HL7 message(s) stay queued" in said[0]
        assert deliver(outbox, port)[1] == []  # the same outage is said once
    with Outbox(tmp_path / "state") as restarted:  # `watch` restarted while the LIS was down
        assert not restarted.enqueue(report_message(signed_report(first), patient, ROUTING))  # rebuilt: the same control ID
        lis = ReportLIS(port)  # the LIS is back
        try:
            done, said = deliver(restarted, port)
            assert (done.delivered, done.queued, said, lis.invalid) == (3, 0, [], [])
            assert deliver(restarted, port)[0].delivered == 0
            assert not restarted.enqueue(messages[1])
            assert deliver(restarted, port)[0].delivered == 0
        finally:
            lis.close()
    assert lis.controls() == [control_id(first, 1), control_id(first, 2), control_id(second, 1)]
    assert max(Counter(lis.controls()).values()) == 1


def test_a_refusal_is_recorded_said_once_and_not_retried(tmp_path: Path, lis: ReportLIS) -> None:
    case = f"st-mary.{new_case_id()}"
    lis.answers[control_id(case, 1)] = [("AR", "unknown patient MRN-004711 in this facility")]
    with Outbox(tmp_path / "state") as outbox:
        outbox.enqueue(report_message(signed_report(case), registered_patient(tmp_path / "state", case), ROUTING))
        done, said = deliver(outbox, lis.server.server_address[1])
        assert done.refused == 1
        assert len(said) == 1 and "REFUSED" in said[0] and "unknown patient" in said[0] and "\n" not in said[0]
        [entry] = outbox.entries()
        assert (entry.state, entry.reply, entry.control_id) == ("refused", "AR unknown patient MRN-004711 in this facility", control_id(case, 1))
        assert "MRN-004711" in entry.message  # kept whole: a person decides what to do with it
        assert deliver(outbox, lis.server.server_address[1], now=datetime.now(UTC).timestamp() + 86400)[0].delivered == 0
    assert len(lis.received) == 1


def test_an_application_error_is_retried_later_and_holds_back_the_cases_amendment(tmp_path: Path, lis: ReportLIS) -> None:
    case = f"st-mary.{new_case_id()}"
    patient = registered_patient(tmp_path / "state", case)
    lis.answers[control_id(case, 1)] = [("AE", "database busy")]
    port = lis.server.server_address[1]
    with Outbox(tmp_path / "state") as outbox:
        outbox.enqueue(report_message(signed_report(case), patient, ROUTING))
        outbox.enqueue(report_message(signed_report(case, 2), patient, ROUTING))
        now = datetime.now(UTC).timestamp()
        done, said = deliver(outbox, port, now)
        assert (done.delivered, done.queued) == (0, 2) and len(said) == 1 and "AE: database busy; sent again later" in said[0]
        assert deliver(outbox, port, now + 1)[0].delivered == 0  # backing off
        assert deliver(outbox, port, now + RETRY_FIRST + 1)[0].delivered == 2
    assert lis.controls() == [control_id(case, 1), control_id(case, 1), control_id(case, 2)]


def test_a_message_without_an_ack_waits_ever_longer_while_the_other_cases_go_on(tmp_path: Path, lis: ReportLIS) -> None:
    case, other = f"st-mary.{new_case_id()}", f"st-mary.{new_case_id()}"
    patient = registered_patient(tmp_path / "state", case)
    lis.answers[control_id(case, 1)] = [("", ""), ("", "")]  # the LIS hangs up twice before it answers
    port = lis.server.server_address[1]
    with Outbox(tmp_path / "state") as outbox:
        for message in (report_message(signed_report(case), patient, ROUTING), report_message(signed_report(case, 2), patient, ROUTING),
                        report_message(signed_report(other), patient, ROUTING)):  # fmt: skip
            outbox.enqueue(message)
        now = datetime.now(UTC).timestamp()
        done, said = deliver(outbox, port, now)
        assert (done.delivered, done.queued) == (1, 2) and lis.controls() == [control_id(case, 1), control_id(other, 1)]
        [line] = said
        assert line.startswith(f"HL7 {control_id(case, 1)}: LIS ") and "no acknowledgement" in line and line.endswith("; sent again later")
        later = now + RETRY_FIRST
        assert deliver(outbox, port, later)[0].queued == 2  # sent again: no ACK again
        assert deliver(outbox, port, later + 2 * RETRY_FIRST - 1)[0].delivered == 0  # the wait doubled
        assert deliver(outbox, port, later + 2 * RETRY_FIRST)[0].delivered == 2
    assert lis.controls() == [control_id(case, 1), control_id(other, 1), control_id(case, 1), control_id(case, 1), control_id(case, 2)]


def test_the_outbox_file_is_private(tmp_path: Path) -> None:
    with Outbox(tmp_path / "state") as outbox:
        assert stat.S_IMODE(outbox.path.stat().st_mode) == 0o600
        assert stat.S_IMODE(outbox.path.parent.stat().st_mode) == 0o700
        assert outbox.path.name == OUTBOX_FILE


# -- orders in ----------------------------------------------------------------------------------------------------
OML = "\r".join([
    "MSH|^~\\&|LIS|ST-MARY-LAB|SLIDESTREAM|ST-MARY-OR|20261205201221||OML^O21^OML_O21|ORD-0001|P|2.5.1|||AL|NE||UNICODE UTF-8",
    "PID|1||X-99^^^OTHER^PI~MRN-004711^^^ST-MARY^MR||Müller-Lüdenscheidt^Hans||19610203|M",
    "ORC|NW|S26-4711^LIS||||||||||1234^Surgeon^Sam",
    "OBR|1|S26-4711^LIS||88331^Frozen section^C4|||20261205200000||||||Margins \\T\\ sentinel node?",
    "SPM|1|||TISS^Tissue^HL70487||||LUL^Left upper lobe^L",
])  # fmt: skip
ORM = "\r".join([
    "MSH|^~\\&|LIS|ST-MARY-LAB|SLIDESTREAM|ST-MARY-OR|20261205201300||ORM^O01|ORD-0002|P|2.3",
    "PID|1||MRN-000042^^^ST-MARY^MR||Doe^Jane||19700101|F",
    "ORC|NW|S26-4712",
    "OBR|1|S26-4712||88331^Frozen section^C4|||||||||||BRST&Breast tissue^^^LT&Left breast|2345^Cutter^Carla",
    "NTE|1||Invasive tumour at the margin?",
])  # fmt: skip


class OrderLIS:
    """The LIS's side of the order feed: one connection, messages framed by hand, each ACK read before the next."""

    def __init__(self, port: int) -> None:
        self.connection = socket.create_connection(("127.0.0.1", port), timeout=5)

    def send(self, payload: str | bytes) -> str:
        self.connection.sendall(b"\x0b" + (payload.encode() if isinstance(payload, str) else payload) + b"\x1c\r")
        reply = b""
        while not reply.endswith(b"\x1c\r"):
            chunk = self.connection.recv(65536)
            assert chunk, "the listener closed the connection without an answer"
            reply += chunk
        assert reply.startswith(b"\x0b")
        return reply[1:-2].decode()

    def close(self) -> None:
        self.connection.close()


def msa(ack: str) -> list[str]:
    return next(segment for segment in ack.split("\r") if segment.startswith("MSA|")).split("|")


@pytest.fixture
def order_feed(tmp_path: Path) -> Iterator[tuple[OrderListener, Registry, list[str]]]:
    """The station's order listener, registering each order in a real registry as `watch` would."""
    said: list[str] = []
    registry = Registry(tmp_path / "state")

    def register(order: Order) -> None:
        if order.placer_order == "S26-FAIL":
            raise OSError(28, "No space left on device")
        if registry.specimen(STORE, source=f"accession:{order.placer_order}") is not None:
            return  # the LIS sent it again (our ACK was lost): registered already
        registry.add_specimen(STORE, Specimen(f"st-mary.{new_case_id()}", order.placer_order, f"accession:{order.placer_order}",
                                              order.patient.to_identity(), order.context(), "st-mary", utc_now()))  # fmt: skip

    with OrderListener("127.0.0.1", 0, register, ROUTING, said.append) as listener:
        yield listener, registry, said
    registry.close()


def test_orders_from_the_lis_register_specimens_and_are_acknowledged(order_feed: tuple[OrderListener, Registry, list[str]]) -> None:
    listener, registry, said = order_feed
    lis = OrderLIS(listener.port)
    try:
        oml_ack, orm_ack, again = lis.send(OML), lis.send(ORM), lis.send(OML)
    finally:
        lis.close()
    assert msa(oml_ack)[1:3] == ["AA", "ORD-0001"] and msa(orm_ack)[1:3] == ["AA", "ORD-0002"] and msa(again) == msa(oml_ack)
    parse_message(oml_ack, validation_level=VALIDATION_LEVEL.STRICT).validate()  # answered in the order's version
    assert "|2.3" in orm_ack.split("\r")[0]
    specimens = {specimen.source: specimen for _, specimen in registry.specimens(STORE)}
    oml, orm = specimens["accession:S26-4711"], specimens["accession:S26-4712"]
    assert oml.identity == IDENTITY | {"sex": "M"}
    assert oml.context == {"clinical_question": "Margins & sentinel node?", "specimen_site": "Left upper lobe", "specimen_type": "Tissue",
                           "surgeon": "Sam Surgeon"}  # fmt: skip
    assert orm.identity == {"accession": "S26-4712", "patient_name": "Doe, Jane", "patient_id": "MRN-000042", "birth_date": "1970-01-01", "sex": "F"}
    assert orm.context == {"clinical_question": "Invasive tumour at the margin?", "specimen_site": "Left breast",
                           "specimen_type": "Breast tissue", "surgeon": "Carla Cutter"}  # fmt: skip
    assert Patient.from_identity(oml.identity).to_identity() == oml.identity  # what a report's PID is built from
    assert len(specimens) == 2  # the order sent again registered nothing new
    assert said == ["ORDER AA: OML^O21 ORD-0001 placer order S26-4711", "ORDER AA: ORM^O01 ORD-0002 placer order S26-4712",
                    "ORDER AA: OML^O21 ORD-0001 placer order S26-4711"]  # fmt: skip


def test_a_malformed_order_gets_a_one_line_reason_and_the_listener_goes_on(order_feed: tuple[OrderListener, Registry, list[str]]) -> None:
    listener, registry, said = order_feed
    no_patient_id = OML.replace("X-99^^^OTHER^PI~MRN-004711^^^ST-MARY^MR", "").replace("ORD-0001", "ORD-0003")
    admission = OML.replace("OML^O21^OML_O21", "ADT^A01^ADT_A01").replace("ORD-0001", "ORD-0004")
    full_disk = OML.replace("S26-4711", "S26-FAIL").replace("ORD-0001", "ORD-0005")
    lis = OrderLIS(listener.port)
    try:
        answers = [msa(lis.send(payload)) for payload in ("hello", admission, no_patient_id, full_disk, b"MSH|^~\\&|\xff\xfe|")]
        answers.append(msa(lis.send(OML)))
    finally:
        lis.close()
    assert [answer[1] for answer in answers] == ["AR", "AR", "AE", "AE", "AR", "AA"]
    assert "does not start with an MSH segment" in answers[0][3]
    assert answers[1][2] == "ORD-0004" and "ADT\\S\\A01 is not an order" in answers[1][3]
    assert answers[2][2] == "ORD-0003" and answers[2][3].endswith("no patient ID (PID-3)")
    assert "not registered: OSError" in answers[3][3]
    assert "not UTF-8" in answers[4][3]
    assert len(said) == 6 and all("\n" not in line for line in said)
    assert "No space left on device" in said[3]
    assert [specimen.source for _, specimen in registry.specimens(STORE)] == ["accession:S26-4711"]
    stray = socket.create_connection(("127.0.0.1", listener.port), timeout=5)  # bytes outside a frame: that connection ends
    stray.sendall(b"GET / HTTP/1.1\r\n\r\n\x1c\r")
    assert stray.recv(100) == b""
    stray.close()
    assert exchange(endpoint_of(listener.port), ORM).split("\r")[1].startswith("MSA|AA|ORD-0002")


def test_a_report_that_cannot_be_valid_hl7_is_refused_in_a_line_that_names_no_patient() -> None:
    case = f"st-mary.{new_case_id()}"
    with pytest.raises(HL7Error) as refused:
        report_message(signed_report(case), Patient("MRN-004711", "Zweinamen-" * 30, "Hans"), ROUTING)
    assert str(refused.value) == f"report 1 of case {case}: not a valid HL7 message: a value longer than its HL7 field allows"
    with pytest.raises(HL7Error, match="^patient: the birth date is not a date"):
        Patient.from_identity(IDENTITY | {"birth_date": "3.2.61"})


# -- through watch: an order in, the signed report out ---------------------------------------------------------------
@pytest.mark.slow
def test_watch_registers_the_lis_order_and_sends_its_signed_report_to_the_lis_with_a_pdf_in_the_outbox(
    tmp_path: Path, s3_server: Any, s3_bucket: str, lis: ReportLIS
) -> None:
    """`watch --orders --lis`, with the interface team's MSH routing in the config file's [watch.hl7]: the LIS's
    OML^O21 registers the specimen (no identity in any object on the store; its context on the centre's case page);
    the centre signs its report; `watch` writes the text and its PDF to the outbox and sends the ORU^R01, with the
    order's patient in PID and the configured routing in MSH, to the LIS once, whatever the number of polls."""
    import subprocess
    import sys
    import time

    from caseformat.documents import SlideRead
    from caseformat.layout import notice_key, report_key
    from caseformat.signing import public_pem

    centre = SigningKey.generate()
    (tmp_path / "centre.pem").write_bytes(public_pem(centre.public))
    hot, state, orders = tmp_path / "hot", tmp_path / "state", free_port()
    hot.mkdir()
    store = f"s3://{s3_bucket}/alliance"
    config = tmp_path / "config.toml"
    config.write_text('[watch.hl7]\nsending_facility = "ST-MARY-OR"\nreceiving_application = "LIS"\nreceiving_facility = "ST-MARY-LAB"\n'
                      'id_authority = "ST-MARY"\n')
    command = [sys.executable, "-m", "slidestream", "--config", str(config), "watch", str(hot), store, "--endpoint-url", s3_server.endpoint_url,
               "--state-dir", str(state), "--station", "st-mary", "--no-edge", "--settle", "0.2",
               "--centre-keys", str(tmp_path / "centre.pem"), "--lis", f"mllp://127.0.0.1:{lis.server.server_address[1]}",
               "--orders", f"127.0.0.1:{orders}"]  # fmt: skip
    watching = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                acked = OrderLIS(orders).send(OML)
                break
            except OSError:
                assert time.monotonic() < deadline and watching.poll() is None, watching.stderr.read() if watching.stderr else ""
                time.sleep(0.3)
        assert "MSA|AA|ORD-0001" in acked, acked
        client = s3_server.client()
        listed: list[str] = []
        while not any(key.endswith("/case.json") for key in listed):
            assert time.monotonic() < deadline, listed
            listed = [item["Key"] for item in client.list_objects_v2(Bucket=s3_bucket, Prefix="alliance/").get("Contents", [])]
            time.sleep(0.3)
        case_json = next(key for key in listed if key.endswith("/case.json"))
        record = client.get_object(Bucket=s3_bucket, Key=case_json)["Body"].read().decode()
        assert "sentinel node" in record and "MRN-004711" not in record and "Müller" not in record, record
        case = case_json.split("/")[-2]
        for key in listed:  # the order's identity stays at the hospital: in no object, whatever its kind
            body = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
            assert b"MRN-004711" not in body and "Müller".encode() not in body and "Lüdenscheidt".encode() not in body, key
        page = asyncio.run(Cases(S3Storage(s3_bucket, "alliance", s3_server.endpoint_url), TrustedKeys([])).case_info(case))
        assert "sentinel node" in json.dumps(page), page
        report = Report(case, 1, "malignant", "Metastatic carcinoma in the sentinel node.", Author("u00000001", "Dr Remote"),
                        utc_now(), "st-mary", slides=(SlideRead("s1", "v1"),))  # fmt: skip
        signed = report.to_json(centre)
        client.put_object(Bucket=s3_bucket, Key=f"alliance/{report_key(case, 1)}", Body=signed)
        client.put_object(Bucket=s3_bucket, Key=f"alliance/{notice_key('st-mary', report.signed_at, case, 'report', 1)}", Body=signed)
        while not lis.received:
            assert time.monotonic() < deadline and watching.poll() is None, watching.stderr.read() if watching.stderr else ""
            time.sleep(0.3)
        time.sleep(3)  # more polls: nothing is sent twice
    finally:
        watching.terminate()
        watching.wait(timeout=30)
    assert lis.invalid == [] and len(lis.received) == 1, lis.controls()
    pid = lis.received[0].oru_r01_patient_result.oru_r01_patient.pid
    assert (pid.pid_3.cx_1.value, pid.pid_5.xpn_1.to_er7()) == ("MRN-004711", "Müller-Lüdenscheidt")
    msh = lis.received[0].msh
    assert [msh.msh_4.to_er7(), msh.msh_5.to_er7(), msh.msh_6.to_er7()] == ["ST-MARY-OR", "LIS", "ST-MARY-LAB"]
    assert pid.pid_3.cx_4.to_er7() == "ST-MARY"
    assert order_observation(lis.received[0]).obr.obr_25.value == "F"
    outbox = sorted((hot / "outbox").iterdir())
    assert [path.suffix for path in outbox] == [".pdf", ".txt"], outbox
    assert outbox[0].read_bytes().startswith(b"%PDF")


def test_a_lis_outage_across_a_restart_of_watch_loses_and_duplicates_nothing(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    """The LIS is down when the report is delivered: the station's outbox gets the report, the HL7 message waits in
    the durable queue and the outage is said; watch stops and starts again (each run a process of its own) while the
    LIS comes back: the LIS gets the message once, and later runs send nothing more."""
    import subprocess
    import sys

    from caseformat.documents import SlideRead
    from caseformat.layout import report_key
    from caseformat.signing import public_pem

    centre, port = SigningKey.generate(), free_port()
    (tmp_path / "centre.pem").write_bytes(public_pem(centre.public))
    specimen = tmp_path / "hot" / "frozen-l"
    specimen.mkdir(parents=True)
    (specimen / "specimen.json").write_text(json.dumps({"patient_id": "MRN-0777", "patient_name": "Rossi, Anna", "accession": "S26-0777",
                                                        "clinical_question": "margin?"}))  # fmt: skip

    def watch_once() -> str:
        run = subprocess.run(
            [sys.executable, "-m", "slidestream", "watch", str(tmp_path / "hot"), f"s3://{s3_bucket}/alliance", "--endpoint-url",
             s3_server.endpoint_url, "--state-dir", str(tmp_path / "state"), "--station", "st-anne", "--no-edge", "--settle", "0.2",
             "--centre-keys", str(tmp_path / "centre.pem"), "--lis", f"mllp://127.0.0.1:{port}", "--once"],
            capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.returncode == 0 and "Traceback" not in run.stderr, run.stderr
        return run.stdout

    [case] = re.findall(r" REGISTERED frozen-l: case (\S+),", watch_once())
    report = Report(case, 1, "malignant", "Carcinoma at the margin.", Author("u00000001", "Dr Remote"), utc_now(), "st-anne",
                    slides=(SlideRead("s1", "v1"),))  # fmt: skip
    s3_server.client().put_object(Bucket=s3_bucket, Key=f"alliance/{report_key(case, 1)}", Body=report.to_json(centre))
    down = watch_once()
    assert "REPORT case frozen-l" in down and "stay queued" in down, down
    lis = ReportLIS(port)
    try:
        back = watch_once()
        again = watch_once()
    finally:
        lis.close()
    assert "REPORT case" not in back + again, back + again
    assert lis.invalid == [] and len(lis.received) == 1, lis.controls()
    assert lis.received[0].oru_r01_patient_result.oru_r01_patient.pid.pid_3.cx_1.value == "MRN-0777"
