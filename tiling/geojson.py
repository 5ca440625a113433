"""A slide version's annotations and AI result as GeoJSON that QuPath imports (File > Import objects, or drag and
drop onto the slide), in QuPath's conventions: a FeatureCollection whose features say what QuPath object they are
(`objectType`), their class (`classification`: name and RGB colour) and their numbers (`measurements`).

- a pathologist's point, line or polygon: an "annotation" (Point, LineString, Polygon), named by its text, locked
  (it is the signed record: edits in QuPath stay in QuPath), its author, time and ID in `metadata`;
- each of the AI's top regions: a "detection" (its level-0 box as a Polygon), measurement "Peak score";
- each scored tile: a "tile" (its box), measurement "Score": QuPath colours tiles by it (Measure > Show
  measurement maps).

Coordinates are level-0 pixels of the slide version, x right and y down, a pixel k spanning [k, k + 1): QuPath's
image space, and the annotations' own. Feature IDs are UUIDs derived from the case, slide version and object, so a
second export of the same results gives the same IDs.
"""

from __future__ import annotations

import uuid
from typing import Any

from caseformat.documents import Annotation
from tiling.results import SlideResults, region_corners

MANUAL_CLASS = {"name": "Pathologist", "color": [255, 200, 0]}
REGION_CLASS = {"name": "AI region", "color": [220, 40, 40]}
TILE_CLASS = {"name": "AI tile", "color": [70, 130, 230]}
GEOMETRY = {"point": "Point", "line": "LineString", "polygon": "Polygon"}


def feature_collection(results: SlideResults) -> dict[str, Any]:
    """Every annotation, then the AI's regions and tiles where there is an AI result a pathologist may see."""
    features = [_annotation(results, annotation) for annotation in results.annotations]
    if results.ai is not None:
        about = {"model": results.ai.model, "detects": results.ai.detects, "slide score": f"{results.ai.score:.4f}"}
        for rank, region in enumerate(results.ai.regions, 1):
            features.append(_feature(results, f"region {rank}", _ring(region_corners(region)), {
                "objectType": "detection", "name": f"AI region {rank}", "classification": REGION_CLASS,
                "measurements": {"Peak score": region.score}, "metadata": about}))  # fmt: skip
        if results.ai.tiles is not None:
            for x0, y0, x1, y1, score in results.ai.tiles.boxes(results.width, results.height):
                features.append(_feature(results, f"tile {x0} {y0}", _ring([(x0, y0), (x1, y0), (x1, y1), (x0, y1)]), {
                    "objectType": "tile", "classification": TILE_CLASS, "measurements": {"Score": score}}))  # fmt: skip
    return {"type": "FeatureCollection", "features": features}


def _annotation(results: SlideResults, annotation: Annotation) -> dict[str, Any]:
    points = [[x, y] for x, y in annotation.points]
    kind = GEOMETRY[annotation.kind]
    geometry = {"type": kind, "coordinates": points[0] if kind == "Point" else [[*points, points[0]]] if kind == "Polygon" else points}
    metadata = {"author": annotation.author.name, "created_at": annotation.created_at, "slidestream_id": annotation.id}
    return _feature(results, f"annotation {annotation.id}", geometry, {
        "objectType": "annotation", "name": annotation.text or annotation.kind, "classification": MANUAL_CLASS,
        "isLocked": True, "metadata": metadata})  # fmt: skip


def _ring(corners: list[tuple[float, float]]) -> dict[str, Any]:
    """A polygon of `corners`, its ring closed as GeoJSON requires."""
    return {"type": "Polygon", "coordinates": [[[x, y] for x, y in [*corners, corners[0]]]]}


def _feature(results: SlideResults, name: str, geometry: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
    identifier = uuid.uuid5(uuid.NAMESPACE_URL, f"slidestream:{results.label}:{name}")
    return {"type": "Feature", "id": str(identifier), "geometry": geometry, "properties": properties}
