"""Station enrolment: one S3 credential per station, confined by its own policy to its own slides.

Ninety hospitals share one bucket; each must read and write only `stations/{station}/` and read only
`centre/{station}/` (`caseformat.layout`). On Ceph RGW 16 a bucket policy cannot name the caller
(`${aws:username}` in a resource is refused) and one statement per station outgrows AWS's 20 KB bucket policy at
about 50 stations, so every station is its own user with its own IAM user policy (`station_policy`), put through
RGW's IAM API; on AWS the same document is put with `aws iam put-user-policy`.

On RGW an object belongs to the user who wrote it, and the bucket's owner (the centre) cannot read what a station
wrote unless the bucket policy says so: `centre_grant` adds one statement, the same size however many stations there
are. (An AWS bucket made since 2023 enforces bucket-owner ownership, so there the centre owns every object.)

A station asking for a key that does not exist gets 403, not 404, on RGW as on AWS: S3 answers 404 only to a
caller that may list the bucket, and a station may list only under its own prefixes, a condition a GET does not meet.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from caseformat.layout import centre_folder, station_folder, validate_station
from objectstore.errors import StorageError

STATION_USER_PREFIX = "slidestream-station-"
POLICY_NAME = "slidestream-station"
CENTRE_GRANT_SID = "SlidestreamCentreReadsStations"
IAM_REGION = "us-east-1"  # RGW's IAM API takes any region; AWS's IAM is signed for us-east-1
# what a station does under its own folder: write a slide in parts, read back what it wrote, retract, clean up
STATION_WRITES = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
CAPS_HINT = "radosgw-admin caps add --uid=CENTRE_USER --caps='users=*;user-policy=*'"


class EnrolmentError(StorageError):
    """The store's server refused or cannot do an enrolment step (missing admin caps, a station enrolled twice)."""


def station_uid(station: str) -> str:
    """The station's RGW user: prefixed, so that `stations list` tells stations from the centre's own users and people
    on a cluster that serves more than slidestream, and a station named like an existing user cannot take it over."""
    return STATION_USER_PREFIX + validate_station(station)


def station_of_uid(uid: str) -> str | None:
    """The station an RGW user is, None for any other user."""
    station = uid.removeprefix(STATION_USER_PREFIX)
    if station == uid:
        return None
    try:
        return validate_station(station)
    except ValueError:
        return None


def _under(prefix: str, folder: str) -> str:
    return f"{prefix.strip('/')}/{folder}" if prefix.strip("/") else folder


def station_policy(bucket: str, prefix: str, station: str) -> dict[str, Any]:
    """The IAM policy that confines a station to `s3://bucket/prefix/`: read-write under its `stations/{station}/`,
    read-only under its `centre/{station}/`, listing only those two. Nothing else: not another station's folders, not
    `centre/_people/` or `centre/_audit/`, not the bucket's root, not the bucket's multipart uploads (their listing
    names every station's keys). The trailing `*` crosses '/' (AWS and RGW alike); the folders end in '/', so
    `hosp-a` does not reach `hosp-ab`. GetBucketLocation only tells the bucket's region, which SDKs may ask first.
    Changing its own objects' ACLs is denied outright: on RGW the writer owns the object and could otherwise make its
    slides public."""
    own, centre = _under(prefix, station_folder(station)), _under(prefix, centre_folder(station))
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "OwnFolderReadWrite", "Effect": "Allow", "Action": STATION_WRITES, "Resource": [f"arn:aws:s3:::{bucket}/{own}*"]},
            {"Sid": "CentreFolderRead", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [f"arn:aws:s3:::{bucket}/{centre}*"]},
            {"Sid": "ListOwnFolders", "Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [f"arn:aws:s3:::{bucket}"],
             "Condition": {"StringLike": {"s3:prefix": [f"{own}*", f"{centre}*"]}}},
            {"Sid": "BucketRegion", "Effect": "Allow", "Action": ["s3:GetBucketLocation"], "Resource": [f"arn:aws:s3:::{bucket}"]},
            {"Sid": "NoAclChanges", "Effect": "Deny", "Action": ["s3:PutObjectAcl", "s3:PutObjectVersionAcl"],
             "Resource": [f"arn:aws:s3:::{bucket}/*"]},
        ],
    }  # fmt: skip


