"""Station enrolment (issue #25): each station's credential reaches its own folders of the shared store and nothing
else, checked on Ceph RGW with the credential `slidestream stations add` hands over, as the station would use it."""

from __future__ import annotations

import json
import shlex
import stat
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from conftest import S3Server, delete_bucket
from typer.testing import CliRunner

from caseformat.layout import audit_key, centre_folder, person_key, station_folder
from caseformat.signing import PUBLIC_KEYS_FILE
from objectstore.enrolment import RgwAdmin, centre_grant, station_policy, station_uid
from slidestream.cli import app

PREFIX = "pathology"
A, B = "hosp-a", "hosp-b"


@dataclass(frozen=True)
class Enrolled:
    bucket: str
    folders: dict[str, Path]
    centre: Any  # the centre's boto3 S3 client
    clients: dict[str, Any]  # each station's, with only what its station.env holds

    def own(self, station: str, name: str) -> str:
        return f"{PREFIX}/{station_folder(station)}{name}"

    def centre_key(self, station: str, name: str) -> str:
        return f"{PREFIX}/{centre_folder(station)}{name}"


def station_env(folder: Path) -> dict[str, str]:
    """The variables of station.env, as a shell that sources it sees them."""
    lines = (folder / "station.env").read_text().splitlines()
    return dict(shlex.split(line.removeprefix("export "))[0].split("=", 1) for line in lines)


def station_client(folder: Path) -> Any:
    env = station_env(folder)
    return boto3.client("s3", endpoint_url=env["SLIDESTREAM_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])  # fmt: skip


def enrol(server: S3Server, bucket: str, station: str, out: Path, key_dir: Path) -> Path:
    result = CliRunner().invoke(app, ["stations", "add", station, "--store", f"s3://{bucket}/{PREFIX}", "--endpoint-url",
                                      server.endpoint_url, "--out", str(out), "--key-dir", str(key_dir)])  # fmt: skip
    assert result.exit_code == 0, f"{result.output}{result.exception!r}"
    return out / station


def status(call: Callable[[], object]) -> int:
    """The HTTP status S3 answers `call` with (200 when it succeeds)."""
    try:
        call()
    except ClientError as error:
        return int(error.response["ResponseMetadata"]["HTTPStatusCode"])
    return 200


@pytest.fixture(scope="module")
def enrolled(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Enrolled]:
    """hosp-a and hosp-b enrolled on one bucket; their users removed and the bucket deleted afterwards."""
    if not s3_server.name.startswith("ceph"):
        pytest.skip(f"station policies are checked on Ceph RGW, not {s3_server.name}")
    bucket, out, key_dir = s3_server.new_bucket(), tmp_path_factory.mktemp("enrolment"), tmp_path_factory.mktemp("keys")
    admin = RgwAdmin.from_environment(s3_server.endpoint_url)
    try:
        folders = {station: enrol(s3_server, bucket, station, out, key_dir) for station in (A, B)}
        yield Enrolled(bucket, folders, s3_server.client(), {station: station_client(folder) for station, folder in folders.items()})
    finally:
        for station in (A, B):
            if station_uid(station) in admin.list_users():
                admin.remove_user(station_uid(station))
        delete_bucket(s3_server.client(), bucket)


def test_the_enrolment_folder_is_private_and_names_the_store(enrolled: Enrolled) -> None:
    folder = enrolled.folders[A]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {path.name: stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir()} == {
        "station.env": 0o600, "policy.json": 0o600, PUBLIC_KEYS_FILE: 0o600}  # fmt: skip
    env = station_env(folder)
    assert env["SLIDESTREAM_STORE"] == f"s3://{enrolled.bucket}/{PREFIX}" and env["SLIDESTREAM_STATION"] == A
    assert json.loads((folder / "policy.json").read_text()) == station_policy(enrolled.bucket, PREFIX, A)
    assert env["AWS_ACCESS_KEY_ID"] != station_env(enrolled.folders[B])["AWS_ACCESS_KEY_ID"]


def test_a_station_writes_reads_lists_and_deletes_in_its_own_folder(enrolled: Enrolled) -> None:
    a, bucket, key = enrolled.clients[A], enrolled.bucket, enrolled.own(A, "hosp-a.c1/case.json")
    a.put_object(Bucket=bucket, Key=key, Body=b"{}")
    assert a.get_object(Bucket=bucket, Key=key)["Body"].read() == b"{}"
    assert [item["Key"] for item in a.list_objects_v2(Bucket=bucket, Prefix=enrolled.own(A, ""))["Contents"]] == [key]
    a.delete_object(Bucket=bucket, Key=key)
    assert status(lambda: enrolled.centre.head_object(Bucket=bucket, Key=key)) == 404

    part_key = enrolled.own(A, "hosp-a.c1/slides/s1/v1/image.zarr/0/c/0/0")
    upload = a.create_multipart_upload(Bucket=bucket, Key=part_key)["UploadId"]
    etag = a.upload_part(Bucket=bucket, Key=part_key, UploadId=upload, PartNumber=1, Body=b"x" * 1024)["ETag"]
    assert [part["ETag"] for part in a.list_parts(Bucket=bucket, Key=part_key, UploadId=upload)["Parts"]] == [etag]
    a.complete_multipart_upload(Bucket=bucket, Key=part_key, UploadId=upload, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]})
    assert a.get_object(Bucket=bucket, Key=part_key)["Body"].read() == b"x" * 1024
    abandoned = a.create_multipart_upload(Bucket=bucket, Key=part_key)["UploadId"]
    a.abort_multipart_upload(Bucket=bucket, Key=part_key, UploadId=abandoned)


