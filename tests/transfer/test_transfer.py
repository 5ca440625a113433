"""`slidestream send` against the real S3 server: the bytes there are the bytes produced, and read back as the image.

Helpers here are shared with test_transfer_faults.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from conftest import REPO, S3Server, sample
from support import (
    STATION,
    free_port,
    journal_objects,
    local_pieces,
    send_args,
    server_objects,
    sha256,
    slidestream,
    start_slidestream,
    wait_for_port,
)

from caseformat.documents import CaseRecord
from caseformat.errors import InvalidIdError
from caseformat.layout import (
    CASE_RECORD,
    SlideRef,
    arrivals_folder,
    case_key,
    macro_key,
    qualified_case,
    scan_qc_key,
    slide_claim_key,
)
from caseformat.results import ScanQc
from slides import open_slide
from station.pipeline import image_pieces
from station.request import SendRequest
from tiling import PieceKind, plan_pyramid, write_pieces
from transfer import (
    Arrivals,
    DestinationError,
    IntegrityError,
    Journal,
    Sender,
    SendOptions,
    content_id,
    parse_destination,
    validate_case,
)
from transfer.integrity import Digest, Mismatch, check, expected_multipart, expected_single
from transfer.pool import typical_size

pytestmark = pytest.mark.slow  # sends every sample

MiB = 1 << 20


# -- helpers ---------------------------------------------------------------------------------------------------
def s3_group(server: S3Server, url: str) -> zarr.Group:
    """The image as any zarr reader sees it on S3 (zarr's ObjectStore over obstore), bypassing slidestream entirely.

    A fresh client each time, with the credentials from the environment, so no earlier test's connections are reused."""
    from obstore.store import S3Store

    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    client = S3Store(
        bucket,
        prefix=prefix,
        endpoint=server.endpoint_url,
        region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
        access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
        secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        client_options={"allow_http": True},
    )
    return zarr.open_group(zarr.storage.ObjectStore(client, read_only=True), mode="r")


def assert_same_image(remote: zarr.Group, local: zarr.Group) -> None:
    datasets = local.attrs["ome"]["multiscales"][0]["datasets"]
    assert remote.attrs.asdict() == local.attrs.asdict()
    for dataset in datasets:
        np.testing.assert_array_equal(remote[dataset["path"]][:], local[dataset["path"]][:], err_msg=f"level {dataset['path']}")


# -- the whole path --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "rerun"), [("CMU-1-Small-Region.svs", True), ("TCGA-CR-7395-jp2k.svs", False)])
def test_server_holds_exactly_the_produced_bytes_and_reads_as_the_local_image(s3_server, s3_bucket, tmp_path, name, rerun) -> None:  # type: ignore[no-untyped-def]
    state = tmp_path / "state"
    result = slidestream("send", sample(name), *send_args(s3_server, s3_bucket, state, "--json"))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    case = summary["case"]
    assert re.fullmatch(rf"{STATION}\.[0-9a-f]{{16}}", case), "a new specimen's case ID is the station's, random, never the file name"
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in result.stdout + result.stderr

    dest = parse_destination(f"s3://{s3_bucket}/cases", case)
    pieces = local_pieces(sample(name), case)
    on_server = server_objects(s3_server, s3_bucket, "cases/")
    manifest = json.loads(on_server.pop(dest.manifest_key))
    record = CaseRecord.read(on_server.pop(dest.key(case_key(case, CASE_RECORD))))
    assert record is not None and record.case == case and record.registered_at <= manifest["started_at"]
    [arrival] = [key for key in on_server if key.startswith(dest.key(arrivals_folder(STATION)))]
    assert on_server.pop(arrival) == b"" and SlideRef.from_arrival(arrival) == dest.ref
    claim = json.loads(on_server.pop(dest.key(slide_claim_key(case, "s1"))))
    assert claim["case"] == case and claim["slide"] == "s1"
    checked = ScanQc.read(on_server.pop(dest.key(scan_qc_key(dest.ref))))  # the scan's checks, beside the image
    assert (checked.case, checked.slide, checked.version) == (case, "s1", "v1")
    macro = on_server.pop(dest.key(macro_key(dest.ref)), None)
    assert (macro is not None) == checked.macro
    expected = {dest.image_key(piece.key): piece.data for piece in pieces}
    assert sorted(on_server) == sorted(expected)
    assert all(on_server[key] == data for key, data in expected.items())
    assert journal_objects(state) == {piece.key: (sha256(piece.data), len(piece.data), "sent-verified") for piece in pieces}
    assert Path(name).stem.encode() not in on_server[dest.image_key("zarr.json")]  # no file name in the image

    shards = [piece.key for piece in pieces if piece.kind is PieceKind.SHARD]
    assert manifest["format"] == "slidestream-manifest/2" and manifest["state"] == "complete" and manifest["complete"] is True
    assert manifest["planned"] == manifest["arrived"] == shards
    assert manifest["bytes_sent"] == sum(len(piece.data) for piece in pieces)
    assert 0 < manifest["milestones"]["overview"] <= manifest["milestones"]["tissue_full_resolution"]
    assert sum(level["planned"] for level in manifest["levels"]) == len(shards)
    assert summary["objects"] == len(pieces) and summary["objects_skipped"] == 0
    assert summary["bytes_total"] == sum(len(piece.data) for piece in pieces) <= summary["bytes_sent"]

    write_pieces(pieces, tmp_path / "local.zarr")
    assert_same_image(s3_group(s3_server, dest.url), zarr.open_group(tmp_path / "local.zarr", mode="r"))

    if not rerun:
        return
    # a rerun of the finished send: everything is skipped, and the manifest is never written (the bucket keeps
    # every version of it from here on: one, the complete one, means no incomplete one came in between)
    client, key = s3_server.client(), dest.manifest_key
    client.put_bucket_versioning(Bucket=s3_bucket, VersioningConfiguration={"Status": "Enabled"})
    before = client.get_object(Bucket=s3_bucket, Key=key)["Body"].read()
    again = slidestream("send", sample(name), *send_args(s3_server, s3_bucket, state, "--json"))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["objects"] == 0 and json.loads(again.stdout)["objects_skipped"] == len(pieces)
    assert server_objects(s3_server, s3_bucket, dest.image_key("")) == expected
    assert client.get_object(Bucket=s3_bucket, Key=key)["Body"].read() == before
    assert len(client.list_object_versions(Bucket=s3_bucket, Prefix=key).get("Versions", [])) == 1

    # a resend that does upload something (the journal lost a shard) keeps the clock of the first send
    with sqlite3.connect(state / "journal.sqlite3") as db:
        db.execute("DELETE FROM objects WHERE key=?", (shards[-1],))
    third = slidestream("send", sample(name), *send_args(s3_server, s3_bucket, state, "--json"))
    assert third.returncode == 0, third.stderr
    assert json.loads(third.stdout)["objects"] == 1
    resent = json.loads(client.get_object(Bucket=s3_bucket, Key=key)["Body"].read())
    assert resent["state"] == "complete" and resent["started_at"] == manifest["started_at"]
    assert resent["milestones"] == manifest["milestones"]


def test_large_objects_go_in_parts_and_are_verified_by_their_composite_etag(s3_server, s3_bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Lossless shards of TCGA are 5-8 MB: above a 5 MiB threshold they travel as multipart uploads. No request
    waits for a `100 Continue` before its body (a round trip per object): whole objects and parts alike."""
    slide_path = sample("TCGA-CR-7395-jp2k.svs")
    dest = parse_destination(f"s3://{s3_bucket}/mp", qualified_case(STATION, "case-1"), s3_server.endpoint_url)
    requests: list[tuple[str, str | None]] = []
    with open_slide(slide_path) as slide, Journal(tmp_path) as journal:
        _, produced, order = image_pieces(slide, SendRequest.of(slide_path, dest.url, lossless=True), dest.ref.label)
        pieces = list(produced)
        sender = Sender(dest, journal, SendOptions(concurrency=2, multipart_threshold=5 * MiB))
        sender.client.meta.events.register("before-send.s3", lambda request, **_: requests.append((request.url, request.headers.get("Expect"))))
        sender.send(order, pieces)
    assert any("partNumber=" in url for url, _ in requests) and any("partNumber=" not in url for url, _ in requests)
    assert [url for url, expect in requests if expect is not None] == []
    client = s3_server.client()
    big = [piece for piece in pieces if len(piece.data) > 5 * MiB]
    assert big
    for piece in big:
        etag = client.head_object(Bucket=s3_bucket, Key=dest.image_key(piece.key))["ETag"].strip('"')
        assert etag == expected_multipart(piece.data, 5 * MiB).etag and etag.endswith("-2")
    assert server_objects(s3_server, s3_bucket, dest.image_key("")) == {dest.image_key(piece.key): piece.data for piece in pieces}
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


# -- lowest level first ----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def derived_slide(request: pytest.FixtureRequest) -> Path:
    """bench/make_large_slide.py --small (~50 MB, 14k x 10k px), made once and kept in pytest's cache."""
    script = REPO / "bench" / "make_large_slide.py"
    if not script.exists():
        pytest.skip("bench/make_large_slide.py is missing")
    version = hashlib.sha256(script.read_bytes()).hexdigest()[:12]
    path = Path(request.config.cache.mkdir("slidestream-derived")) / f"derived-small-{version}.svs"
    if not path.exists():
        partial = path.with_suffix(".partial.svs")
        made = subprocess.run([sys.executable, script, "--small", "-o", partial], capture_output=True, text=True, timeout=600, check=False)
        assert made.returncode == 0, made.stderr
        partial.rename(path)
    return path


def test_lowest_level_is_readable_from_s3_before_two_percent_of_the_bytes(s3_server, s3_bucket, tmp_path, derived_slide) -> None:  # type: ignore[no-untyped-def]
    case = "overview-test"
    dest = parse_destination(f"s3://{s3_bucket}/cases", qualified_case(STATION, case))
    pieces = local_pieces(derived_slide, dest.case)
    total = sum(len(piece.data) for piece in pieces)
    write_pieces(pieces, tmp_path / "local.zarr")
    local = zarr.open_group(tmp_path / "local.zarr", mode="r")
    lowest = local.attrs["ome"]["multiscales"][0]["datasets"][-1]["path"]
    lowest_shard = next(piece.key for piece in pieces if piece.kind is PieceKind.SHARD)
    assert lowest_shard.startswith(f"{lowest}/")  # the send order starts with the lowest level

    process = start_slidestream(
        "send", derived_slide, *send_args(s3_server, s3_bucket, tmp_path / "state", "--case", case, "--max-rate", 40)
    )
    client = s3_server.client()
    try:
        manifest: dict[str, Any] = {}
        while lowest_shard not in manifest.get("arrived", []):
            assert process.poll() is None, process.communicate()[1]
            try:
                manifest = json.loads(client.get_object(Bucket=s3_bucket, Key=dest.manifest_key)["Body"].read())
            except client.exceptions.NoSuchKey:
                time.sleep(0.05)
        on_server = sum(item["Size"] for item in client.list_objects_v2(Bucket=s3_bucket, Prefix=dest.image_key(""))["Contents"])
        remote = s3_group(s3_server, dest.url)
        np.testing.assert_array_equal(remote[lowest][:], local[lowest][:])
        assert process.poll() is None, "the send finished before the check: nothing was shown about partial reads"
        assert on_server / total < 0.02, f"{on_server} of {total} bytes were on the server when the lowest level arrived"
        assert manifest["complete"] is False
    finally:
        process.kill()
        process.communicate()


# -- manifest, case IDs, verification rules --------------------------------------------------------------------
def test_manifest_drops_shards_produce_skips_and_reaches_milestones_in_order() -> None:
    with open_slide(sample("TCGA-CR-7395-jp2k.svs")) as slide:
        plan = plan_pyramid(slide)
    arrivals = Arrivals(SlideRef("h1.c"), plan, "2026-01-01T00:00:00.000Z", {})
    keys = [task.key for task in plan.shards]
    overview = [task.key for task in plan.shards if plan.levels[task.level].complete]
    for key in keys[:-1]:
        arrivals.produced(key)
        reached, _ = arrivals.arrive(key, 10)
        assert ("overview" in reached) == (key == overview[-1])
    skipped = keys[-1]
    assert arrivals.finished_producing() == ["tissue_full_resolution"]
    document = arrivals.document()
    assert skipped not in document["planned"] and document["planned"] == document["arrived"] == keys[:-1]
    assert document["bytes_sent"] == 10 * (len(keys) - 1) and document["complete"] is False


def test_manifest_of_a_deferred_plan_says_not_final_until_the_tissue_is_known() -> None:
    with open_slide(sample("TCGA-CR-7395-jp2k.svs")) as slide:
        deferred = plan_pyramid(slide, defer_tissue=True)
        full = plan_pyramid(slide)
    arrivals = Arrivals(SlideRef("h1.c"), deferred, "2026-01-01T00:00:00.000Z", {})
    overview = [task.key for task in deferred.shards]
    for key in overview:
        arrivals.produced(key)
        reached, _ = arrivals.arrive(key, 10)
    assert reached == ["overview"], "the overview is complete without knowing the tissue"
    before = arrivals.document()
    assert before["plan_final"] is False and before["planned"] == overview
    assert before["milestones"]["tissue_full_resolution"] is None, "full resolution is never reached on a partial plan"
    arrivals.settle(full)
    after = arrivals.document()
    assert after["plan_final"] is True and after["planned"] == [task.key for task in full.shards]
    assert set(after["arrived"]) == set(overview)


def test_auto_concurrency_sizes_by_the_objects_that_carry_the_bytes() -> None:
    """The opening of a send, a dozen zarr.json of ~600 bytes and small overview shards beside 1 MB shards, sizes the
    puts in flight as 1 MB objects: by count it looked like a stream of tiny objects with room for 32 puts."""
    opening = [600] * 12 + [40_000] * 8 + [1_100_000] * 16
    assert 1_000_000 < typical_size(opening) <= 1_100_000
    assert typical_size([1_100_000] * 64) == 1_100_000 and typical_size([]) == 0


def test_content_id_comes_from_every_byte_and_case_ids_are_checked(tmp_path) -> None:  # type: ignore[no-untyped-def]
    copy = tmp_path / "S24-012345 A1.svs"
    shutil.copyfile(sample("CMU-1-Small-Region.svs"), copy)
    assert content_id(copy) == content_id(sample("CMU-1-Small-Region.svs")) != content_id(sample("TCGA-CR-7395-jp2k.svs"))
    assert len(content_id(copy)) == 16
    middle = tmp_path / "middle.svs"  # the same size, first and last MiB: another scan all the same
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    middle.write_bytes(bytes(data))
    assert content_id(middle) != content_id(copy)
    for bad in ["h1.../etc", "h1.a/b", "", "h1..hidden", "h1." + "x" * 65, "h1.a..b", "local", "H1.local", "-h1.local", "h" * 33 + ".local"]:
        with pytest.raises(InvalidIdError):
            validate_case(bad)
    for bad_url in ["http://bucket/x", "s3://Bad_Bucket/x", "s3://bucket/a/../b"]:
        with pytest.raises(DestinationError):
            parse_destination(bad_url, "h1.case")
    assert parse_destination("s3://bucket/a/b/", "h1.S-1.2_x").manifest_key == "a/b/stations/h1/h1.S-1.2_x/slides/s1/v1/manifest.json"


def test_bad_case_id_is_one_line_and_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    result = slidestream("send", sample("CMU-1-Small-Region.svs"), "s3://bucket/x", "--case", "../up", "--state-dir", tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "name '../up' is not allowed" in result.stderr


@pytest.mark.parametrize(("host", "station"), [
    ("Theatre_3.Hospital.Example", "theatre-3-hospital-example"),  # what the scanner PC is called, as a station ID
    ("a" * 31 + ".b" + "c" * 40, "a" * 31),  # at most 32, never ending in "-"
    ("Überraum-2", "berraum-2"),
    ("...", "station"),
])
def test_without_station_the_host_name_is_made_a_station_id(monkeypatch: pytest.MonkeyPatch, host: str, station: str) -> None:
    from caseformat.layout import validate_station
    from station.station import default_station

    monkeypatch.setattr("socket.gethostname", lambda: host)
    assert validate_station(default_station()) == station


def test_only_an_answer_that_proves_the_bytes_counts() -> None:
    digest = Digest.of(b"shard bytes")
    expected = expected_single(digest)
    assert check("k", expected, f'"{digest.etag}"', None, None) == digest.etag
    assert check("k", expected, '"not-an-md5"', digest.checksum_sha256, "aws:kms") == "not-an-md5"
    with pytest.raises(Mismatch):
        check("k", expected, '"0123"', None, None)
    with pytest.raises(Mismatch):
        check("k", expected, f'"{digest.etag}"', Digest.of(b"other").checksum_sha256, None)
    with pytest.raises(IntegrityError, match="cannot be verified"):
        check("k", expected, '"kms-etag"', None, "aws:kms")


def test_sse_requests_are_verified(s3_server, s3_bucket, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """With --sse the puts carry the encryption header; a server without SSE support says so in one line."""
    result = slidestream("send", sample("CMU-1-Small-Region.svs"), *send_args(s3_server, s3_bucket, tmp_path, "--sse", "AES256", "--json"))
    if result.returncode == 0:
        case = json.loads(result.stdout)["case"]
        head = s3_server.client().head_object(Bucket=s3_bucket, Key=parse_destination(f"s3://{s3_bucket}/cases", case).image_key("zarr.json"))
        assert head.get("ServerSideEncryption") == "AES256"
    else:
        assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--sse AES256" in result.stderr


def test_tls_endpoint_with_a_private_ca(s3_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A server whose certificate a private CA signed: refused in one line without --ca-bundle, verified with it.

    moto serves the TLS here whatever the test server is (`s3_server` is only asked for its credentials)."""
    from datetime import UTC, datetime, timedelta
    from ipaddress import IPv4Address

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def certificate(subject: str, key, issuer: str, issuer_key, ca: bool) -> x509.Certificate:  # type: ignore[no-untyped-def]
        now = datetime.now(UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_cert = certificate("slidestream test CA", ca_key, "slidestream test CA", ca_key, ca=True)
    (tmp_path / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "server.pem").write_bytes(
        certificate("127.0.0.1", server_key, "slidestream test CA", ca_key, ca=False).public_bytes(serialization.Encoding.PEM)
    )
    (tmp_path / "server.key").write_bytes(
        server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )

    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            str(port),
            "-c",
            tmp_path / "server.pem",
            "-k",
            tmp_path / "server.key",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"https://127.0.0.1:{port}"
        wait_for_port(port, "the TLS S3 server")
        import boto3

        boto3.client("s3", endpoint_url=endpoint, verify=str(tmp_path / "ca.pem")).create_bucket(Bucket="tls-bucket")
        common = [
            "send",
            sample("CMU-1-Small-Region.svs"),
            "s3://tls-bucket/cases",
            "--endpoint-url",
            endpoint,
            "--state-dir",
            tmp_path / "state",
        ]
        refused = slidestream(*common)
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "--ca-bundle" in refused.stderr
        accepted = slidestream(*common, "--ca-bundle", tmp_path / "ca.pem", "--json")
        assert accepted.returncode == 0, accepted.stderr
        assert json.loads(accepted.stdout)["objects"] == 18  # 10 image objects, 8 of the tissue label image (3 levels)
    finally:
        server.terminate()
        server.wait(timeout=10)
