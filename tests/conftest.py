"""Shared fixtures: the sample slides beside the repo, a real S3-compatible server and a headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import pytest

if TYPE_CHECKING:
    from support import Orthanc

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SLIDES = SHARED / "slides"

# every sample that is a real slide (broken.svs and synthetic-unreadable.svs are bad input, tested apart)
OPENSLIDE_SAMPLES = [
    "CMU-1-Small-Region.svs",
    "TCGA-CR-7395-jp2k.svs",
    "ndpi-fluorescence-DAPI.ndpi",
    "camelyon-lymphnode.dcm",
    "wsi2dcm-jpeg.dcm",
    "wsi2dcm-jpeg2000.dcm",
    "synthetic-boxes.tiff",
]
ALL_SAMPLES = [*OPENSLIDE_SAMPLES, "kidney-ihc-strip.tif"]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = REPO / "test-output"  # screenshots for a human to look at (git-ignored)


def sample(name: str) -> Path:
    path = SLIDES / name
    if not path.exists():
        pytest.fail(f"sample slide missing: {path} (the tests expect ../shared beside the repository)")
    return path


@dataclass(frozen=True)
class S3Server:
    """Where the real S3-compatible server listens, with the credentials to use it."""

    endpoint_url: str
    name: str

    def client(self):  # type: ignore[no-untyped-def]
        return boto3.client("s3", endpoint_url=self.endpoint_url)

    def new_bucket(self) -> str:
        bucket = f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """The server `.ci/s3-server start` launched (CI), or a moto server started here for a developer's run."""
    endpoint = os.environ.get("SLIDESTREAM_TEST_S3_ENDPOINT")
    if endpoint:
        yield S3Server(endpoint, os.environ.get("SLIDESTREAM_TEST_S3_SERVER", "external"))
        return
    if os.environ.get("CI"):
        pytest.fail("CI must start the S3 server (.ci/s3-server start) and export SLIDESTREAM_TEST_S3_ENDPOINT")
    moto = shutil.which("moto_server")
    if moto is None:
        pytest.skip("no S3 server: run `eval $(.ci/s3-server start)` or pip install -e '.[test]'")
    from support import free_port, wait_for_port  # here: support imports this module

    port = free_port()
    process = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    wait_for_port(port, "the moto S3 server")
    try:
        yield S3Server(f"http://127.0.0.1:{port}", "moto (started by conftest)")
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} missing: .ci/apt-packages should have installed chromium")
        pytest.skip(f"no {CHROMIUM}: apt-get install chromium")
    SHOTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):  # type: ignore[no-untyped-def]
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    yield page
    context.close()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> Iterator[str]:
    """A fresh, empty bucket on the real server, emptied and deleted afterwards: an RGW user holds at most 1,000
    buckets, which a developer's repeated runs against one server reach."""
    bucket = s3_server.new_bucket()
    yield bucket
    delete_bucket(s3_server.client(), bucket)


def delete_bucket(client, bucket: str) -> None:  # type: ignore[no-untyped-def]
    """Empty `bucket` (objects and unfinished multipart uploads) and delete it; best effort (a test may have broken it)."""
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        client.delete_bucket(Bucket=bucket)
    except Exception:  # noqa: BLE001 - cleanup must never fail a test
        pass


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """Debian's Orthanc with DICOMweb on loopback, one per test module (tests/support/__init__.py `Orthanc`)."""
    from support import DICOMWEB_PLUGIN, ORTHANC, Orthanc  # here: support imports this module

    if ORTHANC is None or not DICOMWEB_PLUGIN.is_file():
        reason = "Orthanc with its DICOMweb plugin is not installed (apt-get install orthanc orthanc-dicomweb)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI installs them from .ci/apt-packages")
        pytest.skip(reason)
    server = Orthanc(tmp_path_factory.mktemp("orthanc"))
    server.start()
    yield server
    server.stop()
