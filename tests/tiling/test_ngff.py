"""Open output: independent readers get our pixels and an independent validator accepts every store we write.

- A reader without slidestream (no `tiling` package, no `zarr.codecs` entry point of ours) decodes level 0 of a
  pass-through SVS with a codec that presents itself as imagecodecs' own Zarr 3 JPEG codec (tests/tiling/reader: the
  registry we install from has no imagecodecs release with it yet) to exactly openslide's pixels.
- `ome-zarr-models` validates every image, label image and heatmap `convert`, `send` and `analyze` write, on disk
  and read back from the real S3 server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import openslide
import pytest
import zarr
from conftest import S3Server, sample
from ome_zarr_models.v05.image import Image
from ome_zarr_models.v05.image_label import ImageLabel
from ome_zarr_models.v05.labels import Labels
from reader.upstream_jpeg import UpstreamJpeg
from support import colorectal_context
from typer.testing import CliRunner

from caseformat.layout import HEATMAP, IMAGE, SlideRef
from objectstore.location import Location
from slidestream.cli import app
from tiling.codec import JpegCodec

READER = Path(__file__).parent / "reader"
REPO = Path(__file__).resolve().parents[2]

# Runs with `python -I -S`: only the directories given are importable, so nothing of slidestream can load.
CLEAN_READER = r"""
import sys
from importlib.metadata import entry_points
from importlib.util import find_spec

sys.path[:0] = [sys.argv[1], sys.argv[2]]
assert find_spec("tiling") is None and find_spec("slidestream") is None, "slidestream is importable"
assert not [e for e in entry_points(group="zarr.codecs") if e.name == "imagecodecs_jpeg"], "a codec entry point is visible"
import numpy as np
import zarr
from zarr.registry import get_codec_class

import upstream_jpeg

upstream_jpeg.register_codecs()
assert get_codec_class("imagecodecs_jpeg") is upstream_jpeg.UpstreamJpeg
np.save(sys.argv[4], np.asarray(zarr.open_array(sys.argv[3], mode="r")[:]))
"""


def convert_cli(name: str, out: Path) -> Path:
    run = subprocess.run([sys.executable, "-m", "slidestream", "convert", str(sample(name)), str(out)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr
    return out


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`slidestream convert` of a pass-through SVS (3 levels), a JPEG 2000 SVS (re-encoded) and a dark-field NDPI (4)."""
    root = tmp_path_factory.mktemp("converted")
    names = ["CMU-1-Small-Region.svs", "TCGA-CR-7395-jp2k.svs", "ndpi-fluorescence-DAPI.ndpi"]
    return {name: convert_cli(name, root / f"{Path(name).stem}.ome.zarr") for name in names}


@pytest.fixture(scope="module")
def site_without_slidestream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This environment's site-packages minus slidestream (its editable finder, .pth files and dist-info)."""
    site = Path(sysconfig.get_paths()["purelib"])
    clean = tmp_path_factory.mktemp("site")
    for entry in site.iterdir():
        if entry.name.startswith(("slidestream", "__editable__")) or entry.suffix == ".pth":
            continue
        (clean / entry.name).symlink_to(entry)
    return clean


