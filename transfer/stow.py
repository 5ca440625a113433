"""A DICOM series into a PACS by STOW-RS (DICOMweb), resumable, each instance verified by the PACS's own answer.

The PACS is the journal: before each batch a QIDO-RS search lists the SOP Instance UIDs it holds of the series, and
only the others are stored, so a rerun after an outage (or a retry after a batch whose answer was lost) sends only
what is missing, and a rerun of a finished series sends nothing. An instance counts as sent only when the STOW
answer lists it in its ReferencedSOPSequence; one in FailedSOPSequence (or not listed at all) fails the run in one
line naming the PACS's reason. Connection failures, timeouts, 408/429 and 5xx answers are retried with back-off,
then reported as a `NetworkError` (exit 3: run again later).

Credentials come from the environment, never the command line (where `ps` and shell history would show them):
SLIDESTREAM_PACS_TOKEN (a bearer token), or SLIDESTREAM_PACS_USER and SLIDESTREAM_PACS_PASSWORD (basic auth).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

import pydicom
import requests
from dicomweb_client import DICOMwebClient
from pydicom.errors import InvalidDicomError

from slides.errors import printable
from transfer.errors import CredentialsError, DestinationError, NetworkError, TransferError

TOKEN_ENV = "SLIDESTREAM_PACS_TOKEN"
USER_ENV = "SLIDESTREAM_PACS_USER"
PASSWORD_ENV = "SLIDESTREAM_PACS_PASSWORD"
SOP_INSTANCE_UID = "00080018"
BATCH_BYTES = 256 * 1024 * 1024  # dicomweb-client builds a request's whole multipart body in memory
RETRY_STATUSES = {408, 429}  # and every 5xx: the PACS (or a proxy before it) is busy or down
TIMEOUT_S = 60.0  # per connect and per read of an answer: a PACS writes a large batch before it answers
T = TypeVar("T")


class PacsError(TransferError):
    """The PACS refused an instance or a request, or the series to send is not one it should get."""


@dataclass(frozen=True)
class Instance:
    """One DICOM file of the series: where it is and the UIDs that place it in the PACS."""

    path: Path
    study: str
    series: str
    sop_instance: str
    size: int


@dataclass(frozen=True)
class StowResult:
    """What a run did: the instances of the series, those the PACS already held, those it took now."""

    study: str
    series: list[str]
    instances: int
    already: int
    sent: int

    def summary(self) -> dict[str, object]:
        return {"study": self.study, "series": self.series, "instances": self.instances, "already": self.already, "sent": self.sent}


def read_series(folder: Path, identified: bool = False) -> list[Instance]:
    """The DICOM files of `folder` (one study; headers only), refused unless each says its patient identity was
    removed: a scanner's own series would carry the patient's name into the PACS under slidestream's name.
    `identified`: the station's own export for its own PACS (`hospital.pacs`), which names the patient on purpose."""
    files = sorted(path for path in folder.iterdir() if path.is_file()) if folder.is_dir() else []
    instances = []
    for path in files:
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
            study, series, sop = str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID), str(dataset.SOPInstanceUID)
        except (InvalidDicomError, AttributeError, OSError, ValueError) as error:
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise PacsError(f"{path}: not a DICOM instance to send ({printable(reason)})") from None
        if not identified and dataset.get("PatientIdentityRemoved") != "YES":
            raise PacsError(f"{path}: not de-identified (PatientIdentityRemoved is not YES); "
                            "export it with `slidestream export-dicom`")
        instances.append(Instance(path, study, series, sop, path.stat().st_size))
    if not instances:
        raise PacsError(f"{folder}: no DICOM files to send")
    if len({instance.study for instance in instances}) > 1:
        raise PacsError(f"{folder}: the files belong to more than one study; send one case at a time")
    return instances


def credentials(environ: Mapping[str, str] = os.environ) -> tuple[str | None, tuple[str, str] | None]:
    """The bearer token, or the user and password, the environment gives for the PACS."""
    token, user, password = environ.get(TOKEN_ENV), environ.get(USER_ENV), environ.get(PASSWORD_ENV)
    if token and user:
        raise DestinationError(f"both {TOKEN_ENV} and {USER_ENV} are set; the PACS gets one kind of credentials")
    if bool(user) != bool(password):
        raise DestinationError(f"{USER_ENV} and {PASSWORD_ENV} go together; one of them is not set")
    return token or None, (user, password) if user and password else None