def centre_grant(bucket: str, prefix: str, owner: str, current: dict[str, Any] | None) -> dict[str, Any] | None:
    """The bucket policy `current` with the statement that lets the bucket's RGW owner read every object under
    `prefix` (whoever wrote it); None when it already does. Other statements are kept as they are."""
    tenant, _, user = owner.rpartition("$")  # a tenant's user is "tenant$uid" on RGW
    principal = f"arn:aws:iam::{tenant}:user/{user}"
    resource = f"arn:aws:s3:::{bucket}/{_under(prefix, '')}*"
    policy: dict[str, Any] = json.loads(json.dumps(current)) if current else {"Version": "2012-10-17", "Statement": []}
    statements = policy.setdefault("Statement", [])
    if isinstance(statements, dict):
        statements = policy["Statement"] = [statements]
    grant = next((item for item in statements if isinstance(item, dict) and item.get("Sid") == CENTRE_GRANT_SID), None)
    if grant is None:
        statements.append({"Sid": CENTRE_GRANT_SID, "Effect": "Allow", "Principal": {"AWS": [principal]}, "Action": ["s3:GetObject"],
                           "Resource": [resource]})  # fmt: skip
        return policy
    resources = grant["Resource"] if isinstance(grant.get("Resource"), list) else [grant.get("Resource")]
    if resource in resources:
        return None
    grant["Resource"] = [*resources, resource]
    return policy


@dataclass(frozen=True)
class StationCredential:
    """What a station is given: its S3 access key pair."""

    station: str
    access_key: str
    secret_key: str


@dataclass(frozen=True)
class StationUser:
    station: str
    uid: str
    suspended: bool


