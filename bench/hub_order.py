"""The hub's order of work on a slide whose final map is known: how much of the tissue it scores before the hottest
tile, and before the whole hottest region (issue 27), with its order (`inference.order.hottest_first`, in rounds
of one batch per worker) against the baselines it replaced: the edge map's samples by score, then grid order; and
`hottest_first` from the edge's samples and the hub's scores, without the overview's hematoxylin and with the edge's
samples spread over the tissue (`inference.tiles.spread_sample`) rather than half of them where it is densest in
hematoxylin (`inference.order.edge_sample`).

No model runs here: the final map of an earlier `slidestream analyze` gives each tile's score as the hub would find
it, the edge map is its `edge_sample` (or `spread_sample`) of the tissue (the station samples the same tiles, and its
scores agree with the hub's, Spearman 0.99 on the bench slide), and each round reveals the scores of the tiles it chose. Minutes of
CPU per ordering become a fraction of a second, so orderings can be compared on slides where the hub run would take
an hour.

    python -m slidestream analyze bench/out/derived-small.svs --site "sigmoid colon" --out /tmp/full --report /tmp/r.csv
    python bench/hub_order.py bench/out/derived-small.svs /tmp/full --round 64 --round 128

Writes bench/out/hub_order.json.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from caseformat.layout import HEATMAP, TRIAGE
from caseformat.results import Triage
from inference import AnalyzeOptions
from inference.heatmap import Heatmap, load_tile_state
from inference.order import edge_sample, hematoxylin_rank, highest_ranked, hottest_first, overview_level
from inference.pipeline import plan_heatmap
from inference.sources import SlideFileRef, open_source
from inference.tiles import spread_sample
from objectstore.location import Location

OUT = Path(__file__).resolve().parent / "out"
EDGE_SAMPLES = 80  # station.edge.SAMPLED_TILES


def final_map(slide: Path, results: Path) -> tuple[Heatmap, Triage]:
    """The final map `analyze` wrote for `slide` under `results/CASE/`, on the grid the hub plans."""
    (folder,) = [path.parent for path in results.glob(f"*/{HEATMAP}")]
    heatmap = plan_heatmap(open_source(SlideFileRef.of(slide)), AnalyzeOptions())
    if not load_tile_state(heatmap, Location.parse(folder / HEATMAP)):
        raise SystemExit(f"{folder}: no tile state on this slide's grid")
    return heatmap, Triage.read((folder / TRIAGE).read_bytes())


def hottest_region(final: Heatmap, triage: Triage) -> np.ndarray:
    """The tiles of the final map's top region at or above its threshold (as bench/frozen_section.py counts it)."""
    summary = triage.summary
    tile, box = summary["tile_level0_px"], summary["top_regions"][0]
    rows = slice(int(box["y"] // tile), int(-(-(box["y"] + box["height"]) // tile)))
    cols = slice(int(box["x"] // tile), int(-(-(box["x"] + box["width"]) // tile)))
    hot = np.zeros(final.tissue.shape, bool)
    hot[rows, cols] = np.nan_to_num(final.score[rows, cols], nan=-1.0) >= summary["threshold"]
    return hot & final.tissue


def replay(final: Heatmap, rank: Callable[[Heatmap], np.ndarray], round_tiles: int, region: np.ndarray) -> dict[str, float]:
    """Score the tissue in rounds of `round_tiles`, each the best by `rank` of what the hub would know by then; the
    share of the tissue scored when the hottest tile, and the whole region, were."""
    known = replace(final)  # the same grid and tissue, nothing scored
    hottest = np.unravel_index(np.argmax(np.where(final.tissue, np.nan_to_num(final.score, nan=-1.0), -np.inf)), final.tissue.shape)
    tissue, found = int(final.tissue.sum()), {}
    while (todo := final.tissue & ~known.measured).any():
        chosen = highest_ranked(todo, rank(known), round_tiles)
        known.measured |= chosen
        known.score[chosen] = final.score[chosen]
        done = int(known.scored.sum()) / tissue
        if known.measured[hottest]:
            found.setdefault("hottest_tile", done)
        if known.measured[region].all():
            found.setdefault("hottest_region", done)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("slide", type=Path)
    parser.add_argument("results", type=Path, help="the --out folder of `slidestream analyze SLIDE`")
    parser.add_argument("--round", type=int, action="append", help="tiles per round (batch x workers; default 64)")
    args = parser.parse_args()
    final, triage = final_map(args.slide, args.results)
    region = hottest_region(final, triage)
    source = open_source(SlideFileRef.of(args.slide))
    level = overview_level(source, final.grid.tile)
    if level is None:
        raise SystemExit(f"{args.slide}: no overview level to read the hematoxylin from")
    threshold = triage.summary["threshold"]
    hematoxylin = hematoxylin_rank(source, final.grid, final.tissue, level, threshold)
    samples = {"spread": spread_sample(final.tissue, EDGE_SAMPLES), "edge_sample": edge_sample(final.tissue, hematoxylin, EDGE_SAMPLES)}
    spread, dense = (np.where(sampled, np.nan_to_num(final.score, nan=-1.0), -1.0) for sampled in samples.values())
    orders: dict[str, Callable[[Heatmap], np.ndarray]] = {
        "before: spread edge samples, then grid order": lambda known: spread,
        "before: hottest_first from spread edge samples": lambda known: hottest_first(known, spread),
        "hottest_first, edge_sample and hematoxylin": lambda known: hottest_first(known, np.maximum(dense, hematoxylin)),
        "hottest_first, hematoxylin, no edge map": lambda known: hottest_first(known, hematoxylin),
    }
    hottest = np.unravel_index(np.argmax(np.where(final.tissue, np.nan_to_num(final.score, nan=-1.0), -np.inf)), final.tissue.shape)
    for name, sampled in samples.items():
        values = np.nan_to_num(final.score[sampled], nan=-1.0)
        print(f"edge samples ({name}): the hottest tile {'sampled' if sampled[hottest] else 'not sampled'}, "
              f"{int((values >= threshold).sum())} of {int(sampled.sum())} at or above the threshold")
    result = {"slide": args.slide.name, "tissue_tiles": int(final.tissue.sum()), "region_tiles": int(region.sum()), "rounds": {}}
    for round_tiles in args.round or [64]:
        result["rounds"][round_tiles] = {name: replay(final, rank, round_tiles, region) for name, rank in orders.items()}
        for name, found in result["rounds"][round_tiles].items():
            print(f"round {round_tiles:4d}  {name:46s} hottest tile after {found['hottest_tile']:6.1%} of the tissue, "
                  f"the hottest region ({result['region_tiles']} tiles) after {found['hottest_region']:6.1%}")
    OUT.mkdir(exist_ok=True)
    (OUT / "hub_order.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
