"""`slidestream stations`: enrol a hospital station with its own S3 credential, confined to its own folders.

At the centre, `stations add STATION --store s3://BUCKET/PREFIX --endpoint-url URL` creates the station's Ceph RGW
user and policy (`objectstore.enrolment`) with the centre's credential and writes an enrolment folder to hand over:
the station's credential and store (`station.env`), the policy it is held to, and the centre's public keys. With
`--aws` nothing is created: it prints the IAM commands to run. `stations list` and `stations suspend` manage them.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from slidestream.keys import KeyDir, key_folder

if TYPE_CHECKING:
    from objectstore.enrolment import RgwAdmin, StationCredential

stdout = Console(highlight=False, soft_wrap=True)
stations = typer.Typer(no_args_is_help=True, help="Enrol hospital stations (one confined S3 credential each), list and suspend them.")

Station = Annotated[str, typer.Argument(metavar="STATION", help="The station's ID: 1-32 lower-case letters, digits or '-' (part of its cases' IDs).")]
EndpointUrl = Annotated[str | None, typer.Option(envvar="AWS_ENDPOINT_URL", help="The Ceph RGW S3 endpoint.")]
ENV_FILE, POLICY_FILE = "station.env", "policy.json"


def _rgw(endpoint_url: str | None) -> RgwAdmin:
    """The RGW admin client with the centre's credential; the endpoint is needed (AWS has no RGW admin API)."""
    from objectstore.clients import parse_endpoint
    from objectstore.enrolment import EnrolmentError, RgwAdmin

    if not parse_endpoint(endpoint_url):
        raise EnrolmentError("--endpoint-url is needed: stations are RGW users (on AWS S3 they are IAM users; see docs/enrolment.md)")
    return RgwAdmin.from_environment(endpoint_url or "")


def _write_private(path: Path, data: bytes) -> None:
    """A new file only its owner reads: it may hold the station's secret key."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
        file.write(data)


def _station_env(store: str, station: str, endpoint_url: str | None, credential: StationCredential | None) -> str:
    """Shell `export` lines for the station; without a credential (AWS) the key lines are left for the centre to fill in
    from `aws iam create-access-key`."""
    values = {
        "AWS_ACCESS_KEY_ID": credential.access_key if credential else "",
        "AWS_SECRET_ACCESS_KEY": credential.secret_key if credential else "",
        "SLIDESTREAM_STORE": store,
        "SLIDESTREAM_STATION": station,
        **({"SLIDESTREAM_ENDPOINT_URL": endpoint_url} if endpoint_url else {}),
    }
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in values.items())


def _enrolment_folder(out: Path, station: str) -> Path:
    """OUT/STATION, new and private (0700): an earlier station's credential is never overwritten."""
    from objectstore.enrolment import EnrolmentError

    folder = out / station
    try:
        out.mkdir(parents=True, exist_ok=True)
        folder.mkdir(mode=0o700)
        folder.chmod(0o700)
    except FileExistsError:
        raise EnrolmentError(f"{folder} exists already (an earlier enrolment?); move it away or choose --out") from None
    except OSError as error:
        raise EnrolmentError(f"{folder}: cannot create it: {error.strerror or error}") from None
    return folder