class RgwAdmin:
    """Ceph RGW's admin ops API (users) and IAM API (user policies) on the S3 endpoint, with the centre's credential,
    which needs the RGW caps `users=*` and `user-policy=*`. Requests are signed with botocore's SigV4, as boto3 signs."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str, session_token: str | None = None) -> None:
        from botocore.credentials import Credentials
        from botocore.httpsession import URLLib3Session

        self.endpoint = endpoint.rstrip("/")
        self._credentials = Credentials(access_key, secret_key, session_token)
        self._http = URLLib3Session(timeout=30)

    @classmethod
    def from_environment(cls, endpoint: str) -> RgwAdmin:
        """With the credential boto3 would find (environment, profile, instance role)."""
        import botocore.session

        credentials = botocore.session.get_session().get_credentials()
        if credentials is None:
            raise EnrolmentError("no S3 credential for the centre (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile)")
        frozen = credentials.get_frozen_credentials()
        return cls(endpoint, frozen.access_key, frozen.secret_key, frozen.token)

    def enrol(self, bucket: str, prefix: str, station: str) -> StationCredential:
        """Create the station's user and put its policy; a user whose policy could not be put is removed again, so
        no credential without its confinement is left behind."""
        uid = station_uid(station)
        created = self.create_user(uid, f"slidestream station {station}")
        try:
            self.put_user_policy(uid, POLICY_NAME, station_policy(bucket, prefix, station))
        except EnrolmentError:
            self.remove_user(uid)
            raise
        return StationCredential(station, *created)

    def create_user(self, uid: str, display_name: str) -> tuple[str, str]:
        """A new user with one generated S3 key pair, which is returned; it may create no bucket of its own."""
        user = self._admin("PUT", {"uid": uid, "display-name": display_name, "max-buckets": "-1"}, uid)
        keys = [key for key in user.get("keys", []) if key.get("user") == uid]
        if not keys:
            raise EnrolmentError(f"RGW created user {uid} but returned no S3 key")
        return str(keys[0]["access_key"]), str(keys[0]["secret_key"])

    def user_info(self, uid: str) -> dict[str, Any]:
        return self._admin("GET", {"uid": uid}, uid)

    def suspend_user(self, uid: str) -> None:
        """Refuse every request of the user's keys from now on (its objects stay)."""
        self._admin("POST", {"uid": uid, "suspended": "1"}, uid)

    def remove_user(self, uid: str) -> None:
        """Delete the user and its keys (the objects it wrote in the centre's bucket stay)."""
        self._admin("DELETE", {"uid": uid}, uid)

    def list_users(self) -> list[str]:
        """Every user ID on the cluster, page by page."""
        users: list[str] = []
        marker = None
        while True:
            page = self._admin("GET", {"list": "", "max-entries": "1000", **({"marker": marker} if marker else {})}, None)
            users += [str(uid) for uid in page.get("keys", [])]
            marker = page.get("marker")
            if not page.get("truncated") or not marker:
                return users

    def stations(self) -> list[StationUser]:
        """The users that are stations, with whether they are suspended."""
        found = []
        for uid in sorted(self.list_users()):
            station = station_of_uid(uid)
            if station is not None:
                found.append(StationUser(station, uid, bool(self.user_info(uid).get("suspended"))))
        return found

    def put_user_policy(self, uid: str, name: str, document: dict[str, Any]) -> None:
        """IAM PutUserPolicy: replaces the user's policy of that name."""
        body = urllib.parse.urlencode({"Action": "PutUserPolicy", "Version": "2010-05-08", "UserName": uid, "PolicyName": name,
                                       "PolicyDocument": json.dumps(document)})  # fmt: skip
        status, data = self._send("POST", f"{self.endpoint}/", "iam", body, {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
        if status != 200:
            code = match.group(1) if (match := re.search(rb"<Code>([A-Za-z]{1,64})</Code>", data)) else str(status).encode()
            raise self._refusal(code.decode(), uid, "put the user policy of")

    def _admin(self, method: str, params: dict[str, str], uid: str | None) -> dict[str, Any]:
        query = urllib.parse.urlencode({**params, "format": "json"}, quote_via=urllib.parse.quote)  # SigV4 signs %20, not +
        status, data = self._send(method, f"{self.endpoint}/admin/user?{query}", "s3", None, {})
        try:
            answer = json.loads(data) if data else {}
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise EnrolmentError(f"{self.endpoint} does not answer the RGW admin API (HTTP {status}); is it Ceph RGW? (use --aws for AWS S3)")
        if status >= 300:
            raise self._refusal(str(answer.get("Code") or status), uid, {"PUT": "create", "POST": "modify", "DELETE": "remove"}.get(method, "read"))
        return answer

    def _refusal(self, code: str, uid: str | None, doing: str) -> EnrolmentError:
        user = f"user {uid}" if uid else "the users"
        if code == "AccessDenied":
            return EnrolmentError(f"the centre's credential lacks the RGW caps users=*,user-policy=* needed to {doing} {user} ({CAPS_HINT})")
        if code == "UserAlreadyExists":
            return EnrolmentError(f"RGW {user} exists already: the station is enrolled (`stations suspend` it, or remove the user to enrol it anew)")
        if code in ("NoSuchUser", "NoSuchEntity"):
            return EnrolmentError(f"RGW has no {user}: no such station enrolled")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return EnrolmentError(f"{self.endpoint} refuses the centre's credential ({code})")
        return EnrolmentError(f"RGW refused to {doing} {user}: {code}")

    def _send(self, method: str, url: str, service: str, body: str | None, headers: dict[str, str]) -> tuple[int, bytes]:
        from botocore.auth import S3SigV4Auth, SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.exceptions import HTTPClientError

        request = AWSRequest(method=method, url=url, data=body, headers=headers)
        # RGW's admin API checks S3's signature, which covers the payload hash header; IAM is signed as AWS signs it
        (S3SigV4Auth if service == "s3" else SigV4Auth)(self._credentials, service, IAM_REGION).add_auth(request)
        try:
            response = self._http.send(request.prepare())
        except HTTPClientError as error:
            raise EnrolmentError(f"{self.endpoint}: cannot reach the server: {str(error).splitlines()[0]}") from None
        return response.status_code, response.content[:1_000_000]


def ensure_centre_grant(client: Any, bucket: str, prefix: str) -> bool:
    """Make the bucket's policy let its owner read what stations write under `prefix` (RGW; see the module's
    docstring), with the centre's botocore S3 `client`. True when the policy was changed."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        owner = client.get_bucket_acl(Bucket=bucket)["Owner"]["ID"]
        try:
            current = json.loads(client.get_bucket_policy(Bucket=bucket)["Policy"])
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "NoSuchBucketPolicy":
                raise
            current = None
        policy = centre_grant(bucket, prefix, str(owner), current)
        if policy is not None:
            client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code") or "error"
        if code == "NoSuchBucket":
            raise EnrolmentError(f"s3://{bucket}: no such bucket (create it with the centre's credential first)") from None
        raise EnrolmentError(f"s3://{bucket}: cannot let the centre read what stations write (bucket policy: {code})") from None
    except BotoCoreError as error:
        raise EnrolmentError(f"s3://{bucket}: {str(error).splitlines()[0]}") from None
    return policy is not None
