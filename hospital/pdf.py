"""The signed report as a PDF: what the hospital's record shows (FHIR `DiagnosticReport.presentedForm`) and what the
operating room's outbox holds, so both read the same page.

`report_pdf(report, patient)` lays out one page (two where the text is long): the patient as the station's registry
holds them, the case, the category, diagnosis, margins and comment, and who signed it when; an amendment says
"Amendment N, replaces report N-1" above everything else. The bytes are the same for the same input on one machine
(reportlab's invariant mode: no creation date, a fixed document ID), so a rebuilt PDF hashes the same.

Text from the report is escaped before reportlab reads it as markup: a diagnosis containing "<b>" is printed as
written, never obeyed. Control characters are shown as `slides.errors.printable` does; line breaks are kept.
The font is DejaVu Sans where the system has it (Debian's fonts-dejavu-core: Latin, Greek and Cyrillic names), else
the Bitstream Vera that reportlab ships (Latin-1); a character the font lacks prints as an empty box, while the
HL7 and FHIR messages carry the text exactly.
"""

from __future__ import annotations

import io
import re
from datetime import UTC
from functools import cache
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import reportlab
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.platypus import Flowable, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from caseformat.bounded import parse_time
from caseformat.documents import Report
from hospital.hl7 import Patient
from slides import SlidestreamError
from slides.errors import printable

FONT, BOLD_FONT = "SlidestreamSans", "SlidestreamSans-Bold"
_FONT_FILES = ((Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"), Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")),
               (Path(reportlab.__file__).parent / "fonts" / "Vera.ttf", Path(reportlab.__file__).parent / "fonts" / "VeraBd.ttf"))  # fmt: skip
TITLE = "Intraoperative pathology report"
SEXES = {"F": "female", "M": "male", "O": "other", "U": "unknown", "A": "ambiguous", "N": "not applicable"}  # HL7 table 0001
_LINE_BREAKS = re.compile(r"\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


class PDFError(SlidestreamError, ValueError):
    """A report that cannot be rendered; the message names the report, never the patient."""


@cache
def _fonts() -> tuple[str, str]:
    """Registers the first font pair the system has (once per process) and returns their names."""
    for regular, bold in _FONT_FILES:
        if regular.is_file() and bold.is_file():
            pdfmetrics.registerFont(TTFont(FONT, str(regular)))
            pdfmetrics.registerFont(TTFont(BOLD_FONT, str(bold)))
            return FONT, BOLD_FONT
    raise PDFError("report PDF: no font found (neither DejaVu Sans nor reportlab's Vera)")


def markup(text: str) -> str:
    """`text` as reportlab Paragraph markup that prints it as written: &, < and > escaped, control characters made
    visible, each line break a <br/>."""
    return "<br/>".join(escape(printable(line.expandtabs(4))) for line in _LINE_BREAKS.split(text))


def _styles() -> dict[str, ParagraphStyle]:
    regular, bold = _fonts()
    body = ParagraphStyle("body", fontName=regular, fontSize=10.5, leading=14)
    return {"body": body, "label": ParagraphStyle("label", body, fontName=bold, fontSize=9, textColor=colors.HexColor("#444444")),
            "title": ParagraphStyle("title", body, fontName=bold, fontSize=16, leading=20, spaceAfter=4 * mm),
            "heading": ParagraphStyle("heading", body, fontName=bold, fontSize=11.5, spaceBefore=4 * mm, spaceAfter=1 * mm),
            "category": ParagraphStyle("category", body, fontName=bold, fontSize=14, leading=18, spaceBefore=3 * mm),
            "amendment": ParagraphStyle("amendment", body, fontName=bold, fontSize=14, leading=18, textColor=colors.white,
                                        backColor=colors.HexColor("#b00020"), borderPadding=(2 * mm, 3 * mm), spaceAfter=5 * mm)}  # fmt: skip


def _details(rows: list[tuple[str, str]], styles: dict[str, ParagraphStyle]) -> Table:
    table = Table([[Paragraph(markup(label), styles["label"]), Paragraph(markup(value), styles["body"])] for label, value in rows],
                  colWidths=(38 * mm, None), hAlign="LEFT")  # fmt: skip
    table.setStyle(TableStyle([("VALIGN", (0, 0), (-1, -1), "TOP"), ("LINEBELOW", (0, 0), (-1, -1), 0.25, colors.lightgrey),
                               ("LEFTPADDING", (0, 0), (-1, -1), 0), ("TOPPADDING", (0, 0), (-1, -1), 1.5)]))  # fmt: skip
    return table


def _when(text: str) -> str:
    return parse_time(text).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def report_pdf(report: Report, patient: Patient) -> bytes:
    """The PDF of a verified report (or amendment) for `patient` (see the module's docstring)."""
    styles = _styles()
    name = f"{patient.family_name}, {patient.given_name}" if patient.given_name else patient.family_name
    story: list[Flowable] = []
    if report.amends:
        story.append(Paragraph(f"Amendment {report.number}, replaces report {report.amends}", styles["amendment"]))
    story += [Paragraph(TITLE, styles["title"]),
              _details([("Patient", name or "(no name)"), ("Patient ID", patient.patient_id),
                        ("Birth date", patient.birth_date.isoformat() if patient.birth_date else "(not known)"),
                        *([("Sex", SEXES[patient.sex])] if patient.sex else []),
                        *([("Accession", patient.accession)] if patient.accession else []),
                        ("Case", report.case), ("Report", f"{report.number} ({report.kind})")], styles),
              Paragraph(f"Category: {markup(report.category.upper())}", styles["category"]),
              Paragraph("Diagnosis", styles["heading"]), Paragraph(markup(report.diagnosis), styles["body"])]  # fmt: skip
    for heading, text in (("Margins", report.margins), ("Comment", report.comment), ("Missing when signed", report.missing)):
        if text:
            story += [Paragraph(heading, styles["heading"]), Paragraph(markup(text), styles["body"])]
    story += [Spacer(1, 6 * mm), _details([("Signed by", f"{report.author.name} ({report.author.id})"),
                                           ("Signed at", _when(report.signed_at))], styles)]  # fmt: skip

    def footer(canvas: Any, document: Any) -> None:
        canvas.saveState()
        canvas.setFont(styles["body"].fontName, 8)
        canvas.drawString(document.leftMargin, 10 * mm, printable(f"Case {report.case}, report {report.number}: confidential, names a patient"))
        canvas.drawRightString(A4[0] - document.rightMargin, 10 * mm, f"page {canvas.getPageNumber()}")
        canvas.restoreState()

    output = io.BytesIO()
    # the metadata names the case, never the patient: file indexers and viewers show it without opening the page
    document = SimpleDocTemplate(output, pagesize=A4, leftMargin=18 * mm, rightMargin=18 * mm, topMargin=16 * mm, bottomMargin=18 * mm,
                                 title=f"Pathology report {report.case} #{report.number}", author=report.author.name,
                                 creator="slidestream", invariant=1)  # fmt: skip
    document.build(story, onFirstPage=footer, onLaterPages=footer)
    return output.getvalue()