def test_the_centre_reads_what_a_station_wrote(enrolled: Enrolled) -> None:
    """On RGW the writer owns the object: the bucket policy `stations add` puts is what lets the centre read it."""
    key = enrolled.own(A, "hosp-a.c2/case.json")
    enrolled.clients[A].put_object(Bucket=enrolled.bucket, Key=key, Body=b"{}")
    assert enrolled.centre.get_object(Bucket=enrolled.bucket, Key=key)["Body"].read() == b"{}"


def test_a_station_reads_its_centre_folder_but_cannot_change_it(enrolled: Enrolled) -> None:
    a, bucket, key = enrolled.clients[A], enrolled.bucket, enrolled.centre_key(A, "hosp-a.c1/reports/0001.json")
    enrolled.centre.put_object(Bucket=bucket, Key=key, Body=b"signed")
    assert a.get_object(Bucket=bucket, Key=key)["Body"].read() == b"signed"
    assert [item["Key"] for item in a.list_objects_v2(Bucket=bucket, Prefix=enrolled.centre_key(A, ""))["Contents"]] == [key]
    assert status(lambda: a.put_object(Bucket=bucket, Key=key, Body=b"forged")) == 403
    assert status(lambda: a.put_object(Bucket=bucket, Key=enrolled.centre_key(A, "hosp-a.c1/reports/0002.json"), Body=b"forged")) == 403
    assert status(lambda: a.delete_object(Bucket=bucket, Key=key)) == 403
    assert enrolled.centre.get_object(Bucket=bucket, Key=key)["Body"].read() == b"signed"


