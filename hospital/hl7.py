"""HL7 v2 between the station and the hospital's laboratory information system (LIS): the signed report goes out as
an ORU^R01 (v2.5.1), orders come in as OML^O21 or ORM^O01, and every message is answered by an ACK.

The report (`report_message`), one message per signed report or amendment:
- MSH-10, the message control ID, is derived from (case, report number) (`control_id`): a resend of the same report is
  recognisably the same message, and the outbox (`hospital.mllp.Outbox`) keeps one message per control ID.
- PID: the patient as the station's registry holds them (`Patient`); OBR-2 the hospital's accession (the placer
  order), OBR-3 the case ID (the filler order), OBR-25 and each OBX-11 the result status (`result_status`): P for a
  deferred report (the answer is still to come), F for the first final one, C for one that corrects a final report.
- OBX: the category as a coded value (CWE, local code system), then the diagnosis, margins and comment as text (TX),
  one OBX per display line of at most LINE_WIDTH characters. OBX-4 numbers them "paragraph.line": a line of the
  signed text is one paragraph, and its pieces keep their spaces, so joining a paragraph's lines gives the line back
  exactly (hl7apy reads an OBX-5 as ST, 199 characters; a receiver can show each OBX as it comes).
Text is escaped here (`escape`: \\E\\ \\F\\ \\S\\ \\T\\ \\R\\), not by hl7apy, whose escaping reads a literal "\\F\\" in
the text as a field separator; control characters other than line breaks are shown as `slides.errors.printable` does.
Each message is validated with hl7apy at its STRICT level before it is returned.

Orders (`parse_order`): the order is read after hl7apy has found its structure (a message of another type or an
unknown version is refused: AR). Where each field comes from, for both message types:
- identity: PID-3 (the first identifier of type MR, else the first), PID-5 (family^given), PID-7, PID-8;
- placer order number (the hospital's accession): ORC-2, else OBR-2;
- clinical question: OBR-13 "relevant clinical information", else the text of NTE segments after the OBR;
- specimen site and type: SPM-8 and SPM-4 (OML^O21, v2.5+), else OBR-15 "specimen source" (SPS: body site in its
  4th component, source in its 1st), the form older LIS use in ORM^O01;
- surgeon: ORC-12, else OBR-16 (ordering provider).
A message without a patient ID or a placer order number is answered AE, as is one the handler refuses.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message
from hl7apy.exceptions import HL7apyException, MaxLengthReached
from hl7apy.parser import parse_message

from caseformat.bounded import parse_time
from caseformat.documents import CONTEXT_LIMIT, Report
from slides import SlidestreamError
from slides.errors import one_line, printable

HL7_VERSION = "2.5.1"
CHARACTER_SET = "UNICODE UTF-8"  # MSH-18: every message this station writes is UTF-8
SUPPORTED_VERSIONS = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2")
ORDER_TYPES = ("OML^O21", "ORM^O01")
LINE_WIDTH = 80  # characters of report text per OBX: a line as an LIS screen shows it
VALUE_LIMIT = 199  # escaped characters per OBX-5: hl7apy's strict reading of a "varies" value (ST)
ACK_TEXT_LIMIT = 80  # MSA-3
CODE_SYSTEM = "L"  # HL7 table 0396: a local coding system
REPORT_SERVICE = "11526-1^Pathology study^LN"  # OBR-4, LOINC
CATEGORY_CODE = "CATEGORY^Intraoperative diagnosis category^L"
TEXT_CODES = {"diagnosis": "22637-3^Pathology report final diagnosis^LN", "margins": "MARGINS^Surgical margins^L",
              "comment": "COMMENT^Pathologist comment^L"}  # fmt: skip
SEXES = ("F", "M", "O", "U", "A", "N")  # HL7 table 0001
FINAL, CORRECTED, PRELIMINARY = "F", "C", "P"
NOT_FINAL = ("deferred",)  # a deferred report says the answer is still to come
ACCEPT, ERROR, REJECT = "AA", "AE", "AR"
# HL7 table 0357 (ERR-3): why a message was not accepted
REQUIRED_FIELD_MISSING, DATA_TYPE_ERROR, APPLICATION_ERROR = "101", "102", "207"
UNSUPPORTED_MESSAGE_TYPE, UNSUPPORTED_VERSION = "200", "203"
_DEFAULT_SEPARATORS = ("|", "^", "~", "\\", "&")
_LINE_BREAKS = re.compile(r"\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


class HL7Error(SlidestreamError, ValueError):
    """A message that cannot be built or read; the message says why, in one line."""


class OrderError(HL7Error):
    """An order that cannot be accepted: `code` is the ACK's (AE or AR), `reason` the HL7 error code (table 0357)."""

    def __init__(self, text: str, code: str = ERROR, reason: str = REQUIRED_FIELD_MISSING) -> None:
        super().__init__(text)
        self.code, self.reason = code, reason