@stations.command("add")
def add(
    station: Station,
    store: Annotated[str, typer.Option("--store", metavar="s3://BUCKET/PREFIX", help="The case store the station sends to.")],
    endpoint_url: EndpointUrl = None,
    out: Annotated[Path, typer.Option("--out", help="Where the enrolment folder OUT/STATION is written.")] = Path("enrolment"),
    aws: Annotated[bool, typer.Option("--aws", help="AWS S3: create nothing, print the IAM commands to run.")] = False,
    key_dir: KeyDir = None,
) -> None:
    """Enrol a station: its own credential, allowed only its stations/STATION/ (read-write) and centre/STATION/
    (read-only) folders of the store, and an enrolment folder to hand over privately (it holds the secret key)."""
    from caseformat.layout import centre_folder, station_folder, validate_station
    from caseformat.signing import PUBLIC_KEYS_FILE, SigningKey
    from objectstore.clients import parse_endpoint
    from objectstore.enrolment import POLICY_NAME, station_policy, station_uid
    from transfer.target import parse_store_url

    validate_station(station)
    bucket, prefix = parse_store_url(store)
    endpoint = None if aws else parse_endpoint(endpoint_url)
    if not aws and endpoint is None:
        raise typer.BadParameter("give the Ceph RGW endpoint (--endpoint-url), or --aws for AWS S3", param_hint="--endpoint-url")
    store = f"s3://{bucket}/{prefix}".rstrip("/")
    policy = station_policy(bucket, prefix, station)
    keys = key_folder(key_dir)
    SigningKey.load_or_create(keys)  # the station must trust the key that will sign its reports
    folder = _enrolment_folder(out, station)
    try:
        credential = None if aws else _create_on_rgw(endpoint or "", bucket, prefix, station)
    except BaseException:
        folder.rmdir()  # nothing written yet: no half enrolment left behind
        raise
    _write_private(folder / POLICY_FILE, json.dumps(policy, indent=2).encode() + b"\n")
    _write_private(folder / PUBLIC_KEYS_FILE, (keys / PUBLIC_KEYS_FILE).read_bytes())
    _write_private(folder / ENV_FILE, _station_env(store, station, endpoint, credential).encode())
    uid = station_uid(station)
    if aws:
        _print_aws_steps(policy, uid, folder)
    else:
        stdout.print(f"enrolled station {station}: RGW user {uid}, policy {POLICY_NAME} (only {store}/{station_folder(station)} "
                     f"read-write, {store}/{centre_folder(station)} read-only)", markup=False)
    stdout.print(f"enrolment folder: {folder} (hand it to the station privately: {ENV_FILE} holds its secret key)", markup=False)
    endpoint_flag = ' --endpoint-url "$SLIDESTREAM_ENDPOINT_URL"' if endpoint else ""
    stdout.print("at the station, in the enrolment folder:", markup=False)
    stdout.print(f"  . ./{ENV_FILE}", markup=False)
    stdout.print(f"  slidestream keys trust {PUBLIC_KEYS_FILE}", markup=False)
    stdout.print(f'  slidestream watch HOT_FOLDER "$SLIDESTREAM_STORE" --station "$SLIDESTREAM_STATION"{endpoint_flag}', markup=False)


def _create_on_rgw(endpoint: str, bucket: str, prefix: str, station: str) -> StationCredential:
    """The station's user and policy, after making sure the centre can read what stations write to the bucket."""
    from objectstore.clients import make_client
    from objectstore.enrolment import ensure_centre_grant

    admin = _rgw(endpoint)
    if ensure_centre_grant(make_client(endpoint), bucket, prefix):
        stdout.print(f"s3://{bucket}: bucket policy now lets its owner read what stations write", markup=False)
    return admin.enrol(bucket, prefix, station)


def _print_aws_steps(policy: dict[str, Any], uid: str, folder: Path) -> None:
    from objectstore.enrolment import POLICY_NAME

    stdout.print(json.dumps(policy, indent=2), markup=False)
    stdout.print("run with the centre's AWS IAM administrator credential:", markup=False)
    stdout.print(f"  aws iam create-user --user-name {uid}", markup=False)
    stdout.print(f"  aws iam put-user-policy --user-name {uid} --policy-name {POLICY_NAME} "
                 f"--policy-document file://{shlex.quote(str(folder / POLICY_FILE))}", markup=False)
    stdout.print(f"  aws iam create-access-key --user-name {uid}", markup=False)
    stdout.print(f"then put its AccessKeyId and SecretAccessKey in {folder / ENV_FILE}", markup=False)


@stations.command("list")
def list_stations(endpoint_url: EndpointUrl = None) -> None:
    """The stations enrolled on the Ceph RGW (its users named slidestream-station-*), suspended or not."""
    from slides.errors import printable

    enrolled = _rgw(endpoint_url).stations()
    for user in enrolled:
        stdout.print(printable(f"{user.station}  {user.uid}  {'suspended' if user.suspended else 'active'}"), markup=False)
    if not enrolled:
        stdout.print("no station enrolled", markup=False)


@stations.command("suspend")
def suspend(station: Station, endpoint_url: EndpointUrl = None) -> None:
    """Refuse the station's credential from now on (a stolen laptop, a closed contract); what it sent stays."""
    from caseformat.layout import validate_station
    from objectstore.enrolment import station_uid

    uid = station_uid(validate_station(station))
    _rgw(endpoint_url).suspend_user(uid)
    stdout.print(f"suspended station {station} (RGW user {uid}): its key is refused from now on", markup=False)