class Pacs:
    """A DICOMweb service root (e.g. Orthanc's http://host:8042/dicom-web) with the calls a resumable send needs."""

    def __init__(self, url: str, token: str | None = None, basic: tuple[str, str] | None = None, retries: int = 5,
                 backoff_s: float = 1.0, timeout_s: float = TIMEOUT_S) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise DestinationError(f"{printable(url)}: not a DICOMweb URL (http:// or https://HOST/PATH)")
        if parts.username or parts.password:
            raise DestinationError(f"the PACS URL holds credentials; put them in {USER_ENV} and {PASSWORD_ENV} instead")
        self.url = url.rstrip("/")
        session = requests.Session()
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        session.auth = basic
        self._client = DICOMwebClient(self.url, session=session, timeout=timeout_s)
        self._client.set_http_retry_params(retry=False)  # retried here, with a new look at what the PACS holds
        self._retries = retries
        self._backoff_s = backoff_s

    def held(self, study: str, series: str) -> set[str]:
        """The SOP Instance UIDs of `series` the PACS holds (QIDO-RS, every page)."""
        found = self._client.search_for_instances(study, series, fields=[SOP_INSTANCE_UID], get_remaining=True)
        return {str(item[SOP_INSTANCE_UID]["Value"][0]) for item in found if item.get(SOP_INSTANCE_UID, {}).get("Value")}

    def store(self, study: str, batch: list[Instance]) -> None:
        """STOW-RS one batch; returns only when the PACS's answer lists every instance of it as stored."""
        datasets = [pydicom.dcmread(instance.path) for instance in batch]
        try:
            answer = self._client.store_instances(datasets, study_instance_uid=study)
        except requests.HTTPError as error:  # 409 and 4xx: the answer may still say which instances failed and why
            refused = _dicom_json(error.response)
            if refused is None or not refused.get("FailedSOPSequence"):
                raise
            answer = refused
        failed = {str(item.ReferencedSOPInstanceUID): str(item.get("FailureReason", "?"))
                  for item in answer.get("FailedSOPSequence", [])}
        stored = {str(item.ReferencedSOPInstanceUID) for item in answer.get("ReferencedSOPSequence", [])}
        for instance in batch:
            if instance.sop_instance in failed:
                raise PacsError(f"{self.url}: the PACS refused {instance.path.name} (failure reason {failed[instance.sop_instance]})")
            if instance.sop_instance not in stored:
                raise PacsError(f"{self.url}: the PACS's answer does not list {instance.path.name} as stored")

    def retried(self, call: Callable[[], T], left: int, total: int) -> T:
        """`call`, again after a network failure or a busy PACS (back-off doubling from `backoff_s`); one line at the
        end: exit 3 (try later) for the network, exit 2 for an answer that will not change."""
        for attempt in range(self._retries + 1):
            try:
                return call()
            except (requests.ConnectionError, requests.Timeout) as error:
                problem = f"cannot reach the PACS ({type(error).__name__})"
            except requests.HTTPError as error:
                status = error.response.status_code if error.response is not None else 0
                if status in (401, 403):
                    raise CredentialsError(f"{self.url}: the PACS refused the credentials (HTTP {status}); "
                                           f"set {TOKEN_ENV}, or {USER_ENV} and {PASSWORD_ENV}") from None
                if status not in RETRY_STATUSES and status < 500:
                    raise PacsError(f"{self.url}: the PACS answered HTTP {status}{_reason(error.response)}") from None
                problem = f"the PACS answered HTTP {status}"
            if attempt < self._retries:
                time.sleep(self._backoff_s * 2**attempt)
        raise NetworkError(f"{self.url}: {problem} after {self._retries + 1} tries; {left} of {total} instances not sent yet, "
                           "run the same command again to send them")


def send_series(instances: list[Instance], pacs: Pacs, batch_size: int = 16) -> StowResult:
    """Store in `pacs` the instances it does not hold yet, `batch_size` (and at most BATCH_BYTES) per request."""
    study = instances[0].study
    series = sorted({instance.series for instance in instances})
    total = len(instances)

    confirmed: set[str] = set()  # by this run's STOW answers: held even where the PACS's search lags behind its store

    def missing() -> list[Instance]:
        held = confirmed.union(*(pacs.held(study, uid) for uid in series))
        return [instance for instance in instances if instance.sop_instance not in held]

    def store_next() -> list[Instance]:
        """One batch of what the PACS lacks now (after a lost answer, the PACS may hold part of the last batch)."""
        unsent = missing()
        batch = next(_batches(unsent, batch_size), [])
        if batch:
            pacs.store(study, batch)
            confirmed.update(instance.sop_instance for instance in batch)
        return [instance for instance in unsent if instance.sop_instance not in confirmed]

    remaining = pacs.retried(missing, total, total)
    already = total - len(remaining)
    while remaining:
        remaining = pacs.retried(store_next, len(remaining), total)
    return StowResult(study, series, total, already, total - already)


def _batches(instances: list[Instance], batch_size: int) -> Iterator[list[Instance]]:
    batch: list[Instance] = []
    for instance in instances:
        if batch and (len(batch) >= batch_size or sum(item.size for item in batch) + instance.size > BATCH_BYTES):
            yield batch
            batch = []
        batch.append(instance)
    if batch:
        yield batch


def _dicom_json(response: requests.Response | None) -> pydicom.Dataset | None:
    """A STOW answer's body (DICOM JSON) when it has one."""
    if response is None or "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        return pydicom.Dataset.from_json(response.json())
    except (ValueError, TypeError, KeyError):
        return None


def _reason(response: requests.Response | None) -> str:
    text = response.text.strip().splitlines()[0][:200] if response is not None and response.text.strip() else ""
    return f": {printable(text)}" if text else ""
