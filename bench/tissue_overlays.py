"""Save a tissue-mask overlay PNG for every sample slide, for a visual check of tiling's tissue detection.

    python bench/tissue_overlays.py [SLIDE ...]   # default: all of ../shared/slides; writes bench/out/tissue/
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

from slides import SlidestreamError, open_slide
from tiling.tissue import overview, tissue_mask

OUT = Path(__file__).parent / "out" / "tissue"


def overlay(path: Path) -> Path:
    with open_slide(path) as slide:
        rgb, _ = overview(slide, side=1024)
    mask, darkfield = tissue_mask(rgb)
    tinted = rgb.astype(np.float32)
    tinted[~mask] = tinted[~mask] * 0.35 + np.array([255, 210, 0]) * 0.65  # background in yellow
    side_by_side = np.concatenate([rgb, tinted.astype(np.uint8)], axis=1)
    OUT.mkdir(parents=True, exist_ok=True)
    target = OUT / f"{path.stem}.png"
    Image.fromarray(side_by_side).save(target)
    print(f"{path.name}: tissue {mask.mean():.1%} ({'dark-field' if darkfield else 'bright-field'}) -> {target}")
    return target


def main(paths: list[str]) -> None:
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "slides"
    for path in [Path(p) for p in paths] or sorted(p for p in shared.iterdir() if p.suffix != ".md"):
        try:
            overlay(path)
        except SlidestreamError as error:
            print(f"{path.name}: skipped ({error})")


if __name__ == "__main__":
    main(sys.argv[1:])