@dataclass(frozen=True)
class Routing:
    """Who sends and who receives (MSH-3 to MSH-6), whose patient IDs these are (PID-3's assigning authority) and the
    processing ID (MSH-11: P production, T training, D debugging): the hospital's interface team names them."""

    sending_application: str = "SLIDESTREAM"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    id_authority: str = ""
    processing_id: str = "P"


@dataclass(frozen=True)
class Patient:
    """The patient as the station's registry knows them (`from_identity`, the registry's `identity` column)."""

    patient_id: str
    family_name: str = ""
    given_name: str = ""
    birth_date: date | None = None
    sex: str | None = None  # HL7 table 0001
    accession: str | None = None  # the hospital's accession: the placer order number

    def __post_init__(self) -> None:
        if not self.patient_id.strip():
            raise HL7Error("patient: no patient ID, which an HL7 message needs (PID-3)")
        if self.sex is not None and self.sex not in SEXES:
            raise HL7Error(f"patient: the sex is not one of {', '.join(SEXES)} (HL7 table 0001)")

    @classmethod
    def from_identity(cls, identity: Mapping[str, str]) -> Patient:
        """From the registry's identity fields (patient_id, patient_name, birth_date, accession, and sex where known).
        A name "Family, Given" is split at its comma; any other name is the family name as written."""
        name = identity.get("patient_name", "").strip()
        family, _, given = name.partition(",") if "," in name else (name, "", "")
        birth = identity.get("birth_date", "").strip()
        return cls(identity.get("patient_id", "").strip(), family.strip(), given.strip(), parse_birth_date(birth) if birth else None,
                   identity.get("sex", "").strip().upper() or None, identity.get("accession", "").strip() or None)  # fmt: skip

    def to_identity(self) -> dict[str, str]:
        """The registry's identity fields for a specimen an order registers (what `from_identity` reads back)."""
        name = f"{self.family_name}, {self.given_name}" if self.given_name else self.family_name
        fields = {"accession": self.accession, "patient_name": name, "patient_id": self.patient_id,
                  "birth_date": self.birth_date.isoformat() if self.birth_date else None, "sex": self.sex}  # fmt: skip
        return {key: value for key, value in fields.items() if value}


def parse_birth_date(text: str) -> date:
    """YYYY-MM-DD (the registry) or YYYYMMDD (HL7); anything else is refused rather than guessed (the refusal does
    not repeat it: a log line names no patient)."""
    try:
        return date.fromisoformat(text[:10] if "-" in text else f"{text[:4]}-{text[4:6]}-{text[6:8]}")
    except ValueError:
        raise HL7Error("patient: the birth date is not a date (YYYY-MM-DD or YYYYMMDD)") from None


def control_id(case: str, number: int) -> str:
    """MSH-10 of the message carrying report `number` of `case`: the same for every build of it (20 characters, the
    limit of v2.5.1's ST), so the outbox and the LIS both see a resend as the message they already have."""
    return "SS" + hashlib.sha256(f"{case}/{number}".encode()).hexdigest()[:18].upper()


def result_status(report: Report, corrects_final: bool | None = None) -> str:
    """OBR-25/OBX-11: C where the report corrects a final one sent before (`corrects_final`; by default, any
    amendment), else P for a deferred report and F for a final one."""
    if corrects_final if corrects_final is not None else report.number > 1:
        return CORRECTED
    return PRELIMINARY if report.category in NOT_FINAL else FINAL


