"""The de-identification gate on a sidecar's clinical context (issue #25): text that names the patient in another form
than the registry holds (an identifier without its prefix, a birth date in another format, a name without its
accents) is refused; a clinical word that merely holds a piece of the name ("malignant" for ALI) passes; the refusal
says which field holds which identity without repeating it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from station.station import SpecimenError, check_context, read_sidecar

WHERE = "S26-004711/specimen.json"

BIRTH_DATE_FORMS = ("03/02/1961", "3.2.1961", "02/03/1961", "19610203", "03021961", "3 Feb 1961", "Feb 3, 1961",
                    "3rd February 1961", "03-FEB-61", "3/2/61", "february 3rd, 1961")  # fmt: skip
LEAKS = [  # (identity, context text, the identity the refusal names)
    # the issue's own: the MRN without its prefix, the birth date day-first
    ({"patient_id": "MRN7777123"}, "pt 7777123 born 03/02/1961", "patient ID"),
    ({"birth_date": "1961-02-03"}, "pt 7777123 born 03/02/1961", "birth date"),
    # identifiers with dashes, slashes, spaces, another case, without leading zeros
    ({"patient_id": "MRN-7777123"}, "MRN 777-7123, margins?", "patient ID"),
    ({"patient_id": "MRN-7777123"}, "mrn7777123", "patient ID"),
    ({"accession": "S26-004711"}, "see S26/4711", "accession number"),
    ({"accession": "S26-004711"}, "ref s26004711", "accession number"),
    ({"accession": "AB-CD-12"}, "re abcd 12", "accession number"),
    # the birth date in each common format, two-digit years too
    *(({"birth_date": "1961-02-03"}, f"born {written}", "birth date") for written in BIRTH_DATE_FORMS),
    # ... whatever format the sidecar holds it in
    ({"birth_date": "03.02.1961"}, "dob 1961-02-03", "birth date"),
    ({"birth_date": "02/13/1961"}, "dob 13 Feb 1961", "birth date"),
    ({"birth_date": "3 Feb 1961"}, "dob 1961/02/03", "birth date"),
    ({"birth_date": "Feb 3, 1961"}, "dob 03.02.61", "birth date"),
    ({"birth_date": "19610203"}, "DOB 3-2-1961", "birth date"),
    # names: accents either side, letters NFKD keeps whole, decomposed text, Mc and O' names, hyphenated, short parts
    ({"patient_name": "MÜLLER^ANNA"}, "Frau Muller, frozen section", "patient name"),
    ({"patient_name": "MULLER^ANNA"}, "Frau Müller, frozen section", "patient name"),
    ({"patient_name": "DUPRÉ^RENÉE"}, "Mme Dupre\u0301", "patient name"),
    ({"patient_name": "NGUYỄN^VĂN AN"}, "ông Nguyen", "patient name"),
    ({"patient_name": "SØRENSEN^ŁUKASZ"}, "Lukasz, 61", "patient name"),
    ({"patient_name": "GARCÍA-LÓPEZ^MARÍA"}, "Sra. Lopez", "patient name"),
    ({"patient_name": "O'BRIEN^SEAN"}, "Mr O’Brien", "patient name"),
    ({"patient_name": "O'BRIEN^SEAN"}, "Mr OBrien", "patient name"),
    ({"patient_name": "MCDONALD^ROSS"}, "Mr Mc Donald", "patient name"),
    ({"patient_name": "LI^NA"}, "Mrs Li, left breast", "patient name"),
]

CLINICAL = [  # (identity, context text): a piece of the name inside a word, an identifier inside a longer one, no date
    ({"patient_name": "HASSAN^ALI"}, "malignant?"),
    ({"patient_name": "TAN^WEI"}, "distant metastasis?"),
    ({"patient_name": "ROSS^IAN"}, "gross description, median lobe"),
    ({"patient_name": "PATEL^RAJ"}, "patellar tendon mass"),
    ({"patient_name": "LEE^ANN"}, "sleep apnoea; planned lobectomy"),
    ({"patient_name": "DEL RIO^ANA"}, "delayed frozen section, anaplastic?"),
    ({"patient_name": "VAN DER BERG^ANNA"}, "referred by Van Leeuwenhoek hospital"),
    ({"patient_id": "MRN-7777123"}, "lab ref MRN-77771234"),
    ({"accession": "S26-004711"}, "compare S26-0047112"),
    ({"birth_date": "unknown"}, "unknown primary?"),
]


def refusal(identity: dict[str, str], text: str) -> str | None:
    try:
        check_context((("surgeon", "Dr Meyer"), ("clinical_question", text)), identity, WHERE)
    except SpecimenError as error:
        return str(error)
    return None


@pytest.mark.parametrize(("identity", "text", "label"), LEAKS)
def test_context_naming_the_patient_in_another_form_is_refused(identity: dict[str, str], text: str, label: str) -> None:
    refused = refusal(identity, text)
    assert refused is not None, f"{text!r} passed for {identity}"
    assert refused.startswith(f"{WHERE}: clinical_question contains the {label} ("), refused


@pytest.mark.parametrize(("identity", "text"), CLINICAL)
def test_clinical_words_holding_a_piece_of_the_identity_pass(identity: dict[str, str], text: str) -> None:
    assert refusal(identity, text) is None


MASKED = [  # (identity, context text, what the refusal says of it)
    ({"patient_name": "HASSAN^ALI"}, "Mr Hassan: margins?", "the patient name (a name part, 'H…n')"),
    ({"patient_id": "MRN7777123", "birth_date": "1961-02-03"}, "pt 7777123 born 03/02/61", "the patient ID (its digits, '7…3')"),
    ({"birth_date": "1961-02-03"}, "born Feb 3, 1961", "the birth date (a date, 'F…1')"),
]


@pytest.mark.parametrize(("identity", "text", "said"), MASKED)
def test_the_refusal_names_the_fields_and_masks_what_matched(identity: dict[str, str], text: str, said: str) -> None:
    assert refusal(identity, text) == f"{WHERE}: clinical_question contains {said}; remove it from specimen.json and send again"


def test_read_sidecar_refuses_the_leak_in_one_line_and_keeps_clinical_words(tmp_path: Path) -> None:
    sidecar = tmp_path / "specimen.json"
    identity = {"accession": "S26-004711", "patient_name": "TAN^WEI", "patient_id": "MRN7777123", "birth_date": "1961-02-03"}
    sidecar.write_text(json.dumps({**identity, "clinical_question": "pt 7777123 born 03/02/1961"}))
    with pytest.raises(SpecimenError) as refused:
        read_sidecar(sidecar, "S26-004711")
    assert str(refused.value) == ("S26-004711/specimen.json: clinical_question contains the patient ID (its digits, '7…3'); "
                                  "remove it from specimen.json and send again")  # fmt: skip

    sidecar.write_text(json.dumps({**identity, "clinical_question": "distant metastasis?", "specimen_site": "left lung"}))
    info = read_sidecar(sidecar, "S26-004711")
    assert dict(info.context) == {"specimen_site": "left lung", "clinical_question": "distant metastasis?"}
    assert dict(info.identity) == identity
