"""Synthetic slides whose heatmap is known: glass with textured squares, scored by a tiny model whose score is the fraction of dark pixels in its tile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import torch
from PIL import Image

from inference import ModelRef, ModelSpec

MPP = 0.5
DARK_SPEC = ModelSpec(name="dark-fraction", input_size=64, mpp=1.0, class_names=("glass", "dark"), score_classes=(1,))
TILE = DARK_SPEC.input_size * DARK_SPEC.mpp / MPP  # 128 level-0 px
PURPLE, PINK = (120, 60, 140), (235, 175, 215)


class DarkFraction(torch.nn.Module):
    """Logits whose softmax is (1 - f, f), f = fraction of pixels darker than mid-grey."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dark = (x.mean(dim=1) < 0.5).float().mean(dim=(1, 2)).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.log1p(-dark), torch.log(dark)], dim=1)


def save_dark_model(folder: Path) -> ModelRef:
    """The dark-fraction model as a TorchScript file in `folder`, with its spec."""
    path = folder / "dark.torchscript.pt"
    torch.jit.script(DarkFraction()).save(str(path))
    return ModelRef(str(path), DARK_SPEC)


def write_slide(path: Path, size: tuple[int, int], squares: list[tuple[int, int, int, int, tuple[int, int, int]]]) -> Path:
    """A pyramidal tiled TIFF at MPP um/px: glass with textured squares (x0, y0, x1, y1, colour)."""
    width, height = size
    rng = np.random.default_rng(1)
    pixels = np.full((height, width, 3), 240, np.uint8)
    for x0, y0, x1, y1, colour in squares:
        texture = rng.integers(-25, 26, (y1 - y0, x1 - x0, 3))
        pixels[y0:y1, x0:x1] = np.clip(np.array(colour) + texture, 0, 255)
    with tifffile.TiffWriter(path) as tif:
        level = pixels
        while True:  # openslide reads successive smaller pages as levels; tissue detection reads a small one
            tif.write(level, tile=(256, 256), photometric="rgb", compression="deflate", subfiletype=int(level is not pixels),
                      resolution=(1e4 / MPP * level.shape[1] / width,) * 2, resolutionunit="CENTIMETER")
            if max(level.shape[:2]) <= 1024:
                return path
            level = np.asarray(Image.fromarray(level).reduce(2))