def test_a_reader_without_slidestream_decodes_passthrough_level0_to_openslides_pixels(converted, site_without_slidestream, tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = converted["CMU-1-Small-Region.svs"]
    codec = json.loads((store / "0" / "zarr.json").read_text())["codecs"][0]["configuration"]["codecs"][-1]
    assert codec == {"name": "imagecodecs_jpeg", "configuration": {"level": 90}}
    out = tmp_path / "level0.npy"
    run = subprocess.run(
        [sys.executable, "-I", "-S", "-c", CLEAN_READER, str(site_without_slidestream), str(READER), str(store / "0"), str(out)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    reference = np.asarray(openslide.OpenSlide(sample("CMU-1-Small-Region.svs")).read_region((0, 0), 0, (2220, 2967)))[..., :3]
    np.testing.assert_array_equal(np.load(out).transpose(1, 2, 0), reference)


def test_our_codec_reads_upstreams_configuration_and_the_old_one() -> None:
    upstream = UpstreamJpeg.from_dict({"name": "imagecodecs_jpeg", "configuration": {"level": 85, "subsampling": "444", "colorspace_jpeg": "YCBCR"}})
    ours = JpegCodec.from_dict(upstream.to_dict())
    assert ours.to_dict() == upstream.to_dict()
    assert UpstreamJpeg.from_dict(JpegCodec().to_dict()).to_dict() == JpegCodec().to_dict() == {"name": "imagecodecs_jpeg", "configuration": {"level": 90}}
    # images written before the change say "quality", which upstream refuses: ours still reads them
    legacy = {"name": "imagecodecs_jpeg", "configuration": {"quality": 70}}
    assert JpegCodec.from_dict(legacy).level == 70
    with pytest.raises(TypeError, match="quality"):
        UpstreamJpeg.from_dict(legacy)


# -- NGFF 0.5 validity -----------------------------------------------------------------------------------------
def validate_image(group: zarr.Group) -> Image:
    """ome-zarr-models' validation of an image and its tissue label image, plus what the strict 0.5 schema wants."""
    image = Image.from_zarr(group)  # also checks that each label image has the image's number of levels
    Labels.from_zarr(group["labels"])
    label = ImageLabel.from_zarr(group["labels/tissue"])
    (multiscale,) = image.ome_attributes.multiscales
    (label_multiscale,) = label.ome_attributes.multiscales
    assert [d.coordinateTransformations[0].scale[1:] for d in multiscale.datasets] == [
        d.coordinateTransformations[0].scale for d in label_multiscale.datasets
    ], "label levels at the image's scales"
    for index, dataset in enumerate(label_multiscale.datasets):
        assert group[f"labels/tissue/{dataset.path}"].shape == group[multiscale.datasets[index].path].shape[1:]
    assert multiscale.type and multiscale.metadata and label_multiscale.type and label_multiscale.metadata
    return image


def validate_heatmap(group: zarr.Group) -> None:
    (multiscale,) = Image.from_zarr(group).ome_attributes.multiscales
    assert multiscale.type and multiscale.metadata


@pytest.mark.parametrize("name", ["CMU-1-Small-Region.svs", "TCGA-CR-7395-jp2k.svs", "ndpi-fluorescence-DAPI.ndpi"])
def test_every_converted_image_and_its_label_validate(converted, name) -> None:  # type: ignore[no-untyped-def]
    group = zarr.open_group(converted[name], mode="r")
    image = validate_image(group)
    assert len(image.ome_attributes.multiscales[0].datasets) >= 3
    label0 = np.asarray(group["labels/tissue/0"][:])
    assert 0 < label0.mean() < 1, "tissue and background in the full-resolution label"


def test_the_label_levels_agree_with_each_other(converted) -> None:  # type: ignore[no-untyped-def]
    """A coarser label pixel is tissue exactly where some finer pixel under it is (no tissue lost by downsampling)."""
    group = zarr.open_group(converted["ndpi-fluorescence-DAPI.ndpi"], mode="r")
    fine, coarse = (np.asarray(group[f"labels/tissue/{k}"][:]) for k in ("2", "3"))
    height, width = fine.shape[0] // 2, fine.shape[1] // 2
    blocks = fine[: 2 * height, : 2 * width].reshape(height, 2, width, 2).max(axis=(1, 3))
    assert (coarse[:height, :width] >= blocks).all()
    assert (blocks == coarse[:height, :width]).mean() > 0.99


def test_local_analyze_heatmap_validates(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["analyze", str(sample("CMU-1-Small-Region.svs")), "--report", str(tmp_path / "r.csv"), "--out", str(out), "--coarse",
                                      "--site", "colon"])  # fmt: skip
    assert result.exit_code == 0, result.output
    (heatmap,) = out.glob("*/heatmap.zarr")
    validate_heatmap(zarr.open_group(heatmap, mode="r"))


@pytest.mark.slow  # a send and an analyze of the case
def test_what_send_and_analyze_put_on_s3_validates(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "slidestream", "send", str(sample("CMU-1-Small-Region.svs")), f"s3://{s3_bucket}/cases",
         "--endpoint-url", s3_server.endpoint_url, "--state-dir", str(tmp_path / "state"), "--station", "h1", "--no-edge",
         "--json", "--context-file", str(colorectal_context())],  # a site the model is validated for: analyze maps it
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    case = json.loads(run.stdout)["case"]
    args = ["analyze", f"s3://{s3_bucket}/cases/", "--report", str(tmp_path / "r.csv"), "--coarse", "--endpoint-url", s3_server.endpoint_url]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert SlideRef(case).station == "h1"
    version = Location.slide_version(Location.parse(f"s3://{s3_bucket}/cases", s3_server.endpoint_url), SlideRef(case))
    assert HEATMAP not in {child.name for child in version.sent.subfolders()}, "analyze's final map is the centre's"
    validate_image(zarr.open_group(version.child(IMAGE).zarr_store(), mode="r"))
    validate_heatmap(zarr.open_group(version.child(HEATMAP).zarr_store(), mode="r"))
