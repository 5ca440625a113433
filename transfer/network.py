"""What sits between the sender's S3 client (`objectstore.clients.make_client`) and the socket: pacing, byte counting,
round-trip samples, error triage."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections import deque
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    SSLError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from transfer.errors import BucketNotFoundError, CredentialsError, NetworkError, TransferError

BLOCK = 64 * 1024  # bytes handed to the socket per read of a request body: the pacing granularity

CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired"}
# the server saw other bytes than the headers promised: a corrupted transfer, so send again
CORRUPTION_CODES = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "IncompleteBody", "InvalidChecksum"}
TRANSIENT_CODES = {"RequestTimeout", "SlowDown", "ServiceUnavailable", "InternalError", "Throttling", "RequestTimeTooSkewed"}

# What a GET of a missing object answers: 404 to a caller that may list the bucket; 403 to an enrolled station, whose
# listing is confined to its own prefixes (a condition a GET does not meet), so for a station's reads of its own and
# its centre folders (`caseformat.layout`) AccessDenied means "not there yet". A policy that denies the read outright
# still shows: the create or LIST that follows is refused.
ABSENT = ("NoSuchKey", "404", "AccessDenied", "403")


class TokenBucket:
    """Paces bytes to `rate` per second for all connections together, with bursts of at most `burst` bytes."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst or max(2 * BLOCK, rate * 0.05)
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def take(self, count: int) -> None:
        """Block until `count` bytes may go; overdrafts are paid back by later callers, so the mean rate holds."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate) - count
            self._stamp = now
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait:
            time.sleep(wait)


class Meter:
    """Sees every request body as the HTTP layer reads it: counts and paces the bytes, notes when the last one left.

    Hooked into botocore's `before-send` event, so it measures what really goes to the network (re-sends
    included, hashing excluded) for every request of the client, s3transfer's multipart parts as well.
    """

    def __init__(self, max_rate: float | None = None) -> None:
        self.bucket = TokenBucket(max_rate) if max_rate else None
        self.sent = 0
        self._lock = threading.Lock()
        self._window: deque[tuple[float, int]] = deque()
        self._rtts: deque[float] = deque(maxlen=32)
        self._local = threading.local()

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-send.s3", self._wrap)

    def _wrap(self, request: Any, **_: Any) -> None:
        if hasattr(request.body, "read"):
            request.body = self._local.body = MeteredBody(request.body, self)

    def count(self, size: int) -> None:
        if self.bucket is not None:
            self.bucket.take(size)
        now = time.monotonic()
        with self._lock:
            self.sent += size
            self._window.append((now, size))
            while self._window and self._window[0][0] < now - 5:
                self._window.popleft()

    def rate(self, seconds: float = 3.0) -> float:
        """Bytes per second over the last few seconds."""
        now = time.monotonic()
        with self._lock:
            recent = sum(size for stamp, size in self._window if stamp >= now - seconds)
        return recent / seconds

    def request_done(self) -> None:
        """Called after a response: the time since this thread's body left is one round-trip sample."""
        body = getattr(self._local, "body", None)
        self._local.body = None
        if body is not None and body.finished is not None:
            with self._lock:
                self._rtts.append(time.monotonic() - body.finished)

    def rtt(self) -> float | None:
        with self._lock:
            return statistics.median(self._rtts) if self._rtts else None


class MeteredBody:
    """A request body that reports each block to the Meter as the HTTP layer reads it for the socket."""

    def __init__(self, inner: Any, meter: Meter) -> None:
        self._inner = inner
        self._meter = meter
        self.finished: float | None = None

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(BLOCK if size is None or size < 0 else min(size, BLOCK))
        if data:
            self._meter.count(len(data))
        else:
            self.finished = time.monotonic()
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()


# -- error triage ----------------------------------------------------------------------------------------------
def error_code(error: BaseException) -> str:
    if isinstance(error, ClientError):
        return str(error.response.get("Error", {}).get("Code", "")) or str(
            error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
        )
    return ""


def is_corruption(error: BaseException) -> bool:
    return error_code(error) in CORRUPTION_CODES


def is_transient(error: BaseException) -> bool:
    """Worth retrying until the deadline: the link or the server is having a moment, nothing is misconfigured."""
    if isinstance(error, SSLError):
        return False
    if isinstance(error, (BotoConnectionError, HTTPClientError)):
        return True
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(error) in TRANSIENT_CODES or status >= 500
    return False


def fatal(error: BaseException, endpoint: str | None, where: str) -> TransferError:
    """One line that says what to fix, for an error that no retry will cure. Credentials are never quoted."""
    server = endpoint or "AWS S3"
    code = error_code(error)
    if isinstance(error, (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)):
        return CredentialsError(
            f"no usable AWS credentials for {server} ({error}): set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials"
        )
    if code in CREDENTIAL_CODES:
        return CredentialsError(f"credentials rejected by {server} ({code})")
    if code in {"AccessDenied", "AllAccessDisabled", "403"}:
        return CredentialsError(f"{server} denied access to {where} (AccessDenied): the credentials may not write there")
    if code in {"NoSuchBucket", "404"}:
        return BucketNotFoundError(f"bucket of {where} does not exist on {server} (NoSuchBucket)")
    if isinstance(error, SSLError):
        return TransferError(f"TLS handshake with {server} failed ({_reason(error)}); a private CA needs --ca-bundle PATH")
    if isinstance(error, (BotoConnectionError, HTTPClientError)):
        return NetworkError(f"cannot reach {server}: {_reason(error)}")
    if isinstance(error, ClientError):
        message = error.response.get("Error", {}).get("Message", "")
        return TransferError(f"{server} refused {where}: {code}{f': {message}' if message else ''}")
    if isinstance(error, BotoCoreError):
        return TransferError(f"{server}: {error}")
    return TransferError(f"{server}: {type(error).__name__}: {error}")


def describe(error: BaseException) -> str:
    """A few words on why a request failed, for messages."""
    if isinstance(error, ClientError):
        return error_code(error)
    return _reason(error)


def _reason(error: BaseException) -> str:
    """The root cause of a connection failure in words (refused, unknown host, timeout, ...)."""
    first = getattr(error, "kwargs", {}).get("error") or error.__cause__ or error.__context__
    cause = first if isinstance(first, BaseException) else None
    seen = 0
    while cause is not None and seen < 8:
        if isinstance(cause, socket.gaierror):
            return "host name does not resolve"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, (TimeoutError, socket.timeout)):
            return "timed out"
        if "Name or service not known" in str(cause) or "NameResolutionError" in type(cause).__name__:
            return "host name does not resolve"
        if "Connection refused" in str(cause):
            return "connection refused"
        following = cause.__cause__ or cause.__context__ or getattr(cause, "reason", None)
        cause = following if isinstance(following, BaseException) else None
        seen += 1
    return str(error)
