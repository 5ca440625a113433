"""The two S3 clients, made in one place with one endpoint check: botocore's for the sender (it needs per-request
hooks) and for listings (`storage.list_s3`), obstore's (Rust, async, pooled connections) for everyone else (the viewer,
the hub, analyze, the station).

Both take credentials from the standard AWS chain and an endpoint checked by `parse_endpoint`; a maker that cannot
make its client raises the store's error family (`objectstore.errors`) with one line. botocore (a quarter of a second
to import) loads on the first client made, so checking an endpoint costs nothing.
"""

from __future__ import annotations

import functools
import os
import urllib.parse
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import obstore.exceptions
from obstore.store import S3Store

from objectstore.errors import AccessDeniedError, EndpointError

if TYPE_CHECKING:
    import botocore.session

MAX_CONCURRENCY = 32  # requests one botocore client keeps in flight at most (the sender's puts)


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
        raise EndpointError(f"{expected}: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") or parts.query or parts.fragment:
        raise EndpointError(expected)
    if parts.username is not None or parts.password is not None:
        raise EndpointError(f"{where}: credentials do not belong in the endpoint URL; use the AWS credential chain")
    if port == 0:
        raise EndpointError(f"{expected}: port 0")
    return endpoint


# -- obstore: the readers ----------------------------------------------------------------------------------------
def object_store(
    bucket: str, prefix: str = "", endpoint_url: str | None = None, *, timeout: float = 60, retry_config: dict[str, Any] | None = None,
    ca_bundle: str | None = None,
) -> S3Store:
    """An obstore client for `bucket` (under `prefix`) with the standard AWS credential chain (environment, ~/.aws,
    SSO, instance profile); `endpoint_url` None means AWS or $AWS_ENDPOINT_URL. Plain HTTP only for an http://
    endpoint; callers choose how patient they are (a viewer answers within seconds; a batch may wait). `ca_bundle`: a
    PEM file of the CA a hospital's store is signed by (--ca-bundle), trusted beside the system's."""
    import boto3  # only S3 stores need it: local folders never pay its import
    from obstore.auth.boto3 import Boto3CredentialProvider

    endpoint = parse_endpoint(endpoint_url) or os.environ.get("AWS_ENDPOINT_URL")
    session = boto3.Session()
    try:
        credentials = Boto3CredentialProvider(session)
    except ValueError:
        raise AccessDeniedError(f"s3://{bucket}: no AWS credentials found (environment, ~/.aws or instance profile)") from None
    config: dict[str, object] = {"region": session.region_name or "us-east-1"}
    if endpoint:
        config["endpoint"] = endpoint
    options = {"allow_http": bool(endpoint and endpoint.startswith("http://")), "connect_timeout": timedelta(seconds=5), "timeout": timedelta(seconds=timeout)}
    if ca_bundle is not None:
        options["root_certificate"] = read_ca_bundle(ca_bundle)
    try:
        return S3Store(
            bucket,
            prefix=prefix or None,
            config=config,  # type: ignore[arg-type]
            credential_provider=credentials,
            client_options=options,  # type: ignore[arg-type]
            **({"retry_config": retry_config} if retry_config else {}),  # type: ignore[arg-type]
        )
    except (obstore.exceptions.BaseError, ValueError) as error:  # obstore refuses a malformed configuration here
        raise EndpointError(f"s3://{bucket}: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None


def read_ca_bundle(path: str) -> bytes:
    """The PEM certificates of --ca-bundle; `EndpointError` naming the file when it cannot be read or holds none
    (obstore would refuse it with a Rust error, botocore only at the first https request)."""
    try:
        pem = Path(path).read_bytes()
    except OSError as error:
        raise EndpointError(f"--ca-bundle {path}: cannot read it: {error.strerror or error}") from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise EndpointError(f"--ca-bundle {path}: not a PEM file of CA certificates")
    return pem


# -- botocore: the sender's -------------------------------------------------------------------------------------
def make_client(endpoint: str | None, ca_bundle: str | None = None) -> Any:
    """An S3 client (botocore's, as boto3 makes) for any S3-compatible server, credentials from the standard AWS chain.

    We retry ourselves (with a deadline the user sets), so botocore makes one attempt per call. We send Content-MD5
    and SHA-256 ourselves, so botocore's own flexible checksums (which older Ceph and MinIO reject) stay off.
    A custom endpoint gets path-style addressing: MinIO and Ceph rarely have wildcard DNS for bucket subdomains.
    """
    from botocore.config import Config

    config = Config(
        retries={"total_max_attempts": 1},
        connect_timeout=5,
        read_timeout=20,
        max_pool_connections=MAX_CONCURRENCY + 8,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if endpoint else None,
    )
    client = _session().create_client("s3", endpoint_url=endpoint, verify=ca_bundle, config=config)
    client.meta.events.register("before-send.s3", _send_body_at_once)
    return client


def _session() -> botocore.session.Session:
    """A fresh botocore session (credentials are looked up anew for every send: keys get rotated under a hot folder
    that runs for months) sharing the API descriptions already parsed, which would cost each slide 0.1 s."""
    import botocore.session

    session = botocore.session.get_session()
    session.register_component("data_loader", _api_descriptions())
    return session


@functools.cache
def _api_descriptions() -> Any:
    """botocore's loader of API descriptions, kept for the process: it caches what it has parsed."""
    import botocore.session

    return botocore.session.get_session().get_component("data_loader")


def _send_body_at_once(request: Any, **_: Any) -> None:
    """Drop botocore's `Expect: 100-continue`: it holds every PUT's body back one round trip for the server's go-ahead
    (20-50 ms on 5G and 4G, a sixth of a shard's time on the wire). What it saves is a body sent in vain when the
    server rejects the request, and the preflight has shown that it accepts ours. The header is not signed."""
    request.headers.pop("Expect", None)
