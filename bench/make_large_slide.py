"""Make a large, Aperio-SVS-like derived slide from the real tissue of the sample slides.

The sample slides are all under 4 MB, but performance work needs a 1-3 GB slide. This script
mosaics tissue cut from them (rotated/flipped copies, various sizes) onto a glass-like background
and streams it into a tiled pyramidal BigTIFF with the structure of an Aperio SVS: level 0 and
4x/16x/64x levels in 240x240 JPEG tiles with shared JPEGTables, a thumbnail, a fake label and a
fake macro image, and an Aperio ImageDescription (so openslide reports vendor "aperio" and mpp).

Colour: like real Aperio files (CMU-1 included) the tiles are JPEGs of RGB samples (no YCbCr
transform, no chroma subsampling, components numbered 0-2, no JFIF/Adobe marker), so only the
TIFF Photometric=RGB tag says how to decode them; tifffile also writes the misleading
YCbCrSubSampling 2x2 tag that Aperio writes. We copy this quirk on purpose: a converter that
passes JPEG tiles through (to Zarr, to a browser) meets it exactly as it would with real scans.

Memory stays bounded: every level is rendered tile row by tile row from a compact description
(the source images plus a list of placed pieces), so no level is ever held whole.

    python bench/make_large_slide.py                   # ~1.6 GB: bench/out/derived-large.svs
    python bench/make_large_slide.py --small           # ~50 MB: bench/out/derived-small.svs
    python bench/make_large_slide.py --gigabytes 3 -o /tmp/big.svs
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import imagecodecs
import numpy as np
import openslide
import tifffile
from PIL import Image, ImageDraw, ImageFilter, ImageFont

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SLIDES = REPO.parent / "shared" / "slides"
OUT = REPO / "bench" / "out"

TILE = 240
ALIGN = 64  # piece geometry is a multiple of the largest downsample, so every level lines up
DOWNSAMPLES = (1, 4, 16, 64)
MPP = 0.4990
GLASS = (242, 241, 244)  # near-white glass, never pure 255
NOISE_SIGMA = 2.0  # sensor-like noise, so background tiles are not trivially compressible
LIBRARY = "Aperio Image Library v12.0.16 "
DERIVED = (
    "Derived = SYNTHETIC test slide made by slidestream bench/make_large_slide.py: a mosaic of real"
    " tissue from public sample slides (CMU-1-Small-Region, TCGA-CR-7395, CAMELYON and wsi2dcm"
    " DICOM); label, macro and scanner metadata are fake; not a patient image"
)

# (file, weight in sections, weight in loose fragments): the H&E slides make the sections; the
# wsi2dcm slide has another stain, so it only gives a few small fragments.
SOURCES = (
    ("TCGA-CR-7395-jp2k.svs", 0.5, 0.3),
    ("CMU-1-Small-Region.svs", 0.4, 0.3),
    ("camelyon-lymphnode.dcm", 0.1, 0.3),
    ("wsi2dcm-jpeg.dcm", 0.0, 0.1),
)

T = TypeVar("T")
R = TypeVar("R")


class SlideMakerError(RuntimeError):
    """Raised when the derived slide cannot be made."""


@dataclass(frozen=True)
class Piece:
    """One tissue piece: a crop of a source, turned/flipped, placed on the canvas (level-0 px)."""

    source: int
    crop: tuple[int, int, int, int]  # x, y, w, h in the source
    turns: int  # quarter turns counter-clockwise (np.rot90)
    flip: bool  # mirrored left-right after turning
    x: int
    y: int
    blob: tuple[float, ...]  # (amplitude, phase) per harmonic 2.. of the irregular outline

    @property
    def w(self) -> int:
        return self.crop[3] if self.turns % 2 else self.crop[2]

    @property
    def h(self) -> int:
        return self.crop[2] if self.turns % 2 else self.crop[3]


@dataclass
class Layout:
    """Everything needed to render any tile of any level: small enough to send to workers."""

    width: int
    height: int
    sources: list[dict[int, np.ndarray]]  # per source, per downsample: RGBA uint8 (A = tissue)
    pieces: list[Piece]
    seed: int
    quality: int
    tissue_fraction: float = 0.0  # measured on the 1/64 coverage grid


@dataclass(frozen=True)
class Summary:
    """What was written, for the caller to print or check."""

    path: Path
    dimensions: tuple[int, int]
    level_dimensions: list[tuple[int, int]]
    tissue_fraction: float
    tiles: int
    bytes: int
    seconds: float


# ---------------------------------------------------------------- sources


def load_sources(slides_dir: Path) -> list[dict[int, np.ndarray]]:
    """Read each sample slide's level 0 with openslide and add a soft tissue alpha channel.

    Each source is trimmed to a multiple of ALIGN and pre-reduced for every downsample, averaging
    premultiplied colour so that a reduced piece composites like the reduced full-res piece.
    """
    out = []
    for name, *_ in SOURCES:
        path = slides_dir / name
        if not path.exists():
            raise SlideMakerError(f"sample slide not found: {path}")
        with openslide.OpenSlide(path) as slide:
            w, h = slide.dimensions
            rgb = np.asarray(slide.read_region((0, 0), 0, (w, h)).convert("RGB"))
        rgb = rgb[: h // ALIGN * ALIGN, : w // ALIGN * ALIGN]
        rgba = np.dstack([rgb, tissue_alpha(rgb)])
        levels = {1: rgba}
        image = Image.fromarray(rgba, "RGBA").convert("RGBa")
        for prev, ds in zip(DOWNSAMPLES, DOWNSAMPLES[1:]):
            image = image.reduce(ds // prev)  # box filter on premultiplied colour
            levels[ds] = np.asarray(image.convert("RGBA"))
        out.append(levels)
    return out


def tissue_alpha(rgb: np.ndarray) -> np.ndarray:
    """Soft tissue mask: coloured or darker than the slide's own background."""
    r, g, b = (rgb[..., i].astype(np.float32) for i in range(3))
    sat = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)
    lum = (r + g + b) / 3
    grey = lum[::4, ::4][sat[::4, ::4] < 15]
    background = np.percentile(grey, 90) if grey.size else 255.0
    a = np.maximum(np.clip((sat - 12) / 18, 0, 1), np.clip((background - 20 - lum) / 30, 0, 1))
    mask = Image.fromarray((a * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))
    return np.asarray(mask)