@pytest.mark.parametrize("key", [
    f"{PREFIX}/{station_folder(B)}hosp-b.c1/case.json",
    f"{PREFIX}/{centre_folder(B)}hosp-b.c1/reports/0001.json",
    f"{PREFIX}/{person_key('u00000001')}",
    f"{PREFIX}/{audit_key('2026-12-05T00:00:00.000Z', 'x')}",
    f"{PREFIX}/{station_folder('hosp-ab')}hosp-ab.c1/case.json",  # one character past hosp-a's folder
    f"{PREFIX}/{station_folder(A).rstrip('/')}",  # hosp-a's folder without its '/'
    "outside-the-prefix.json",
])  # fmt: skip
def test_a_station_reaches_nothing_outside_its_folders(enrolled: Enrolled, key: str) -> None:
    a, bucket = enrolled.clients[A], enrolled.bucket
    enrolled.centre.put_object(Bucket=bucket, Key=key, Body=b"not hosp-a's")
    assert status(lambda: a.get_object(Bucket=bucket, Key=key)) == 403
    assert status(lambda: a.head_object(Bucket=bucket, Key=key)) == 403
    assert status(lambda: a.put_object(Bucket=bucket, Key=key, Body=b"overwritten")) == 403
    assert status(lambda: a.delete_object(Bucket=bucket, Key=key)) == 403
    assert status(lambda: a.list_objects_v2(Bucket=bucket, Prefix=key.rsplit("/", 1)[0] + "/")) == 403
    assert status(lambda: a.list_objects_v2(Bucket=bucket, Prefix=key)) == 403
    assert enrolled.centre.get_object(Bucket=bucket, Key=key)["Body"].read() == b"not hosp-a's"


def test_a_station_cannot_list_the_bucket_or_its_uploads(enrolled: Enrolled) -> None:
    a, bucket = enrolled.clients[A], enrolled.bucket
    assert status(lambda: a.list_objects_v2(Bucket=bucket)) == 403
    assert status(lambda: a.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/")) == 403
    assert status(lambda: a.list_objects_v2(Bucket=bucket, Prefix=f"{PREFIX}/{station_folder(A).rstrip('/')}")) == 403  # would show hosp-ab
    assert status(lambda: a.list_multipart_uploads(Bucket=bucket)) == 403
    assert status(lambda: a.list_multipart_uploads(Bucket=bucket, Prefix=enrolled.own(A, ""))) == 403


def test_a_station_cannot_touch_another_stations_upload(enrolled: Enrolled) -> None:
    b, bucket, key = enrolled.clients[B], enrolled.bucket, enrolled.own(B, "hosp-b.c1/slides/s1/v1/image.zarr/0/c/0/0")
    upload = b.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    a = enrolled.clients[A]
    assert status(lambda: a.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)) == 403
    assert status(lambda: a.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x")) == 403
    assert status(lambda: a.list_parts(Bucket=bucket, Key=key, UploadId=upload)) == 403
    assert status(lambda: b.list_parts(Bucket=bucket, Key=key, UploadId=upload)) == 200  # still open
    b.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload)


def test_a_station_cannot_make_buckets_or_publish_its_objects(enrolled: Enrolled) -> None:
    a, bucket, key = enrolled.clients[A], enrolled.bucket, enrolled.own(A, "hosp-a.c3/case.json")
    assert status(lambda: a.create_bucket(Bucket=f"test-{uuid.uuid4().hex[:12]}")) == 403
    a.put_object(Bucket=bucket, Key=key, Body=b"{}")
    assert status(lambda: a.put_object_acl(Bucket=bucket, Key=key, ACL="public-read")) == 403


def test_a_missing_key_in_a_stations_own_folders_answers_403(enrolled: Enrolled) -> None:
    """Measured: S3 answers 404 only to a caller that may list the bucket, and a station may list only under its own
    prefixes, a condition a GET does not meet; so a station's code must take 403 under its own folders as absent.
    The centre, the bucket's owner, gets 404 for the same keys."""
    a, bucket = enrolled.clients[A], enrolled.bucket
    for key in (enrolled.own(A, "hosp-a.none/case.json"), enrolled.centre_key(A, "hosp-a.none/reports/0001.json")):
        assert status(lambda key=key: a.get_object(Bucket=bucket, Key=key)) == 403
        assert status(lambda key=key: a.head_object(Bucket=bucket, Key=key)) == 403
        assert status(lambda key=key: enrolled.centre.get_object(Bucket=bucket, Key=key)) == 404