def escape(text: str) -> str:
    """`text` as one HL7 value: the escape character first, then the delimiters; line breaks are the caller's."""
    text = printable(text.expandtabs(4))
    for char, sequence in (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\")):
        text = text.replace(char, sequence)
    return text


def unescape(value: str, escape_char: str = "\\", separators: tuple[str, ...] = _DEFAULT_SEPARATORS) -> str:
    """An HL7 value as text: the delimiter sequences, hexadecimal data (\\Xhh\\) and line breaks (\\.br\\) decoded;
    highlighting and other formatting sequences dropped."""
    field, component, repetition, escape_, subcomponent = separators
    plain = {"F": field, "S": component, "R": repetition, "E": escape_, "T": subcomponent, ".br": "\n", "H": "", "N": ""}
    mark = re.escape(escape_char)

    def decode(match: re.Match[str]) -> str:
        sequence = match.group(1)
        if sequence in plain:
            return plain[sequence]
        if sequence[:1] == "X" and re.fullmatch(r"(?:[0-9A-Fa-f]{2})+", sequence[1:]):
            return bytes.fromhex(sequence[1:]).decode("utf-8", "replace")
        return ""

    return re.sub(f"{mark}([^{mark}]*){mark}", decode, value)


def _hl7_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def _text_lines(text: str) -> list[tuple[str, str]]:
    """(OBX-4 "paragraph.line", escaped OBX-5) of a text: each line of it a paragraph, cut into display lines of at
    most LINE_WIDTH characters (after a space where one falls within it, the space kept) and VALUE_LIMIT escaped."""
    lines = []
    for paragraph, line in enumerate(_LINE_BREAKS.split(text), start=1):
        pieces = [escape(char) for char in line]
        start, part = 0, 1
        while True:
            end, width = start, 0
            while end < len(pieces) and end - start < LINE_WIDTH and width + len(pieces[end]) <= VALUE_LIMIT:
                width += len(pieces[end])
                end += 1
            if end < len(pieces) and (space := line.rfind(" ", start, end)) > start:
                end = space + 1
            lines.append((f"{paragraph}.{part}", "".join(pieces[start:end])))
            start, part = end, part + 1
            if start >= len(pieces):
                break
    return lines


def report_message(report: Report, patient: Patient, routing: Routing, *, corrects_final: bool | None = None,
                   created: datetime | None = None) -> str:  # fmt: skip
    """The ORU^R01 of a verified report (or amendment) for `patient`, as ER7 text (segments ended by CR), validated
    strictly by hl7apy; `HL7Error` where it cannot be (a field the standard does not allow)."""
    status = result_status(report, corrects_final)
    signed = _hl7_time(parse_time(report.signed_at))
    message = Message("ORU_R01", version=HL7_VERSION, validation_level=VALIDATION_LEVEL.TOLERANT)
    try:
        _header(message, routing, "ORU^R01^ORU_R01", control_id(report.case, report.number), created)
        result = message.add_group("ORU_R01_PATIENT_RESULT")
        pid = result.add_group("ORU_R01_PATIENT").pid
        pid.pid_1 = "1"
        pid.pid_3 = f"{escape(patient.patient_id)}^^^{escape(routing.id_authority)}^MR"
        if patient.family_name or patient.given_name:
            pid.pid_5 = f"{escape(patient.family_name)}^{escape(patient.given_name)}"
        if patient.birth_date:
            pid.pid_7 = patient.birth_date.strftime("%Y%m%d")
        if patient.sex:
            pid.pid_8 = patient.sex
        order = result.add_group("ORU_R01_ORDER_OBSERVATION")
        obr = order.obr
        obr.obr_1 = "1"
        if patient.accession:
            obr.obr_2 = escape(patient.accession)
        obr.obr_3 = f"{escape(report.case)}^{escape(routing.sending_application)}"
        obr.obr_4 = REPORT_SERVICE
        obr.obr_22 = signed
        obr.obr_25 = status
        obr.obr_32 = f"{escape(report.author.id)}&{escape(report.author.name)}"
        if report.amends:
            note = order.add_segment("NTE")
            note.nte_1 = "1"
            note.nte_3 = f"Amendment {report.number}: replaces report {report.amends} of this case"
        observations = [("CWE", CATEGORY_CODE, "", f"{report.category}^{report.category.capitalize()}^{CODE_SYSTEM}")]
        for name in ("diagnosis", "margins", "comment"):
            text = getattr(report, name)
            observations += [("TX", TEXT_CODES[name], sub_id, line) for sub_id, line in _text_lines(text)] if text else []
        for number, (kind, code, sub_id, value) in enumerate(observations, start=1):
            obx = order.add_group("ORU_R01_OBSERVATION").obx
            obx.obx_1 = str(number)
            obx.obx_2 = kind
            obx.obx_3 = code
            if sub_id:
                obx.obx_4 = sub_id
            if value:
                obx.obx_5 = value
            obx.obx_11 = status
            obx.obx_14 = signed
        text = str(message.to_er7())
        parse_message(text, validation_level=VALIDATION_LEVEL.STRICT).validate()
    except HL7apyException as error:  # hl7apy's text of a value too long repeats the value: it may be the patient's name
        reason = "a value longer than its HL7 field allows" if isinstance(error, MaxLengthReached) else str(error)
        raise HL7Error(printable(f"report {report.number} of case {report.case}: not a valid HL7 message: {reason}")) from None
    return text


def _header(message: Message, routing: Routing, message_type: str, control: str, created: datetime | None) -> None:
    msh = message.msh
    msh.msh_3 = escape(routing.sending_application)
    msh.msh_4 = escape(routing.sending_facility)
    msh.msh_5 = escape(routing.receiving_application)
    msh.msh_6 = escape(routing.receiving_facility)
    msh.msh_7 = _hl7_time(created or datetime.now(UTC))
    msh.msh_9 = message_type
    msh.msh_10 = control
    msh.msh_11 = routing.processing_id
    msh.msh_18 = CHARACTER_SET


# -- reading messages -------------------------------------------------------------------------------------------
class Segments:
    """The segments of an ER7 message, split by its own delimiters (MSH-1, MSH-2); fields read as text."""

    def __init__(self, text: str) -> None:
        text = text.strip("\r\n\x0b\x1c")
        if not text.startswith("MSH") or len(text) < 8:
            raise OrderError("not an HL7 message: it does not start with an MSH segment", REJECT, UNSUPPORTED_MESSAGE_TYPE)
        field, encoding = text[3], text[4:8].split(text[3])[0]
        if len(encoding) < 4 or field in encoding:
            raise OrderError("not an HL7 message: MSH-2 does not name four delimiters", REJECT, UNSUPPORTED_MESSAGE_TYPE)
        self.separators = (field, encoding[0], encoding[1], encoding[2], encoding[3])
        self.segments = [line.split(field) for line in re.split(r"\r\n|\r|\n", text) if line]
        self.segments[0].insert(1, field)  # MSH-1 is the field separator itself: MSH-n is then at index n

    def all(self, name: str) -> list[list[str]]:
        return [segment for segment in self.segments if segment[0] == name]

    def raw(self, name: str, number: int) -> str:
        """Field `number` of the first `name` segment, raw ER7."""
        segment = next((segment for segment in self.segments if segment[0] == name), None)
        return segment[number] if segment is not None and number < len(segment) else ""

    def after(self, name: str) -> list[list[str]]:
        """The segments after the first `name` segment."""
        start = next((index for index, segment in enumerate(self.segments) if segment[0] == name), len(self.segments))
        return self.segments[start + 1:]

    def er7(self) -> str:
        """The message with CR between its segments, as hl7apy reads it."""
        return "\r".join(self.separators[0].join(segment[:1] + segment[2:] if segment[0] == "MSH" else segment) for segment in self.segments)

    def component(self, raw: str, number: int = 1, subcomponent: int = 0) -> str:
        """Component `number` (and its `subcomponent`, when given) of the first repetition of `raw`, unescaped."""
        _, component, repetition, escape_char, sub = self.separators
        parts = raw.split(repetition)[0].split(component)
        value = parts[number - 1] if number <= len(parts) else ""
        if subcomponent:
            pieces = value.split(sub)
            value = pieces[subcomponent - 1] if subcomponent <= len(pieces) else ""
        return unescape(value, escape_char, self.separators).strip()

    def field(self, name: str, number: int, component: int = 1, subcomponent: int = 0) -> str:
        return self.component(self.raw(name, number), component, subcomponent)


@dataclass(frozen=True)
class Order:
    """What an order tells the station: whose specimen (identity, kept in the registry) and what for (context)."""

    control_id: str
    message_type: str
    patient: Patient
    placer_order: str
    clinical_question: str | None = None
    specimen_site: str | None = None
    specimen_type: str | None = None
    surgeon: str | None = None

    def context(self) -> dict[str, str]:
        """The case's context fields (caseformat.documents.CONTEXT_FIELDS) the order fills, each cut to what case.json
        holds (CONTEXT_LIMIT); the identity gate (station.station.check_context) still decides whether they may
        leave the hospital."""
        fields = {"clinical_question": self.clinical_question, "specimen_site": self.specimen_site,
                  "specimen_type": self.specimen_type, "surgeon": self.surgeon}  # fmt: skip
        return {key: value[:CONTEXT_LIMIT] for key, value in fields.items() if value}


def parse_order(text: str) -> Order:
    """An OML^O21 or ORM^O01 read into an `Order`; `OrderError` (with the ACK code it earns) where it cannot be."""
    segments = Segments(text)
    message_type = "^".join(segments.field("MSH", 9, part) for part in (1, 2))
    version = segments.field("MSH", 12)
    if message_type not in ORDER_TYPES:
        raise OrderError(f"message type {message_type or '(none)'} is not an order this station takes ({', '.join(ORDER_TYPES)})",
                         REJECT, UNSUPPORTED_MESSAGE_TYPE)  # fmt: skip
    if version not in SUPPORTED_VERSIONS:
        raise OrderError(f"HL7 version {version or '(none)'} is not supported", REJECT, UNSUPPORTED_VERSION)
    try:
        parse_message(segments.er7(), validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=True)
    except (HL7apyException, ValueError) as error:
        raise OrderError(f"not a readable {message_type}: {one_line(error)}", REJECT, UNSUPPORTED_MESSAGE_TYPE) from None
    identifiers = [(segments.component(cx), segments.component(cx, 5)) for cx in segments.raw("PID", 3).split(segments.separators[2])]
    patient_id = next((value for value, kind in identifiers if kind == "MR" and value), identifiers[0][0])
    placer = segments.field("ORC", 2) or segments.field("OBR", 2)
    if not patient_id:
        raise OrderError(f"{message_type} {segments.field('MSH', 10)}: no patient ID (PID-3)")
    if not placer:
        raise OrderError(f"{message_type} {segments.field('MSH', 10)}: no placer order number (ORC-2 or OBR-2)")
    birth, sex = segments.field("PID", 7), segments.field("PID", 8).upper()
    try:
        patient = Patient(patient_id, segments.field("PID", 5, 1), segments.field("PID", 5, 2), parse_birth_date(birth[:8]) if birth else None,
                          sex or None, placer)  # fmt: skip
    except HL7Error as error:
        raise OrderError(f"{message_type} {segments.field('MSH', 10)}: {error}", ERROR, DATA_TYPE_ERROR) from None
    notes = " ".join(segments.component(note[3]) for note in segments.after("OBR") if note[0] == "NTE" and len(note) > 3)
    site = segments.field("SPM", 8, 2) or segments.field("SPM", 8, 1) or segments.field("OBR", 15, 4, 2) or segments.field("OBR", 15, 4, 1)
    kind = segments.field("SPM", 4, 2) or segments.field("SPM", 4, 1) or segments.field("OBR", 15, 1, 2) or segments.field("OBR", 15, 1, 1)
    surgeon = _person(segments, segments.raw("ORC", 12)) or _person(segments, segments.raw("OBR", 16))
    return Order(segments.field("MSH", 10), message_type, patient, placer, segments.field("OBR", 13) or notes.strip() or None,
                 site or None, kind or None, surgeon or None)  # fmt: skip


def _person(segments: Segments, raw: str) -> str:
    """An XCN (ID^family^given^...) as "given family"."""
    return " ".join(part for part in (segments.component(raw, 3), segments.component(raw, 2)) if part)


# -- acknowledgements -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Acknowledgement:
    """An ACK as the sender reads it: its code (AA, AE, AR; CA, CE, CR in enhanced mode), the control ID it answers
    and the receiver's reason, where it gave one."""

    code: str
    control_id: str
    reason: str

    @classmethod
    def read(cls, text: str) -> Acknowledgement:
        segments = Segments(text)
        if not segments.all("MSA"):
            raise HL7Error("the reply is not an acknowledgement: no MSA segment")
        reason = segments.field("ERR", 8) or segments.field("MSA", 3) or segments.field("ERR", 3, 2)
        return cls(segments.field("MSA", 1).upper(), segments.field("MSA", 2), printable(reason))


def acknowledgement(text: str, code: str, reason: str, routing: Routing, error_code: str = "") -> str:
    """The ACK (`code`: AA, AE or AR) answering the message `text`, in its HL7 version where hl7apy knows it, with
    `reason` in MSA-3 (its first 80 characters) and ERR (v2.5 on: code and the whole line)."""
    try:
        segments: Segments | None = Segments(text)
    except OrderError:
        segments = None
    version = segments.field("MSH", 12) if segments else ""
    version = version if version in SUPPORTED_VERSIONS else HL7_VERSION
    trigger = segments.field("MSH", 9, 2) if segments else ""
    answered = segments.field("MSH", 10) if segments else ""
    sender = Routing(routing.sending_application, routing.sending_facility,
                     segments.field("MSH", 3) if segments else "", segments.field("MSH", 4) if segments else "",
                     processing_id=(segments.field("MSH", 11) if segments else "") or routing.processing_id)  # fmt: skip
    message = Message("ACK", version=version, validation_level=VALIDATION_LEVEL.TOLERANT)
    reason = printable(reason)
    message_type = "ACK" if not trigger else f"ACK^{escape(trigger)}^ACK" if _at_least(version, "2.4") else f"ACK^{escape(trigger)}"
    _header(message, sender, message_type, "ACK" + hashlib.sha256(f"{answered}/{code}".encode()).hexdigest()[:17].upper(), None)
    message.msa.msa_1 = code
    message.msa.msa_2 = escape(answered) or "UNKNOWN"
    if reason:
        message.msa.msa_3 = escape(reason[:ACK_TEXT_LIMIT])
    if code != ACCEPT and _at_least(version, "2.5"):
        err = message.add_segment("ERR")
        err.err_3 = f"{error_code or APPLICATION_ERROR}^^HL70357"
        err.err_4 = "E"
        err.err_8 = escape(reason)
    return str(message.to_er7())


def _at_least(version: str, earliest: str) -> bool:
    return tuple(map(int, version.split("."))) >= tuple(map(int, earliest.split(".")))


def answer_order(text: str, handler: Callable[[Order], None], routing: Routing) -> tuple[str, str]:
    """Reads `text` as an order, has `handler` register it and returns (the ACK, one printable line saying what
    happened). A handler that raises earns an AE with its one-line error; the caller keeps serving."""
    try:
        order = parse_order(text)
    except OrderError as error:
        return acknowledgement(text, error.code, str(error), routing, error.reason), printable(f"ORDER {error.code}: {error}")
    try:
        handler(order)
    except Exception as error:  # the registry, a gate, a full disk: the LIS is told, the listener goes on
        line = f"{order.message_type} {order.control_id}: not registered: {one_line(error)}"
        return acknowledgement(text, ERROR, line, routing, APPLICATION_ERROR), printable(f"ORDER {ERROR}: {line}")
    line = f"ORDER {ACCEPT}: {order.message_type} {order.control_id} placer order {order.placer_order}"
    return acknowledgement(text, ACCEPT, "", routing), printable(line)
