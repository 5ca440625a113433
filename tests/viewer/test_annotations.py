"""Annotations through the viewer's API against the real S3 server: saved with the case under their author, seen by
whoever opens the case, made only by a signed-in pathologist, shapes checked, and every one in the audit log.

The same in a browser (drawn, seen by the station, after a reload): test_viewer_browser.py."""

from __future__ import annotations

import asyncio
import json

import pytest
from conftest import S3Server
from support.viewer import TRUSTED, Bucket, serving

from caseformat.documents import STATION, AuditEvent, CaseRecord
from caseformat.layout import CASE_RECORD, annotation_key, annotations_folder, case_key
from viewer import audit

CASE = "theatre-5.FS-2026-0077"
OTHER = "theatre-5.OTHER-1"  # sent, never registered
POLYGON = {"slide": "s1", "version": "v1", "kind": "polygon", "points": [[800, 2050], [1150, 2000], [1100, 2450]],
           "text": "another section from here"}  # fmt: skip


@pytest.fixture(scope="module")
def centre(s3_server: S3Server):  # type: ignore[no-untyped-def]
    bucket = Bucket(s3_server)
    bucket.put(case_key(CASE, CASE_RECORD), CaseRecord(CASE, "2026-12-01T21:00:00.000Z", "theatre-5").to_json())
    bucket.send(CASE)
    bucket.send(OTHER)
    with serving(bucket.storage()) as served:
        yield bucket, served


def stored(bucket: Bucket, case: str) -> list[dict]:  # type: ignore[type-arg]
    listed = bucket.client.list_objects_v2(Bucket=bucket.name, Prefix=f"{bucket.prefix}/{annotations_folder(case)}")
    return [json.loads(bucket.get(item["Key"].removeprefix(f"{bucket.prefix}/"))) for item in listed.get("Contents", [])]


def test_a_pathologist_saves_an_annotation_the_case_keeps_under_their_name(centre) -> None:  # type: ignore[no-untyped-def]
    bucket, served = centre
    pathologist = served.person(bucket.storage(), "Dr Ines Marker")
    saved = served.post(f"/api/cases/{CASE}/annotations", pathologist, json=POLYGON)
    assert saved.status_code == 200, saved.text
    (document,) = stored(bucket, CASE)
    assert document == saved.json()
    assert document["author"]["name"] == "Dr Ines Marker" and document["author"]["role"] == "pathologist"
    assert {key: document[key] for key in POLYGON} == POLYGON and document["case"] == CASE and document["created_at"]
    assert bucket.get(annotation_key(CASE, document["id"]))  # centre/{station}/CASE/annotations/{id}.json
    # whoever opens the case sees it: the pathologist, a case link, the station that registered the case
    station = served.person(bucket.storage(), "theatre-5", role=STATION, station="theatre-5")
    for token in (pathologist, served.token(CASE), station):
        assert served.get(f"/api/cases/{CASE}/annotations", token).json()["annotations"] == [document]
    # and the audit log says who annotated which slide version
    events = asyncio.run(audit.read(bucket.storage(), TRUSTED, CASE))
    (annotated,) = [event for event in events if isinstance(event, AuditEvent) and event.action == "annotate"]
    assert annotated.user is not None and annotated.user.name == "Dr Ines Marker" and (annotated.slide, annotated.version) == ("s1", "v1")


def test_only_a_signed_in_pathologist_annotates(centre) -> None:  # type: ignore[no-untyped-def]
    bucket, served = centre
    before = stored(bucket, OTHER)
    link = served.post(f"/api/cases/{OTHER}/annotations", served.token(OTHER), json=POLYGON)
    assert link.status_code == 403 and "a case link cannot annotate" in link.json()["detail"]
    station = served.person(bucket.storage(), "theatre-6", role=STATION, station="theatre-6")
    refused = served.post(f"/api/cases/{CASE}/annotations", station, json=POLYGON)
    assert refused.status_code == 403  # theatre-6 did not register the case
    assert stored(bucket, OTHER) == before


def test_shapes_and_slide_versions_are_checked(centre) -> None:  # type: ignore[no-untyped-def]
    bucket, served = centre
    pathologist = served.person(bucket.storage(), "Dr Careful")
    before = stored(bucket, OTHER)
    line = served.post(f"/api/cases/{OTHER}/annotations", pathologist, json={**POLYGON, "kind": "line"})
    assert line.status_code == 422 and "a line has 2 points, not 3" in line.text
    huge = served.post(f"/api/cases/{OTHER}/annotations", pathologist, json={**POLYGON, "text": "x" * 201})
    assert huge.status_code == 422
    nowhere = served.post(f"/api/cases/{OTHER}/annotations", pathologist, json={**POLYGON, "slide": "s2"})
    assert nowhere.status_code == 404 and "no image" in nowhere.json()["detail"]
    assert stored(bucket, OTHER) == before
