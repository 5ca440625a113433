"""Where a send goes: s3://BUCKET/PREFIX/stations/{station}/{case}/... on an endpoint, checked before anything is sent.

The layout below the prefix is the case format's (caseformat/layout.py); this module names the bucket, the prefix
and the endpoint, and turns a case's names into a destination the sender and the journal key by.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from caseformat.layout import (
    IMAGE,
    MANIFEST,
    SlideRef,
    image_key,
    station_case_folder,
    validate_case,
    validate_slide,
    validate_version,
)
from objectstore.clients import parse_endpoint
from transfer.errors import DestinationError

# S3 bucket naming rules (3-63 chars, lowercase, digits, dots, hyphens); dotted-quad names are refused by S3 too
BUCKET_PATTERN = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class Destination:
    """One case's folder in a bucket; `endpoint` is None for AWS itself."""

    endpoint: str | None
    bucket: str
    prefix: str  # "" or "a/b" (no leading or trailing slash)
    case: str
    slide: str = "s1"
    version: str = "v1"

    @property
    def ref(self) -> SlideRef:
        return SlideRef(self.case, self.slide, self.version)

    @property
    def case_root(self) -> str:
        """Key prefix of everything the station writes of this case, ending in "/"."""
        return self.key(station_case_folder(self.case))

    @property
    def root(self) -> str:
        """Key prefix of everything the station writes of this slide version, ending in "/"."""
        return self.key(self.ref.root) + "/"

    def key(self, name: str) -> str:
        """The key of `name` relative to the prefix (a case's or the store's own folders, see the module)."""
        return f"{self.prefix}/{name}" if self.prefix else name

    def image_key(self, key: str) -> str:
        return self.key(self.ref.key(image_key(key)))

    @property
    def manifest_key(self) -> str:
        return self.key(self.ref.key(MANIFEST))

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key(self.ref.key(IMAGE))}"

    @property
    def journal_endpoint(self) -> str:
        """The endpoint as the journal keys it: the same bucket name on two servers is two destinations."""
        return self.endpoint or "aws"


def parse_destination(url: str, case: str, endpoint: str | None = None, slide: str = "s1", version: str = "v1") -> Destination:
    """Split s3://BUCKET/PREFIX and check the endpoint, bucket name and IDs before anything is sent."""
    bucket, prefix = parse_store_url(url)
    return Destination(parse_endpoint(endpoint), bucket, prefix, validate_case(case), validate_slide(slide), validate_version(version))


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