def test_a_suspended_station_is_refused(enrolled: Enrolled, s3_server: S3Server, tmp_path: Path) -> None:
    folder = enrol(s3_server, enrolled.bucket, "hosp-c", tmp_path / "out", tmp_path / "keys")
    try:
        c, key = station_client(folder), enrolled.own("hosp-c", "hosp-c.c1/case.json")
        c.put_object(Bucket=enrolled.bucket, Key=key, Body=b"{}")
        listed = CliRunner().invoke(app, ["stations", "list", "--endpoint-url", s3_server.endpoint_url])
        assert f"hosp-c  {station_uid('hosp-c')}  active" in listed.output
        suspended = CliRunner().invoke(app, ["stations", "suspend", "hosp-c", "--endpoint-url", s3_server.endpoint_url])
        assert suspended.exit_code == 0, suspended.output
        assert status(lambda: c.get_object(Bucket=enrolled.bucket, Key=key)) == 403
        assert status(lambda: c.put_object(Bucket=enrolled.bucket, Key=key, Body=b"{}")) == 403
        listed = CliRunner().invoke(app, ["stations", "list", "--endpoint-url", s3_server.endpoint_url])
        assert f"hosp-c  {station_uid('hosp-c')}  suspended" in listed.output
    finally:
        RgwAdmin.from_environment(s3_server.endpoint_url).remove_user(station_uid("hosp-c"))


def test_a_station_enrolled_twice_is_refused(enrolled: Enrolled, s3_server: S3Server, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["stations", "add", A, "--store", f"s3://{enrolled.bucket}/{PREFIX}", "--endpoint-url",
                                      s3_server.endpoint_url, "--out", str(tmp_path), "--key-dir", str(tmp_path / "keys")])  # fmt: skip
    assert result.exit_code != 0 and "exists already" in str(result.exception)
    assert not (tmp_path / A).exists()  # no enrolment folder without a credential in it


def test_the_policy_of_a_store_at_the_bucket_root() -> None:
    policy = station_policy("cases", "", A)
    resources = [resource for statement in policy["Statement"] for resource in statement["Resource"]]
    assert "arn:aws:s3:::cases/stations/hosp-a/*" in resources and "arn:aws:s3:::cases/centre/hosp-a/*" in resources
    listing = next(statement for statement in policy["Statement"] if statement["Action"] == ["s3:ListBucket"])
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["stations/hosp-a/*", "centre/hosp-a/*"]}}


def test_the_centre_grant_keeps_the_buckets_other_statements() -> None:
    other = {"Sid": "Backups", "Effect": "Allow", "Principal": {"AWS": ["arn:aws:iam:::user/backup"]}, "Action": ["s3:GetObject"],
             "Resource": ["arn:aws:s3:::cases/*"]}  # fmt: skip
    first = centre_grant("cases", "pathology", "slidestream", {"Version": "2012-10-17", "Statement": [other]})
    assert first is not None and first["Statement"][0] == other
    assert first["Statement"][1]["Principal"] == {"AWS": ["arn:aws:iam:::user/slidestream"]}
    assert first["Statement"][1]["Resource"] == ["arn:aws:s3:::cases/pathology/*"]
    assert centre_grant("cases", "pathology", "slidestream", first) is None  # already granted: the policy is left alone
    second = centre_grant("cases", "research", "slidestream", first)
    assert second is not None and second["Statement"][1]["Resource"] == ["arn:aws:s3:::cases/pathology/*", "arn:aws:s3:::cases/research/*"]


def test_on_aws_nothing_is_created_and_the_iam_commands_are_printed(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["stations", "add", A, "--store", "s3://cases/pathology", "--aws", "--out", str(tmp_path),
                                      "--key-dir", str(tmp_path / "keys")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"aws iam put-user-policy --user-name {station_uid(A)}" in result.output
    assert json.loads((tmp_path / A / "policy.json").read_text()) == station_policy("cases", "pathology", A)
    assert station_env(tmp_path / A)["AWS_ACCESS_KEY_ID"] == ""