# ---------------------------------------------------------------- geometry and rendering


def piece_pixels(sources: list[dict[int, np.ndarray]], p: Piece, ds: int) -> np.ndarray:
    """The piece's RGBA at downsample ds, turned and flipped (a view, no copy)."""
    x, y, w, h = (v // ds for v in p.crop)
    view = np.rot90(sources[p.source][ds][y : y + h, x : x + w], p.turns)
    return view[:, ::-1] if p.flip else view


def blob_alpha(p: Piece, ds: int, x0: int, y0: int, w: int, h: int) -> np.ndarray | float:
    """Alpha of the piece's irregular outline over a window (level px, relative to the piece).

    A star-shaped blob inscribed in the crop, so cut edges never show as straight lines.
    Returns a scalar 1.0 or 0.0 when the window is entirely inside or outside.
    """
    rx, ry = p.w / 2, p.h / 2
    edge = max(16.0, 1.5 * ds) / min(rx, ry)
    amps = p.blob[0::2]
    u0, u1 = ((x0 + 0.5) * ds - rx) / rx, ((x0 + w - 0.5) * ds - rx) / rx
    v0, v1 = ((y0 + 0.5) * ds - ry) / ry, ((y0 + h - 0.5) * ds - ry) / ry
    far = math.hypot(max(abs(u0), abs(u1)), max(abs(v0), abs(v1)))
    near = math.hypot(max(u0, 0.0, -u1), max(v0, 0.0, -v1))
    scale = 0.92 - edge  # keep clear of the crop edges, which would show as straight cuts
    if far <= scale * (1 - sum(amps)) - edge:
        return 1.0
    if near >= scale + edge:
        return 0.0
    u = ((np.arange(x0, x0 + w, dtype=np.float32) + 0.5) * ds - rx) / rx
    v = ((np.arange(y0, y0 + h, dtype=np.float32) + 0.5) * ds - ry) / ry
    rho = np.hypot(u[None, :], v[:, None])
    # the outline radius changes slowly with angle: evaluate it on every 8th pixel only
    theta = np.arctan2(v[4::8, None], u[None, 4::8]) if w > 8 and h > 8 else np.arctan2(v[:, None], u[None, :])
    r = np.ones_like(theta)
    for k, (amp, phase) in enumerate(zip(p.blob[0::2], p.blob[1::2]), start=2):
        r -= amp * (1 + np.cos(k * theta + phase)) / 2
    if r.shape != rho.shape:
        r = np.repeat(np.repeat(r, 8, axis=0), 8, axis=1)
        r = np.pad(r, ((0, max(0, h - r.shape[0])), (0, max(0, w - r.shape[1]))), mode="edge")[:h, :w]
    return np.clip((scale * r - rho) / edge + 0.5, 0, 1)


class Renderer:
    """Renders any window of any level from a Layout; one per process."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        boxes = np.array([(p.x, p.y, p.x + p.w, p.y + p.h) for p in layout.pieces], dtype=np.int64)
        self.boxes = boxes.reshape(-1, 4)
        rng = np.random.default_rng([layout.seed, 1])
        self.noise = np.round(rng.normal(0, NOISE_SIGMA, (1024, 1024, 3))).astype(np.int16)
        glass = np.empty((TILE, TILE, 3), dtype=np.uint8)
        glass[:] = GLASS
        tables, self.glass_tiles = None, []
        for _ in range(16):  # a pool of pre-encoded empty-glass tiles: most of a slide is glass
            tile_tables, tile = split_jpeg(encode_jpeg(self.noisy(glass, rng), layout.quality))
            if tables not in (None, tile_tables):
                raise SlideMakerError("JPEG encoder produced differing tables; cannot share JPEGTables")
            tables = tile_tables
            self.glass_tiles.append(tile)
        self.tables: bytes = tile_tables

    def noisy(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Add a random window of the noise field (sensor-like noise)."""
        oy, ox = rng.integers(0, 1024 - TILE, 2)
        h, w = rgb.shape[:2]
        return (rgb + self.noise[oy : oy + h, ox : ox + w]).clip(0, 255).astype(np.uint8)

    def region(self, ds: int, x0: int, y0: int, w: int, h: int) -> np.ndarray | None:
        """Composite the pieces over glass (uint8 RGB), or None where there is only glass."""
        hits = np.flatnonzero(
            (self.boxes[:, 0] < (x0 + w) * ds)
            & (self.boxes[:, 2] > x0 * ds)
            & (self.boxes[:, 1] < (y0 + h) * ds)
            & (self.boxes[:, 3] > y0 * ds)
        )
        if hits.size == 0:
            return None
        out = Image.new("RGBA", (w, h), (*GLASS, 255))
        for i in hits:
            p = self.layout.pieces[i]
            px, py = p.x // ds, p.y // ds
            ix0, ix1 = max(x0, px), min(x0 + w, px + p.w // ds)
            iy0, iy1 = max(y0, py), min(y0 + h, py + p.h // ds)
            if ix0 >= ix1 or iy0 >= iy1:
                continue
            a = blob_alpha(p, ds, ix0 - px, iy0 - py, ix1 - ix0, iy1 - iy0)
            if isinstance(a, float) and a == 0.0:
                continue
            rgba = np.array(piece_pixels(self.layout.sources, p, ds)[iy0 - py : iy1 - py, ix0 - px : ix1 - px])
            if not isinstance(a, float):
                rgba[..., 3] = rgba[..., 3] * a
            out.alpha_composite(Image.fromarray(rgba, "RGBA"), (ix0 - x0, iy0 - y0))
        return np.asarray(out.convert("RGB"))  # contiguous RGB: numpy is ~10x slower on RGBA views

    def tile(self, ds: int, tx: int, ty: int, rng: np.random.Generator) -> bytes:
        """One tile as abbreviated JPEG (tables stripped)."""
        rgb = self.region(ds, tx * TILE, ty * TILE, TILE, TILE)
        if rgb is None:
            return self.glass_tiles[int(rng.integers(len(self.glass_tiles)))]
        tables, tile = split_jpeg(encode_jpeg(self.noisy(rgb, rng), self.layout.quality))
        if tables != self.tables:
            raise SlideMakerError(f"JPEG tables differ at level ds={ds} tile ({tx}, {ty})")
        return tile

    def tile_row(self, ds: int, ty: int, columns: int) -> list[bytes]:
        """One row of tiles of a level; seeded per row so output does not depend on workers."""
        rng = np.random.default_rng([self.layout.seed, ds, ty])
        return [self.tile(ds, tx, ty, rng) for tx in range(columns)]

    def image(self, ds: int) -> np.ndarray:
        """A whole (small) level as uint8 RGB, without noise: for thumbnail and macro."""
        w, h = self.layout.width // ds, self.layout.height // ds
        out = np.empty((h, w, 3), dtype=np.uint8)
        for y in range(0, h, TILE):
            rows = min(TILE, h - y)
            strip = self.region(ds, 0, y, w, rows)
            out[y : y + rows] = GLASS if strip is None else strip
        return out


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """Baseline JPEG of RGB samples as they are: no colour transform, no chroma subsampling."""
    return imagecodecs.jpeg8_encode(
        np.ascontiguousarray(rgb), level=quality, colorspace="RGB", outcolorspace="RGB", subsampling="444", optimize=False
    )


def split_jpeg(jpeg: bytes) -> tuple[bytes, bytes]:
    """Split a JPEG into (JPEGTables, abbreviated stream) the way Aperio stores its tiles.

    Tables get the DQT and DHT segments. The stream keeps SOI, SOF, SOS and the scan; it drops
    the APPn markers and numbers the components 0, 1, 2, so, as in real SVS files, nothing in
    the JPEG itself says RGB and only the TIFF Photometric tag does (see openslide PR #558).
    """
    tables, stream = [b"\xff\xd8"], [b"\xff\xd8"]
    i = 2
    while True:
        if jpeg[i] != 0xFF:
            raise SlideMakerError(f"malformed JPEG from encoder at byte {i}")
        marker = jpeg[i + 1]
        length = int.from_bytes(jpeg[i + 2 : i + 4], "big")
        segment = bytearray(jpeg[i : i + 2 + length])
        if marker in (0xDB, 0xC4):
            tables.append(bytes(segment))
        elif marker == 0xC0:  # SOF0: Nf at 9, then (id, sampling, table) per component
            for c in range(segment[9]):
                segment[10 + 3 * c] = c
            stream.append(bytes(segment))
        elif marker == 0xDA:  # SOS: Ns at 4, then (id, tables) per component; then the scan
            for c in range(segment[4]):
                segment[5 + 2 * c] = c
            stream.append(bytes(segment) + jpeg[i + 2 + length :])
            break
        elif not 0xE0 <= marker <= 0xEF:
            stream.append(bytes(segment))
        i += 2 + length
    tables.append(b"\xff\xd9")
    return b"".join(tables), b"".join(stream)


# ---------------------------------------------------------------- layout


def make_layout(
    sources: list[dict[int, np.ndarray]],
    width: int,
    height: int,
    tissue_fraction: float,
    seed: int,
    quality: int,
) -> Layout:
    """Place tissue pieces as a few sections (clusters of overlapping pieces) plus loose fragments.

    Coverage is tracked on a 1/64 grid with the same alpha the renderer uses, so the final
    tissue fraction is close to the requested one.
    """
    rng = np.random.default_rng([seed, 0])
    layout = Layout(width, height, sources, [], seed, quality)
    coarse = DOWNSAMPLES[-1]
    cover = np.zeros((height // coarse, width // coarse), dtype=np.float32)
    section_weights = np.array([w for _, w, _ in SOURCES]) / sum(w for _, w, _ in SOURCES)
    fragment_weights = np.array([w for _, _, w in SOURCES]) / sum(w for _, _, w in SOURCES)
    max_side = max(256, int(min(width, height) * 0.35) // ALIGN * ALIGN)

    def try_add(cx: float, cy: float, fragment: bool) -> float:
        """Place a random piece near (cx, cy); returns the tissue it adds, 0 if rejected."""
        size_range, min_new = ((512, 2500), 0.9) if fragment else ((768, 6000), 0.15)
        src = int(rng.choice(len(sources), p=fragment_weights if fragment else section_weights))
        sh, sw = sources[src][1].shape[:2]
        turns, flip = int(rng.integers(4)), bool(rng.integers(2))
        cw = snap(rng.uniform(*size_range), sw)
        ch = snap(rng.uniform(*size_range), sh)
        cw, ch = min(cw, max_side), min(ch, max_side)
        # of a few candidate crops keep the one with the most tissue
        small = sources[src][coarse][..., 3]
        best, crop = -1.0, (0, 0, cw, ch)
        for _ in range(6):
            x = int(rng.integers(0, (sw - cw) // ALIGN + 1)) * ALIGN
            y = int(rng.integers(0, (sh - ch) // ALIGN + 1)) * ALIGN
            score = float(small[y // coarse : (y + ch) // coarse, x // coarse : (x + cw) // coarse].mean())
            if score > best:
                best, crop = score, (x, y, cw, ch)
        n = int(rng.integers(2, 5))
        amps = rng.dirichlet(np.ones(n)) * rng.uniform(0.15, 0.4)
        blob = tuple(float(v) for a, ph in zip(amps, rng.uniform(0, 2 * np.pi, n)) for v in (a, ph))
        pw, ph_ = (ch, cw) if turns % 2 else (cw, ch)
        x = int(np.clip(cx - pw / 2, 0, width - pw)) // ALIGN * ALIGN
        y = int(np.clip(cy - ph_ / 2, 0, height - ph_)) // ALIGN * ALIGN
        piece = Piece(src, crop, turns, flip, x, y, blob)
        alpha = piece_pixels(sources, piece, coarse)[..., 3].astype(np.float32) / 255
        alpha = alpha * blob_alpha(piece, coarse, 0, 0, pw // coarse, ph_ // coarse)
        window = cover[y // coarse : (y + ph_) // coarse, x // coarse : (x + pw) // coarse]
        merged = np.maximum(window, alpha)
        gain = float(merged.sum() - window.sum())
        if alpha.sum() == 0 or gain < min_new * alpha.sum():
            return 0.0
        window[:] = merged
        layout.pieces.append(piece)
        return gain

    total, covered = tissue_fraction * cover.size, 0.0
    rows, cols = [(1, 2), (2, 2), (2, 3), (1, 3)][int(rng.integers(4))]
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    shares = rng.dirichlet(np.full(len(cells), 4.0)) * 0.97 * total
    for (r, c), share in zip(cells, shares):
        cell_w, cell_h = width / cols, height / rows
        # an ellipse whose area, ~80% filled, holds this section's share of tissue
        aspect = rng.uniform(0.6, 1.6)
        area = share * coarse * coarse / 0.8
        ex = min(math.sqrt(area * aspect / math.pi), cell_w * 0.45)
        ey = min(area / (math.pi * ex), cell_h * 0.45)
        mx = (c + 0.5) * cell_w + rng.uniform(-1, 1) * (cell_w / 2 - ex)
        my = (r + 0.5) * cell_h + rng.uniform(-1, 1) * (cell_h / 2 - ey)
        goal, misses = covered + share, 0
        while covered < goal and misses < 300:
            t, rad = rng.uniform(0, 2 * np.pi), math.sqrt(rng.uniform())
            gain = try_add(mx + ex * rad * math.cos(t), my + ey * rad * math.sin(t), fragment=False)
            covered += gain
            misses = 0 if gain else misses + 1
            if misses and misses % 25 == 0:  # a crowded section grows outward, within its cell
                ex, ey = min(ex * 1.03, cell_w / 2), min(ey * 1.03, cell_h / 2)
    misses = 0
    while covered < total and misses < 500:
        gain = try_add(rng.uniform(0, width), rng.uniform(0, height), fragment=True)
        covered += gain
        misses = 0 if gain else misses + 1
    layout.tissue_fraction = float(cover.mean())
    return layout


def snap(value: float, limit: int) -> int:
    """Round down to ALIGN, within [ALIGN*4, limit]."""
    return int(min(limit, max(ALIGN * 4, value // ALIGN * ALIGN)))


def level_downsamples(width: int, height: int) -> list[int]:
    """Aperio-like pyramid: add 4x levels until the smallest is at most 2048 px long."""
    levels = [1]
    while max(width, height) // levels[-1] > 2048 and levels[-1] * 4 in DOWNSAMPLES:
        levels.append(levels[-1] * 4)
    return levels


def estimate_bytes(renderer: Renderer, levels: list[int], samples: int, seed: int) -> float:
    """Estimate the file size by encoding a random sample of tiles of each level."""
    rng = np.random.default_rng([seed, 2])
    lay = renderer.layout
    total = 0.0
    for ds in levels:
        cols, rows = tiles_across(lay.width // ds), tiles_across(lay.height // ds)
        n = min(samples, cols * rows)
        sizes = [len(renderer.tile(ds, int(rng.integers(cols)), int(rng.integers(rows)), rng)) for _ in range(n)]
        total += float(np.mean(sizes)) * cols * rows
    return total


def tiles_across(pixels: int) -> int:
    return -(-pixels // TILE)


def plan_canvas(
    sources: list[dict[int, np.ndarray]],
    target_bytes: float,
    tissue_fraction: float,
    seed: int,
    quality: int,
) -> Layout:
    """Size a 4:3 canvas so the file comes out near target_bytes (one calibration round)."""
    width = 8192
    for _ in range(2):
        height = int(width * 0.75) // ALIGN * ALIGN
        layout = make_layout(sources, width, height, tissue_fraction, seed, quality)
        estimate = estimate_bytes(Renderer(layout), level_downsamples(width, height), 300, seed)
        width = max(1024, int(width * math.sqrt(target_bytes / estimate)) // ALIGN * ALIGN)
    height = int(width * 0.75) // ALIGN * ALIGN
    return make_layout(sources, width, height, tissue_fraction, seed, quality)


# ---------------------------------------------------------------- associated images


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def fake_label(seed: int) -> Image.Image:
    """A slide label with fake identifiers: the thing de-identification must remove."""
    img = Image.new("RGB", (400, 464), (250, 250, 244))
    draw = ImageDraw.Draw(img)
    lines = [
        ("FAKE LABEL", 34),
        ("SYNTHETIC SLIDE", 26),
        ("Case: FAKE-24-00042", 24),
        ("Name: DOE^JANE (FAKE)", 22),
        ("MRN: 000-FAKE-000", 22),
        ("Block A1  H&E", 22),
        ("not a patient", 20),
    ]
    y = 14
    for text, size in lines:
        draw.text((16, y), text, fill=(20, 20, 20), font=font(size))
        y += size + 12
    # a random black/white matrix standing in for a 2D barcode: deliberately not decodable
    cells = np.random.default_rng([seed, 3]).integers(0, 2, (14, 14)).astype(bool)
    x0, y0, cell = 250, 290, 9
    for (r, c), on in np.ndenumerate(cells):
        if on:
            draw.rectangle([x0 + c * cell, y0 + r * cell, x0 + (c + 1) * cell - 1, y0 + (r + 1) * cell - 1], fill=0)
    return img


def fake_macro(label: Image.Image, overview: np.ndarray) -> Image.Image:
    """A photo-like view of the whole glass slide: label end (still readable) plus the tissue."""
    img = Image.new("RGB", (1280, 432), (205, 208, 212))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, 300, 431], fill=(226, 226, 222))
    img.paste(label.rotate(90, expand=True).resize((276, 232)), (12, 100))
    scan = Image.fromarray(overview)
    scan.thumbnail((940, 400))
    img.paste(scan, (320 + (940 - scan.width) // 2, (432 - scan.height) // 2))
    draw.text((330, 6), "SYNTHETIC MACRO - NOT A PATIENT", fill=(90, 20, 20), font=font(18))
    return img


# ---------------------------------------------------------------- writing


def ordered(pool: ProcessPoolExecutor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """pool.map in order, but with at most `window` tasks in flight so memory stays bounded."""
    pending: deque[Future[R]] = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


_RENDERER: Renderer | None = None


def _init_worker(layout: Layout) -> None:
    global _RENDERER
    _RENDERER = Renderer(layout)


def _render_row(job: tuple[int, int, int]) -> list[bytes]:
    assert _RENDERER is not None
    return _RENDERER.tile_row(*job)


def description(layout: Layout, extra: str) -> str:
    """Aperio-style ImageDescription: openslide reads vendor, AppMag and MPP from it."""
    w, h = layout.width, layout.height
    fields = [
        "AppMag = 20",
        "StripeWidth = 2040",
        "ScanScope ID = SS-FAKE-0000",
        "Filename = FAKE-DERIVED-0001",
        "Date = 12/31/24",
        "Time = 23:59:00",
        "Time Zone = GMT+00:00",
        "User = 0000fake-0000-4000-8000-00000000fake",
        f"MPP = {MPP:.4f}",
        "Left = 20.000000",
        "Top = 20.000000",
        f"OriginalWidth = {w}",
        f"OriginalHeight = {h}",
        DERIVED,
    ]
    return f"{LIBRARY}\r\n{w}x{h} [0,0 {w}x{h}] {extra}|" + "|".join(fields)


def jpeg_page_args(tables: bytes) -> dict[str, object]:
    """Pre-encoded JPEG with shared tables; Photometric RGB and YCbCrSubSampling 2x2 like Aperio."""
    return dict(
        compression="jpeg",
        compressionargs={"outcolorspace": "RGB"},
        jpegtables=tables,
        photometric="rgb",
        metadata=None,
    )


def write_slide(layout: Layout, path: Path, workers: int, log: Callable[[str], None]) -> int:
    """Stream all pages into a BigTIFF; returns the number of tiles written."""
    renderer = Renderer(layout)
    levels = level_downsamples(layout.width, layout.height)
    q = layout.quality
    thumb_ds = max(ds for ds in DOWNSAMPLES if ds == 1 or max(layout.width, layout.height) // ds >= 1024)
    overview = renderer.image(thumb_ds)
    thumb = Image.fromarray(overview)
    thumb.thumbnail((1024, 1024), Image.Resampling.LANCZOS)
    label = fake_label(layout.seed)
    macro = fake_macro(label, overview)
    tiles = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(layout,)) as pool,
        tifffile.TiffWriter(path, bigtiff=True) as tif,
    ):
        for i, ds in enumerate(levels):
            w, h = layout.width // ds, layout.height // ds
            cols, rows = tiles_across(w), tiles_across(h)
            started = time.monotonic()
            jobs = ((ds, ty, cols) for ty in range(rows))
            data = (tile for row in ordered(pool, _render_row, jobs, 2 * workers + 2) for tile in row)
            extra = f"({TILE}x{TILE})" + (f" -> {w}x{h}" if ds > 1 else "") + f" JPEG/RGB Q={q}"
            tif.write(
                data,
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                description=description(layout, extra),
                subfiletype=0,
                **jpeg_page_args(renderer.tables),
            )
            tiles += cols * rows
            log(f"level {i} (downsample {ds}): {w}x{h}, {cols * rows} tiles, {time.monotonic() - started:.1f} s")
            if i == 0:  # Aperio puts the thumbnail right after level 0
                write_strip(tif, np.asarray(thumb), renderer.tables, q, 0, description(layout, f"-> {thumb.width}x{thumb.height} - "))
        tif.write(
            np.asarray(label),
            compression="lzw",
            predictor=True,
            photometric="rgb",
            subfiletype=1,
            rowsperstrip=label.height,
            description=f"{LIBRARY}\r\nlabel {label.width}x{label.height}",
            metadata=None,
        )
        write_strip(tif, np.asarray(macro), renderer.tables, q, 9, f"{LIBRARY}\r\nmacro {macro.width}x{macro.height}")
    return tiles


def write_strip(tif: tifffile.TiffWriter, rgb: np.ndarray, tables: bytes, quality: int, subfiletype: int, desc: str) -> None:
    """A stripped JPEG page with the shared tables, 16 rows a strip (Aperio's thumbnail and macro)."""
    strips = []
    for y in range(0, rgb.shape[0], 16):
        strip_tables, strip = split_jpeg(encode_jpeg(rgb[y : y + 16], quality))
        if strip_tables != tables:
            raise SlideMakerError("JPEG tables of an associated image differ from the tiles' tables")
        strips.append(strip)
    tif.write(
        iter(strips),
        shape=rgb.shape,
        dtype=np.uint8,
        rowsperstrip=16,
        subfiletype=subfiletype,
        description=desc,
        **jpeg_page_args(tables),
    )


def make_slide(
    path: Path,
    target_bytes: float,
    *,
    slides_dir: Path = DEFAULT_SLIDES,
    tissue_fraction: float = 0.4,
    quality: int = 70,
    seed: int = 0,
    workers: int | None = None,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr, flush=True),
) -> Summary:
    """Plan, render and write the derived slide; check it opens in openslide as an Aperio slide."""
    started = time.monotonic()
    sources = load_sources(slides_dir)
    layout = plan_canvas(sources, target_bytes, tissue_fraction, seed, quality)
    fraction = layout.tissue_fraction
    log(f"canvas {layout.width}x{layout.height}, {len(layout.pieces)} tissue pieces, tissue {fraction:.0%}")
    tiles = write_slide(layout, path, workers or os.cpu_count() or 1, log)
    with openslide.OpenSlide(path) as slide:
        vendor = slide.properties.get(openslide.PROPERTY_NAME_VENDOR)
        if vendor != "aperio":
            raise SlideMakerError(f"openslide reads {path} as vendor {vendor!r}, expected 'aperio'")
        dims = list(slide.level_dimensions)
    return Summary(path, dims[0], dims, fraction, tiles, path.stat().st_size, time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, help="default: bench/out/derived-{large,small}.svs")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--gigabytes", type=float, default=1.6, help="target file size in GB (1e9 bytes)")
    size.add_argument("--small", action="store_true", help="about 50 MB, for quick tests")
    parser.add_argument("--slides", type=Path, default=DEFAULT_SLIDES, help="folder of sample slides")
    parser.add_argument("--tissue-fraction", type=float, default=0.4)
    parser.add_argument("--quality", type=int, default=70, help="JPEG quality (Aperio's usual 70)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.add_argument("--thumbnail", type=Path, default=None, help="PNG (default: beside the output)")
    args = parser.parse_args(argv)
    target = 0.05e9 if args.small else args.gigabytes * 1e9
    output = args.output or OUT / ("derived-small.svs" if args.small else "derived-large.svs")
    try:
        s = make_slide(
            output,
            target,
            slides_dir=args.slides,
            tissue_fraction=args.tissue_fraction,
            quality=args.quality,
            seed=args.seed,
            workers=args.workers,
        )
    except (SlideMakerError, openslide.OpenSlideError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    png = args.thumbnail or output.with_name(output.stem + "-thumbnail.png")
    with openslide.OpenSlide(s.path) as slide:
        slide.get_thumbnail((1024, 1024)).save(png)
    levels = ", ".join(f"{w}x{h}" for w, h in s.level_dimensions)
    print(f"path:       {s.path}")
    print(f"dimensions: {s.dimensions[0]}x{s.dimensions[1]} px at {MPP} mpp, tissue {s.tissue_fraction:.0%}")
    print(f"levels:     {len(s.level_dimensions)} ({levels}), {s.tiles} tiles")
    print(f"bytes:      {s.bytes} ({s.bytes / 1e9:.3f} GB)")
    print(f"seconds:    {s.seconds:.1f}")
    print(f"thumbnail:  {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
