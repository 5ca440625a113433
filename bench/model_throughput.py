"""Tiles per second of the default triage model on the CPU, by batch size and torch thread count.

The slide's tiles arrive faster than a CPU can classify them, so this number decides how much of a slide gets a
heatmap before the pathologist looks. Run from the repository root:

    python3 bench/model_throughput.py [--batches 8 32] [--threads 1 2] [--seconds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from inference.model import TileModel, load_model  # noqa: E402

TILES = Path(__file__).resolve().parents[2] / "shared/tiles"


def real_tiles(size: int) -> np.ndarray:
    """224x224 crops of the sample tiles, so the timing sees real H&E rather than noise."""
    crops = []
    for path in sorted(TILES.glob("*/*")):
        with Image.open(path) as im:
            img = np.asarray(im.convert("RGB"))
        for y in range(0, img.shape[0] - size + 1, size):
            for x in range(0, img.shape[1] - size + 1, size):
                crops.append(img[y:y + size, x:x + size])
    return np.stack(crops)


def throughput(model: TileModel, tiles: np.ndarray, batch: int, seconds: float) -> tuple[float, float]:
    """(tiles/s of wall time, CPU ms per tile) over whole batches, after one warm-up batch, for at least `seconds`.

    CPU time is reported too because on a shared machine other work lowers the wall-clock rate but hardly the CPU
    cost per tile.
    """
    batches = [np.take(tiles, np.arange(i, i + batch), axis=0, mode="wrap") for i in range(0, len(tiles), batch)]
    model.predict(batches[0])
    done, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - start) < seconds:
        model.predict(batches[(done // batch) % len(batches)])
        done += batch
    return done / elapsed, 1000 * (time.process_time() - cpu_start) / done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=5.0, help="minimum timed run per cell")
    args = parser.parse_args()

    model = load_model()
    tiles = real_tiles(model.spec.input_size)
    print(f"{model.spec.name}: {len(tiles)} real 224x224 tiles, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads available by default")
    print(f"{'threads':>7} {'batch':>5} {'tiles/s':>8} {'CPU ms/tile':>11}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batches:
            rate, cpu_ms = throughput(model, tiles, batch, args.seconds)
            print(f"{threads:>7} {batch:>5} {rate:>8.1f} {cpu_ms:>11.1f}")


if __name__ == "__main__":
    main()
