"""Where a case goes: s3://BUCKET/PREFIX/{case}/..., its objects' names, and the pseudonymous case ID.

The layout of a case on the store, defined here once and used by every writer and reader (send, watch, the edge
triage, analyze, serve):

    {case}/image.zarr/      the OME-Zarr image (tiling/)
    {case}/manifest.json    what of the image has arrived, and how the send ended (transfer/manifest.py)
    {case}/pyramid.json     the shards of the in-between levels the hub built (slidestream/hub.py; manifest.py reads it)
    {case}/heatmap.zarr/    the triage heatmap, an NGFF image (inference/)
    {case}/triage.json      the triage result: score, summary, stage (inference/)
    {case}/report.json      the pathologist's report (viewer/)
    {case}/hub.lease        which hub is analysing the case, until when (slidestream/hub.py)
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transfer.errors import DestinationError

IMAGE = "image.zarr"
MANIFEST = "manifest.json"
HEATMAP = "heatmap.zarr"
TRIAGE = "triage.json"
REPORT = "report.json"
LEASE = "hub.lease"
PYRAMID = "pyramid.json"
# triage.json's "stage", what produced it: the edge triage's coarse map before the send, the hub's
# full-magnification map of an arriving case, or a batch `analyze`; only the last two are final
EDGE, HUB, ANALYZE = "edge", "hub", "analyze"
FINAL_STAGES = (HUB, ANALYZE)
CASE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# S3 bucket naming rules (3-63 chars, lowercase, digits, dots, hyphens); dotted-quad names are refused by S3 too
BUCKET_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
SAMPLE = 1 << 20  # bytes read from each end of a file for the case ID


@dataclass(frozen=True)
class Destination:
    """One case's folder in a bucket; `endpoint` is None for AWS itself."""

    endpoint: str | None
    bucket: str
    prefix: str  # "" or "a/b" (no leading or trailing slash)
    case: str

    @property
    def root(self) -> str:
        """Key prefix of everything of this case, ending in "/"."""
        return f"{self.prefix}/{self.case}/" if self.prefix else f"{self.case}/"

    def image_key(self, key: str) -> str:
        return f"{self.root}{IMAGE}/{key}"

    @property
    def manifest_key(self) -> str:
        return self.root + MANIFEST

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.root}{IMAGE}"

    @property
    def journal_endpoint(self) -> str:
        """The endpoint as the journal keys it: the same bucket name on two servers is two destinations."""
        return self.endpoint or "aws"


def is_final(triage: dict[str, Any] | None, model: str | None = None) -> bool:
    """Whether `triage` (triage.json) is a complete full-magnification result (of `model`, when given): an edge
    result, or one from before stages were recorded, never is."""
    return bool(triage and triage.get("complete") and triage.get("stage") in FINAL_STAGES
                and (model is None or triage.get("model") == model))


def parse_destination(url: str, case: str, endpoint: str | None = None) -> Destination:
    """Split s3://BUCKET/PREFIX and check the endpoint, bucket name and case ID before anything is sent."""
    bucket, prefix = parse_store_url(url)
    return Destination(parse_endpoint(endpoint), bucket, prefix, validate_case(case))


def parse_store_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://BUCKET/PREFIX, with S3's bucket naming rules and no empty, '.' or '..' parts."""
    match = re.fullmatch(r"s3://([^/]+)/?(.*)", url)
    if not match:
        raise DestinationError(f"{url}: not an S3 URL (expected s3://BUCKET/PREFIX)")
    bucket, prefix = match.group(1), match.group(2).strip("/")
    if not BUCKET_PATTERN.fullmatch(bucket):
        raise DestinationError(f"{url}: {bucket!r} is not a valid S3 bucket name")
    if prefix and any(part in ("", ".", "..") for part in prefix.split("/")):
        raise DestinationError(f"{url}: the prefix must not contain empty, '.' or '..' parts")
    return bucket, prefix


def parse_endpoint(endpoint: str | None) -> str | None:
    """The one check of an S3 endpoint URL (--endpoint-url, or $AWS_ENDPOINT_URL when it is None, which boto3 and
    obstore read themselves) before any client sees it: http or https, a host, an optional port, nothing else.
    botocore answers a malformed one with a page of traceback and obstore with a Rust panic. Returns `endpoint`."""
    value = endpoint if endpoint is not None else os.environ.get("AWS_ENDPOINT_URL")
    if value is None:
        return None
    where = "--endpoint-url" if endpoint is not None else "AWS_ENDPOINT_URL"
    expected = f"{where} {value!r} is not an endpoint URL (expected http(s)://HOST[:PORT])"
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port  # raises for a port that is no number or out of range
    except ValueError as error:
        raise DestinationError(f"{expected}: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or parts.query or parts.fragment:
        raise DestinationError(expected)
    if parts.username is not None or parts.password is not None:
        raise DestinationError(f"{where}: credentials do not belong in the endpoint URL; use the AWS credential chain")
    if port == 0:
        raise DestinationError(f"{expected}: port 0")
    return endpoint


def validate_case(case: str) -> str:
    """A case ID becomes part of every key: letters, digits, '.', '_', '-', at most 64, never '..'."""
    if not CASE_PATTERN.fullmatch(case) or ".." in case:
        raise DestinationError(
            f"case ID {case!r} is not allowed (1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, no '..')"
        )
    return case


def case_id_for(slide: Path) -> str:
    """A pseudonymous, repeatable case ID from the slide's content, never its name (names hold accession numbers).

    SHA-256 over the size and the first and last MiB of each file: cheap on a 3 GB slide and distinct for distinct
    scans (both ends hold tile data and offsets). A folder (DICOM series) hashes its files in name order.
    """
    slide = Path(slide)
    files = sorted(p for p in slide.rglob("*") if p.is_file()) if slide.is_dir() else [slide]
    digest = hashlib.sha256()
    for path in files:
        with path.open("rb") as handle:
            size = path.stat().st_size
            digest.update(size.to_bytes(8, "little"))
            digest.update(handle.read(SAMPLE))
            if size > SAMPLE:
                handle.seek(max(SAMPLE, size - SAMPLE))
                digest.update(handle.read(SAMPLE))
    return digest.hexdigest()[:16]
