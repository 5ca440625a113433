"""A reader with nothing of slidestream reads a sent case exactly: a fresh virtual environment with what the README
tells a reader to install from the package registry, reading the real S3 server.

The README's reader instructions are `READER_PACKAGES` and the codec registration in `READER`: zarr, ome-zarr,
ome-zarr-models and imagecodecs, and imagecodecs' Zarr 3 JPEG codec registered with zarr. The registry's imagecodecs
may not have that codec yet (`imagecodecs.zarr`, from 2026.5.10, for Python 3.12 and later; no `imagecodecs-zarr`
package exists): the reader then registers a JPEG decoder under the codec's name through zarr's documented
interface (`zarr.registry.register_codec`, which is all `imagecodecs.zarr.register_codecs` does), the one in
tests/tiling/reader, and the test says so in a warning. In that environment zarr, dask, ome-zarr-py and ome-zarr-models
read every level of the image, the tissue label and the heatmap, and every array equals what slidestream's own
reader gives (level 0 is the scanner's JPEG tiles passed through). The environment is built once a day per machine
(`VENV`), from what the registry gives that day; without the registry the test is skipped, saying why.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import REPO, S3Server
from support import STATION, colorectal_context, send_args, slidestream

from caseformat.layout import HEATMAP, IMAGE, SlideRef, qualified_case
from objectstore.location import Location
from slides import open_slide

pytestmark = pytest.mark.slow  # a virtual environment from the registry (about a minute and a half, once a day)

READER_PACKAGES = ["zarr", "ome-zarr", "ome-zarr-models", "imagecodecs"]  # what the README tells a reader to install
VENV = Path(tempfile.gettempdir()) / "slidestream-readers-{day}-{key}"
CODEC_SHIM = Path(__file__).parent / "reader"
CASE = qualified_case(STATION, "reader")
REF = SlideRef(CASE)

# Runs in the clean environment with `python -I`: argv = image URL, heatmap URL, the codec shim's folder, output folder.
READER = r"""
import json, sys
from importlib.metadata import entry_points
from importlib.util import find_spec

image_url, heatmap_url, shim, out = sys.argv[1:5]
assert find_spec("slidestream") is None and find_spec("tiling") is None, "slidestream is importable"
assert not [e for e in entry_points(group="zarr.codecs") if e.name == "imagecodecs_jpeg"], "a codec entry point is visible"

import dask.array
import numpy as np
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_models.v05.image import Image
from ome_zarr_models.v05.image_label import ImageLabel
from ome_zarr_models.v05.labels import Labels

found = {}
try:
    zarr.open_array(image_url + "/0", mode="r")[0, :8, :8]
except Exception as error:  # noqa: BLE001 - what a reader without the codec gets
    found["without_codec"] = f"{type(error).__name__}: {error}"
if find_spec("imagecodecs.zarr") is not None:
    from imagecodecs.zarr import register_codecs
    found["codec"] = "imagecodecs.zarr.register_codecs()"
else:
    sys.path.insert(0, shim)
    from upstream_jpeg import register_codecs
    found["codec"] = "tests/tiling/reader/upstream_jpeg.py through zarr.registry.register_codec"
register_codecs()

group = zarr.open_group(image_url, mode="r")
image = Image.from_zarr(group)
Labels.from_zarr(group["labels"])
ImageLabel.from_zarr(group["labels/tissue"])
paths = [dataset.path for dataset in image.ome_attributes.multiscales[0].datasets]
arrays = {f"image_{path}": np.asarray(group[path][:]) for path in paths}
arrays |= {f"label_{path}": np.asarray(group[f"labels/tissue/{path}"][:]) for path in paths}
for path in paths:  # dask, the way napari and most pipelines read it
    assert (dask.array.from_zarr(group[path]).compute() == arrays[f"image_{path}"]).all(), f"dask level {path}"
nodes = list(Reader(parse_url(image_url))())
multiscale = nodes[0]  # the image itself; its label image follows
assert len(multiscale.data) == len(paths), "ome-zarr-py sees every level"
for path, level in zip(paths, multiscale.data):
    assert (np.asarray(level) == arrays[f"image_{path}"]).all(), f"ome-zarr-py level {path}"
found["ome_zarr_nodes"] = [str(node.zarr) for node in nodes]
if heatmap_url:
    heatmap = zarr.open_group(heatmap_url, mode="r")
    Image.from_zarr(heatmap)
    arrays["heatmap_0"] = np.asarray(heatmap["0"][:])
