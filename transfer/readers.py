"""The readers' S3 client: obstore (Rust, async, pooled connections) for the viewer and inference, made in one place.

The sender writes through botocore (it needs per-request hooks); everything that reads a store (the viewer's tiles,
inference's zarr arrays and manifests) shares this one way to reach it: the one endpoint check, boto3's credential
chain, plain HTTP only for an http:// endpoint. Callers choose how patient they are (a viewer answers within
seconds; a batch may wait).
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import obstore.exceptions
from obstore.store import S3Store

from transfer.errors import CredentialsError, DestinationError
from transfer.target import parse_endpoint


def object_store(
    bucket: str, prefix: str = "", endpoint_url: str | None = None, *, timeout: float = 60, retry_config: dict[str, Any] | None = None
) -> S3Store:
    """An obstore client for `bucket` (under `prefix`) with the standard AWS credential chain (environment, ~/.aws,
    SSO, instance profile); `endpoint_url` None means AWS or $AWS_ENDPOINT_URL."""
    import boto3  # only S3 stores need it: local folders never pay its import
    from obstore.auth.boto3 import Boto3CredentialProvider

    endpoint = parse_endpoint(endpoint_url) or os.environ.get("AWS_ENDPOINT_URL")
    session = boto3.Session()
    try:
        credentials = Boto3CredentialProvider(session)
    except ValueError:
        raise CredentialsError(f"s3://{bucket}: no AWS credentials found (environment, ~/.aws or instance profile)") from None
    config: dict[str, object] = {"region": session.region_name or "us-east-1"}
    if endpoint:
        config["endpoint"] = endpoint
    options = {"allow_http": bool(endpoint and endpoint.startswith("http://")), "connect_timeout": timedelta(seconds=5), "timeout": timedelta(seconds=timeout)}
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
        raise DestinationError(f"s3://{bucket}: {str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
