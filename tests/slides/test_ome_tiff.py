"""OME-TIFF as Bio-Formats, QuPath and vips write it, on slides generated here with tifffile.

The pixel size, objective and channel names live only in the OME-XML; pyramids are SubIFDs that openslide does not
see; T/Z/C stacks and fluorescence channels are refused in one line; the XML's identifying text never leaves.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
import zarr
from conftest import REPO, sample

import tiling  # noqa: F401 - registers the chunk codec zarr needs to read the converted levels
from slides import UnsupportedSlideError, open_slide

PATIENT = "DOE^JANE"
ACCESSION = "ACC-2024-0001"
TILE = 256


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    """The real command line."""
    return subprocess.run([sys.executable, "-m", "slidestream", *map(str, args)], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=os.environ.copy())


def tissue(width: int, height: int) -> np.ndarray:
    """Real H&E pixels (CMU-1's level 0), so JPEG tiles look like a scanner's."""
    with openslide.OpenSlide(sample("CMU-1-Small-Region.svs")) as source:
        return np.asarray(source.read_region((0, 0), 0, (width, height)).convert("RGB"))


def bioformats_xml(width: int, height: int, size_x: str, unit: str | None, *, channels: int = 1,
                   pixel_type: str = "uint8", samples: int = 3, planes: int = 1) -> str:
    """OME-XML shaped like Bio-Formats' output: identifying text in the Image Name, Description, Experimenter and
    AcquisitionDate, an Instrument whose 40x objective the image refers to, named channels."""
    unit_attributes = f' PhysicalSizeXUnit="{unit}" PhysicalSizeYUnit="{unit}"' if unit else ""
    channel_elements = "".join(
        f'<Channel ID="Channel:0:{index}" Name="{name}" SamplesPerPixel="{samples}"><LightPath/></Channel>'
        for index, name in enumerate(["Brightfield", "FITC", "TRITC", "Cy5"][:channels])
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" Creator="OME Bio-Formats 7.3.0">'
        f'<Experimenter ID="Experimenter:0" FirstName="Jane" LastName="{PATIENT}" Email="{ACCESSION}@example.org"/>'
        '<Instrument ID="Instrument:0"><Objective ID="Objective:0:0" NominalMagnification="40.0"/></Instrument>'
        f'<Image ID="Image:0" Name="{ACCESSION}_{PATIENT}.svs"><AcquisitionDate>2024-01-02T10:11:12</AcquisitionDate>'
        f'<Description>Patient {PATIENT} accession {ACCESSION}</Description>'
        '<InstrumentRef ID="Instrument:0"/><ObjectiveSettings ID="Objective:0:0"/>'
        f'<Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="{pixel_type}" SizeX="{width}" SizeY="{height}" '
        f'SizeC="{channels * samples}" SizeZ="1" SizeT="1" '
        f'PhysicalSizeX="{size_x}" PhysicalSizeY="{size_x}"{unit_attributes} BigEndian="false" Interleaved="true">'
        f'{channel_elements}<TiffData IFD="0" PlaneCount="{planes}"/></Pixels></Image></OME>'
    )


def make_pyramid(path: Path, size_x: str = "0.25", unit: str | None = "µm", levels: int = 3) -> np.ndarray:
    """A pyramidal OME-TIFF as Bio-Formats writes it: level 0 in the main IFD, reduced levels in its SubIFDs, tiled
    JPEG throughout. Returns level 0's pixels."""
    image = tissue(1536, 1280)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        options = {"photometric": "rgb", "tile": (TILE, TILE), "compression": "jpeg", "metadata": None}
        tif.write(image, subifds=levels - 1, description=bioformats_xml(1536, 1280, size_x, unit).encode(), **options)
        for step in range(1, levels):
            tif.write(image[:: 2**step, :: 2**step], subfiletype=1, **options)
    return image


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ome") / f"{ACCESSION}_{PATIENT}.ome.tif"
    make_pyramid(path)
    return path


def test_pixel_size_comes_from_the_ome_xml_in_micrometres(tmp_path: Path) -> None:
    path = tmp_path / "plain.ome.tif"
    tifffile.imwrite(path, tissue(512, 512), photometric="rgb", tile=(TILE, TILE), compression="jpeg",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
    with open_slide(path) as slide:
        assert slide.mpp == (0.25, 0.25)
    result = cli("info", "--json", path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["mpp"] == [0.25, 0.25]


@pytest.mark.parametrize(("size", "unit"), [("250", "nm"), ("0.00025", "mm"), ("0.25", None)])
def test_pixel_size_units_convert_to_micrometres(tmp_path: Path, size: str, unit: str | None) -> None:
    """nm, mm, and no unit at all (the OME schema's default is µm)."""
    path = tmp_path / "units.ome.tif"
    make_pyramid(path, size, unit, levels=1)
    summary = json.loads(cli("info", "--json", path).stdout)
    assert summary["mpp"] == pytest.approx([0.25, 0.25])


def test_objective_and_channel_names_come_from_the_ome_xml(pyramid: Path) -> None:
    with open_slide(pyramid) as slide:
        assert slide.objective_power == 40
        assert slide.channels == ["Brightfield"]
    summary = json.loads(cli("info", "--json", pyramid).stdout)
    assert summary["objective_power"] == 40 and summary["channels"] == ["Brightfield"]
    assert summary["vendor"] == "ome-tiff"


def test_subifd_pyramid_lists_every_level(pyramid: Path) -> None:
    result = cli("info", "--json", pyramid)
    assert result.returncode == 0, result.stderr
    levels = json.loads(result.stdout)["levels"]
    assert [(level["width"], level["height"], level["downsample"], level["raw_tiles"]) for level in levels] == [
        (1536, 1280, 1.0, "jpeg"), (768, 640, 2.0, "jpeg"), (384, 320, 4.0, "jpeg"),
    ]


def test_every_subifd_level_reads_as_tifffile_decodes_it(pyramid: Path) -> None:
    with open_slide(pyramid) as slide:
        for index, level in enumerate(slide.levels):
            expected = tifffile.imread(pyramid, level=index)
            region = slide.read_region((0, 0), index, (level.width, level.height))
            np.testing.assert_array_equal(region, expected)


def test_convert_passes_the_jpeg_tiles_through(pyramid: Path, tmp_path: Path) -> None:
    out = tmp_path / "case.ome.zarr"
    result = cli("convert", pyramid, out)
    assert result.returncode == 0, result.stderr
    level0 = np.asarray(zarr.open_array(out / "0", mode="r")[:]).transpose(1, 2, 0)
    np.testing.assert_array_equal(level0, tifffile.imread(pyramid, level=0))
    with open_slide(pyramid) as slide:
        raw = slide.raw_tile(0, 0, 0)
    assert raw.data[2:] in (out / "0" / "c" / "0" / "0" / "0").read_bytes(), "the stored tile, not a re-encoding"
    scale = json.loads((out / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]["datasets"][0]
    assert scale["coordinateTransformations"][0]["scale"][1:] == pytest.approx([0.25, 0.25])


def test_the_ome_xml_identifying_text_never_leaves(pyramid: Path, tmp_path: Path) -> None:
    secrets = [PATIENT, ACCESSION, "2024-01-02", "Jane"]
    info = cli("info", "--json", pyramid)
    assert info.returncode == 0 and not [secret for secret in secrets if secret in info.stdout]
    out = tmp_path / "case.ome.zarr"
    assert cli("convert", pyramid, out).returncode == 0
    written = [(path, path.read_bytes()) for path in out.rglob("*") if path.is_file()]
    assert written
    assert not [(path, secret) for path, data in written for secret in secrets if secret.encode() in data]


def _stack(path: Path) -> None:
    """5 time points of 3 Z-planes (TZYX), 8-bit grey."""
    tifffile.imwrite(path, np.zeros((5, 3, 256, 256), np.uint8), tile=(128, 128), metadata={"axes": "TZYX"})


def _fluorescence(path: Path) -> None:
    """4 separate 16-bit channels, one plane each, as fluorescence scanners write them."""
    xml = bioformats_xml(512, 512, "0.5", "µm", channels=4, pixel_type="uint16", samples=1, planes=4)
    tifffile.imwrite(path, np.zeros((4, 512, 512), np.uint16), photometric="minisblack", tile=(TILE, TILE),
                     description=xml.encode(), metadata=None)


UNSUPPORTED = {
    "TZYX": (_stack, "5 time points and 3 Z-planes"),
    "fluorescence": (_fluorescence, "4 channels and 16-bit samples"),
}


@pytest.mark.parametrize("command", ["info", "convert", "send"])
@pytest.mark.parametrize("kind", sorted(UNSUPPORTED))
def test_unsupported_ome_tiff_is_one_line_and_exit_2(tmp_path: Path, kind: str, command: str) -> None:
    make, problem = UNSUPPORTED[kind]
    path = tmp_path / "stack.ome.tif"
    make(path)
    with pytest.raises(UnsupportedSlideError, match=problem):
        open_slide(path)
    # the endpoint is well formed but nothing listens there: a send that reached the network would exit 3
    arguments = {"info": [], "convert": [tmp_path / "out.zarr"],
                 "send": ["s3://bucket/cases", "--endpoint-url", "http://127.0.0.1:9", "--state-dir", tmp_path / "state"]}
    result = cli(command, path, *arguments[command])
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and problem in lines[0] and "only single-plane 8-bit RGB(A) or greyscale" in lines[0]
    assert not (tmp_path / "out.zarr").exists()