np.savez(f"{out}/arrays.npz", **arrays)
found["levels"] = paths
print(json.dumps(found))
"""


def reader_environment(packages: list[str] = READER_PACKAGES) -> Path:
    """A virtual environment with `packages` from the registry and nothing of slidestream, made once a day."""
    key = hashlib.sha256(json.dumps([packages, sys.version]).encode()).hexdigest()[:10]
    today = time.strftime("%Y%m%d")
    venv = Path(str(VENV).format(day=today, key=key))
    python = venv / "bin" / "python"
    if (venv / "installed").exists():
        return python
    for stale in venv.parent.glob(VENV.name.format(day="*", key="*")):  # earlier days' (half a gigabyte each)
        if f"-{today}-" not in stale.name:
            shutil.rmtree(stale, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", *packages], capture_output=True, text=True, timeout=900)
    if install.returncode != 0:
        reachable = subprocess.run([str(python), "-m", "pip", "index", "versions", "zarr"], capture_output=True, text=True, timeout=120)
        shutil.rmtree(venv, ignore_errors=True)
        if reachable.returncode != 0:
            pytest.skip(f"the package registry cannot be reached (offline?): {' '.join(reachable.stderr.split())[-300:]}")
        pytest.fail(f"pip install {' '.join(packages)} failed: {install.stderr[-2000:]}")
    (venv / "installed").write_text(subprocess.run([str(python), "-m", "pip", "freeze"], capture_output=True, text=True).stdout)
    return python


@pytest.fixture(scope="module")
def derived_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A derived Aperio-like slide (bench/make_large_slide.py) with JPEG tiles that pass through and an in-between 2x
    level: every kind of level a send writes (passed through, downsampled, the overview)."""
    out = tmp_path_factory.mktemp("derived") / "reader.svs"
    made = subprocess.run([sys.executable, str(REPO / "bench" / "make_large_slide.py"), "--gigabytes", "0.01",
                           "--tissue-fraction", "0.15", "--output", str(out), "--workers", "2"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert made.returncode == 0, made.stderr
    return out


def test_a_clean_environment_reads_a_sent_case_exactly(s3_server: S3Server, s3_bucket: str, tmp_path: Path, derived_slide: Path) -> None:
    python = reader_environment()
    sent = slidestream("send", derived_slide, *send_args(s3_server, s3_bucket, tmp_path / "state", "--case", "reader", "--hub-wait", "0",
                                                          "--context-file", colorectal_context()),
                       timeout=600)  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    store = f"s3://{s3_bucket}/cases"
    analyzed = slidestream("analyze", f"{store}/", "--report", tmp_path / "report.csv", "--coarse", "--endpoint-url", s3_server.endpoint_url,
                           timeout=600)  # fmt: skip
    assert analyzed.returncode == 0, analyzed.stderr
    version = Location.slide_version(Location.parse(store, s3_server.endpoint_url), REF)
    heatmap_url = version.child(HEATMAP).url if version.child(HEATMAP).read_bytes("zarr.json") else ""

    env = {**os.environ, "AWS_ENDPOINT_URL": s3_server.endpoint_url}
    run = subprocess.run([str(python), "-I", "-c", READER, version.child(IMAGE).url, heatmap_url, str(CODEC_SHIM), str(tmp_path)],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    if found["codec"] != "imagecodecs.zarr.register_codecs()":
        warnings.warn(f"the registry's imagecodecs has no Zarr 3 codec: the clean reader registered {found['codec']}", stacklevel=1)
    assert "imagecodecs_jpeg" in found.get("without_codec", ""), "zarr alone cannot decode the chunks (the README says why)"

    # slidestream's own reader of the same store, and openslide for the level passed through
    ours = zarr.open_group(version.child(IMAGE).zarr_store(), mode="r")
    read = np.load(tmp_path / "arrays.npz")
    assert found["levels"] == [str(index) for index in range(len(found["levels"]))] and len(found["levels"]) == 5
    for path in found["levels"]:
        np.testing.assert_array_equal(read[f"image_{path}"], np.asarray(ours[path][:]), err_msg=f"image level {path}")
        np.testing.assert_array_equal(read[f"label_{path}"], np.asarray(ours[f"labels/tissue/{path}"][:]), err_msg=f"label level {path}")
    assert (read["image_1"].min(axis=0) < 200).mean() > 0.05, "the 2x level holds the tissue"
    with open_slide(derived_slide) as slide:  # level 0 is the scanner's tiles where there is tissue (glass is not sent)
        tissue = read["label_0"] == 1
        scanned = slide.read_region((0, 0), 0, slide.dimensions)[..., :3]
        assert tissue.mean() > 0.05
        np.testing.assert_array_equal(read["image_0"].transpose(1, 2, 0)[tissue], scanned[tissue])
    assert heatmap_url, "analyze published a heatmap"
    np.testing.assert_array_equal(read["heatmap_0"], np.asarray(zarr.open_group(version.child(HEATMAP).zarr_store(), mode="r")["0"][:]))


LOSSLESS_READER = r"""
import sys
from importlib.util import find_spec

import ngff_zarr
import numpy as np

assert find_spec("slidestream") is None, "slidestream is importable"
images = ngff_zarr.from_ngff_zarr(sys.argv[1]).images
np.savez(sys.argv[2], **{str(index): np.asarray(image.data) for index, image in enumerate(images)})
"""


def test_ngff_zarr_reads_a_lossless_conversion_exactly(tmp_path: Path) -> None:
    """`convert --lossless` (zstd chunks, no JPEG: no codec to register) read by ngff-zarr alone, in a clean
    environment with only it from the registry: every level equals slidestream's own reader."""
    python = reader_environment(["ngff-zarr"])
    out = tmp_path / "lossless.zarr"
    converted = slidestream("convert", "--lossless", REPO.parent / "shared" / "slides" / "CMU-1-Small-Region.svs", out)
    assert converted.returncode == 0, converted.stderr
    run = subprocess.run([str(python), "-I", "-c", LOSSLESS_READER, str(out), str(tmp_path / "levels.npz")],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    read, ours = np.load(tmp_path / "levels.npz"), zarr.open_group(out, mode="r")
    assert len(read.files) == 3
    for index in read.files:
        np.testing.assert_array_equal(read[index], np.asarray(ours[index][:]), err_msg=f"level {index}")
