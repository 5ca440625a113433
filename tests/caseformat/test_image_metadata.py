"""The image's metadata has one reader (`caseformat.image`): what the pyramid writer puts in zarr.json reads back as
written, and a group or level that lies (a path out of the image, a scale of zero, thirty-three levels, an array of
a billion pixels a side) is refused in one line naming the document and the field."""

from __future__ import annotations

import json

import pytest
from conftest import sample
from support import local_pieces

from caseformat.errors import DocumentError
from caseformat.image import ImageAttributes, LevelArray
from slides import open_slide

SLIDE = "CMU-1-Small-Region.svs"


def written(name: str) -> bytes:
    """The zarr.json a send of the sample writes at `name` ("zarr.json", "0/zarr.json")."""
    pieces = local_pieces(sample(SLIDE), "reader.c1", quality=80)
    return next(piece.data for piece in pieces if piece.key.endswith(f"image.zarr/{name}") or piece.key == name)


def test_what_the_writer_puts_in_the_image_group_reads_back() -> None:
    attributes = ImageAttributes.read(written("zarr.json"), "zarr.json")
    with open_slide(sample(SLIDE)) as slide:
        mpp, levels = slide.mpp, len(slide.levels)
    group = json.loads(written("zarr.json"))
    assert attributes.multiscale.paths == [dataset["path"] for dataset in group["attributes"]["ome"]["multiscales"][0]["datasets"]]
    assert len(attributes.multiscale.paths) >= levels
    assert attributes.multiscale.unit == "micrometer"
    assert attributes.multiscale.scale == pytest.approx((mpp[1], mpp[0]))
    assert attributes.mpp == pytest.approx(mpp)
    assert attributes.chunk_checksums and attributes.chunk and attributes.shard_chunks
    level = LevelArray.read(written("0/zarr.json"), "0/zarr.json")
    assert level.jpeg and level.quality == 80
    assert level.chunk == (3, attributes.chunk, attributes.chunk)
    assert level.shard == (3, attributes.chunk * attributes.shard_chunks, attributes.chunk * attributes.shard_chunks)


def hostile_group(change: str) -> bytes:
    group = json.loads(written("zarr.json"))
    multiscale = group["attributes"]["ome"]["multiscales"][0]
    if change == "path out of the image":
        multiscale["datasets"][0]["path"] = "../../centre/x"
    elif change == "zero scale":
        multiscale["datasets"][0]["coordinateTransformations"][0]["scale"] = [1.0, 0.0, 0.5]
    elif change == "thirty-three levels":
        multiscale["datasets"] = multiscale["datasets"][:1] * 33
    elif change == "no multiscale":
        group["attributes"]["ome"]["multiscales"] = []
    elif change == "mpp of text":
        group["attributes"]["slidestream"]["source"]["mpp"] = ["0.5", "0.5"]
    return json.dumps(group).encode()


@pytest.mark.parametrize(("change", "said"), [
    ("path out of the image", "path must be text matching"),
    ("zero scale", "scale must be positive numbers"),
    ("thirty-three levels", "datasets must be a list of at most 32"),
    ("no multiscale", "multiscales must be one multiscale image"),
    ("mpp of text", "source must be an mpp of two positive numbers"),
])  # fmt: skip
def test_a_group_that_lies_is_refused_in_one_line(change: str, said: str) -> None:
    with pytest.raises(DocumentError, match=said) as refused:
        ImageAttributes.read(hostile_group(change), "case x: zarr.json")
    assert str(refused.value).startswith("case x: zarr.json") and "\n" not in str(refused.value)


def test_a_level_that_declares_a_billion_pixels_a_side_is_refused_before_anything_is_sized_by_it() -> None:
    level = json.loads(written("0/zarr.json"))
    level["shape"] = [3, 10**9, 10**9]
    with pytest.raises(DocumentError, match="unreadable: 1,000,000,000 px a side"):
        LevelArray.read(json.dumps(level).encode(), "0/zarr.json")
