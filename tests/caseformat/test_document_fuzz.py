"""Every document a station (or anyone with the store's credential) can write, mutated thousands of ways and read by
the one parser every reader uses: each mutation is either read back as a well-formed document that serialises to
what was read, or refused with a `DocumentError`, never another exception, and never more than a bounded amount of
memory. Figures (documents tried, outcomes, the slowest read and the largest allocation) are printed for the README.
"""

from __future__ import annotations

import json
import random
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from caseformat.bounded import utc_now
from caseformat.documents import Annotation, AuditEvent, Author, CaseRecord, Person, Report, Request, SlideClaim, SlideRead
from caseformat.errors import DocumentError
from caseformat.results import Lease, Manifest, PyramidRecord, Triage
from caseformat.signing import SigningKey, TrustedKeys

KEY = SigningKey.generate()
TRUSTED = TrustedKeys([KEY.public])
MEMORY_LIMIT = 32 * 2**20  # bytes any one read may allocate at its peak, whatever the document claims
NOW = utc_now()
DOCTOR = Author("u0123abcd", "Dr Ana Ruiz", "pathologist")
CASE = "theatre-3.S24_7"
HOSTILE_VALUES: list[Any] = [
    None, True, 0, -1, 2**64, 1e308, 0.5, "", "x" * 25_000, "\x1b[2K\nREPORT benign", "../../etc", "a/b", "a//b",
    "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "2026-13-45T99:99:99Z", "\ud800", "\u202e", [], [0] * 10_000,
    {}, {"a": {"b": {"c": {}}}}, [[[[[[[[[[[[[[1]]]]]]]]]]]]]],
]  # fmt: skip


def _signed(document: Any) -> Callable[[bytes], Any]:
    return lambda data: document.read(data, "doc", TRUSTED)


# name: (genuine document as JSON, how it is read, whether the centre signs it)
DOCUMENTS: dict[str, tuple[dict[str, Any], Callable[[bytes], Any], bool]] = {
    "case.json": (json.loads(CaseRecord(CASE, NOW, "theatre-3", (("clinical_question", "margin?"),)).to_json()), CaseRecord.read, False),
    "slide.json": (json.loads(SlideClaim(CASE, "s1", "theatre-3", NOW).to_json()), SlideClaim.read, False),
    "manifest.json": (json.loads(Manifest(CASE, "s1", "v1", NOW, planned=("0/c/0/0/0",), arrived=("0/c/0/0/0",)).to_json()), Manifest.read, False),
    "triage.json": (json.loads(Triage("image", 0.4, "capricorn0.1", "hub", True, {"tiles_scored": 3, "tissue_tiles": 3,
                    "model_sha256": "ab" * 32, "detects": "colorectal adenocarcinoma epithelium", "top_regions": [{"x": 1, "y": 2, "width": 224, "height": 224, "score": 0.9}]}).to_json()), Triage.read, False),
    "hub.lease": (json.loads(Lease("hub-1", 1.9e9).to_json()), Lease.read, False),
    "pyramid.json": (json.loads(PyramidRecord(NOW, True, ("1/c/0/0/0",)).to_json()), PyramidRecord.read, False),
    "report": (json.loads(Report(CASE, 1, "malignant", "carcinoma", DOCTOR, NOW, "theatre-3", slides=(SlideRead("s1", "v1"),)).to_json(KEY)), _signed(Report), True),
    "request": (json.loads(Request(CASE, 1, "deeper level", DOCTOR, NOW, "theatre-3", "s1").to_json(KEY)), _signed(Request), True),
    "person": (json.loads(Person("u0123abcd", "Dr Ana Ruiz", "pathologist", NOW).to_json(KEY)), _signed(Person), True),
    "audit": (json.loads(AuditEvent(NOW, "sign", CASE, DOCTOR, report=1).to_json(KEY)), _signed(AuditEvent), True),
    "annotation": (json.loads(Annotation("20261205T173001123Z-0a1b2c3d", CASE, "s1", "v1", "line", ((1.0, 2.0), (3.0, 4.0)),
                                         DOCTOR, NOW, "here").to_json(KEY)), _signed(Annotation), True),
}  # fmt: skip


def mutations(genuine: dict[str, Any], signed: bool, rng: random.Random) -> Iterator[bytes]:
    """The document with each field removed or replaced by each hostile value (nested objects too, one level), then
    whole-document damage: other JSON types, truncation, bad bytes, padding, depth, duplicate keys, NaN."""
    def encode(document: Any) -> bytes:
        if signed and isinstance(document, dict):  # signed again: the parse behind the signature is what is tried
            try:
                document = KEY.sign(document)
            except UnicodeEncodeError:  # a lone surrogate cannot be signed: a forger can only plant it unsigned
                pass
        return json.dumps(document).encode()

    body = {name: value for name, value in genuine.items() if name != "signature"}
    for name, value in body.items():
        yield encode({k: v for k, v in body.items() if k != name})
        for hostile in HOSTILE_VALUES:
            yield encode({**body, name: hostile})
        if isinstance(value, dict):
            for inner in value:
                for hostile in rng.sample(HOSTILE_VALUES, 6):
                    yield encode({**body, name: {**value, inner: hostile}})
        if isinstance(value, list) and value and isinstance(value[0], dict):
            for inner in value[0]:
                for hostile in rng.sample(HOSTILE_VALUES, 6):
                    yield encode({**body, name: [{**value[0], inner: hostile}]})
    data = encode(body)
    yield from (b"[]", b'"text"', b"42", b"null", b"", b"{", data[: len(data) // 2], data[:-1], data + b"x")
    yield data.replace(b'"', b"\xff", 1)
    yield encode({**body, "padding": "x" * 300_000})
    yield encode({**body, "deep": json.loads("[" * 40 + "]" * 40)})
    yield b"[" * 100_000 + b"]" * 100_000
    yield data[:-1] + b', "format": "again"}'
    yield data.replace(b"}", b', "n": NaN}', 1)
    for _ in range(40):  # random byte damage
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        yield bytes(damaged)


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_every_mutation_of_a_store_document_is_read_or_refused_in_one_line_within_bounds(name: str) -> None:
    genuine, read, signed = DOCUMENTS[name]
    read(json.dumps(genuine).encode())  # the genuine one reads
    outcomes: Counter[str] = Counter()
    slowest, largest = 0.0, 0
    tracemalloc.start()
    try:
        for data in mutations(genuine, signed, random.Random(name)):
            tracemalloc.reset_peak()
            started = time.perf_counter()
            try:
                document = read(data)
            except DocumentError as error:
                assert "\n" not in str(error), str(error)
                outcomes["refused"] += 1
            else:
                outcomes["read"] += 1
                again = document.to_json(KEY) if signed else document.to_json()
                assert read(again) == document, "what was read serialises to what reads back the same"
            slowest = max(slowest, time.perf_counter() - started)
            largest = max(largest, tracemalloc.get_traced_memory()[1])
    finally:
        tracemalloc.stop()
    print(f"{name}: {sum(outcomes.values())} documents, {outcomes['read']} read, {outcomes['refused']} refused; "
          f"slowest read {slowest * 1000:.1f} ms, largest allocation {largest / 2**20:.1f} MiB")  # fmt: skip
    assert outcomes["refused"] > outcomes["read"]
    assert largest < MEMORY_LIMIT
