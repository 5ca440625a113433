"""One analysis path for three situations.

- edge: a slide file before it is sent; with `sample=N` N tissue tiles (`inference.order.edge_sample`: half spread
  over the slide, half the densest in hematoxylin) are scored exactly as a full analysis scores them (a map on the hub's grid in seconds), and `priority_from_heatmap` turns it into a send
  order for `tiling.plan_pyramid`. `coarse=True` (`analyze --coarse`) is coarse-to-fine over the whole slide.
- remote / incremental: a case on S3 while it arrives; `analyze_case` scores the tissue tiles whose shards the
  manifest lists as arrived and writes a partial heatmap, `follow_case` repeats that until the upload completes.
- batch: `inference.batch.analyze_batch` runs either of the above over many slides and cases.

All of them plan a `Heatmap` on the model's tile grid, pick tissue tiles, and score them with `Runner` (Dask).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from caseformat.layout import ANALYZE, EDGE, HEATMAP, IMAGE, IMAGE_METADATA, MANIFEST, image_key
from caseformat.results import COMPLETE, Manifest, Routed
from inference.errors import InferenceError
from inference.heatmap import Heatmap, load_tile_state, read_triage, write_results
from inference.order import edge_sample, hematoxylin_rank, highest_ranked, hottest_first, overview_level
from inference.scoring import ModelRef, Runner, TileResults
from inference.sources import (
    SlideFileRef,
    SlideSource,
    Source,
    SourceRef,
    VerifiedShards,
    ZarrRef,
    ZarrSource,
    corrupt_keys,
    open_source,
    read_level,
    update_corrupt,
)
from inference.tiles import TileGrid, tissue_coverage
from objectstore.location import Location
from tiling.plan import shard_address
from tiling.shard_format import CorruptShardError

QC_SAMPLE = 300  # tiles `qc_slide` reads: enough for a blur fraction to within a few percent
MIN_SAMPLE = 4  # coarse tiles always refined at random (all of them on a small slide), so QC has tiles to judge


class CaseNotReadyError(InferenceError):
    """The case has no image metadata yet (its upload has not started)."""


@dataclass(frozen=True)
class AnalyzeOptions:
    """How to analyse. The defaults suit a 2-core CPU and the default model.

    model: the model, by file and spec (default: Capricorn, tumour class) and device ("cuda" for a GPU).
    batch: tiles per Dask task, which is also the model's batch.
    threads: local Dask threads (default: one per core); ignored when `scheduler` is set.
    torch_threads: torch threads per process (default: the cores left per Dask thread).
    scheduler: a dask.distributed scheduler address ("tcp://host:8786") or Client; None runs locally.
    coarse: coarse-to-fine: score tiles `coarse_factor` times wider first, then refine at full magnification
        where the coarse score reaches `refine_above`, plus a random `refine_sample` of the coarse tiles (at least
        MIN_SAMPLE of them): a check on what the coarse pass calls cold, and the tiles QC measures focus on.
    refine: False stops after the coarse pass (a whole-slide map fast, at the cost of tiles the model never saw).
    sample: score only this many tissue tiles (`analyze_slide`; `inference.order.edge_sample`: half spread evenly
        over the tissue, half the densest in hematoxylin), each exactly the tile a full analysis scores, the rest left unscored (NaN):
        the edge's first map in seconds, one that means what the model means (coarse mode is then not used).
    threshold: tile score counted as "hot" (area, regions).
    min_tissue: fraction of a tile the tissue mask must cover for the tile to be analysed (low, so a small
        biopsy fragment split across tiles still gets scored).
    seed: for the refinement sample, so reruns give the same heatmap.
    stage: what the results say produced them (`inference.heatmap`: "edge", "hub" or "analyze").
    """

    model: ModelRef = field(default_factory=ModelRef)
    batch: int = 32
    threads: int | None = None
    torch_threads: int | None = None
    scheduler: str | Any | None = None
    coarse: bool = False
    coarse_factor: int = 2
    refine: bool = True
    sample: int | None = None
    refine_above: float = 0.2
    refine_sample: float = 0.05
    threshold: float = 0.5
    min_tissue: float = 0.05
    seed: int = 0
    stage: str = ANALYZE


Progress = Callable[[int, int], None]  # (tiles done, tiles planned so far)
Update = Callable[[Heatmap], None]


def plan_heatmap(source: Source, options: AnalyzeOptions, name: str | None = None) -> Heatmap:
    """An empty heatmap on the model's grid: tile side = model input at the model's mpp, in level-0 pixels.

    `name` is what its results call the source (default: the source's name, fine for a case on the store).
    """
    spec = options.model.spec
    mpp = source.mpp or spec.mpp
    tile = spec.input_size * spec.mpp / mpp
    if tile < spec.input_size / 2:
        raise InferenceError(f"{source.name}: {mpp:g} um/px is too coarse for the {spec.name} model "
                             f"(made for {spec.mpp:g} um/px; would need {spec.input_size / tile:.0f}x upsampling)")
    grid = TileGrid(tile, *source.dimensions)
    return Heatmap(grid, tissue_tiles(source, grid, options), spec, mpp, source.mpp is None, name or source.name, options.stage)


def tissue_tiles(source: Source, grid: TileGrid, options: AnalyzeOptions) -> np.ndarray:
    """The tiles of `grid` the tissue mask covers enough to be analysed."""
    return tissue_coverage(source.tissue(), grid) >= options.min_tissue


def analyze_slide(path: str | os.PathLike[str], out: str | os.PathLike[str] | Location | None = None,
                  options: AnalyzeOptions = AnalyzeOptions(), *, runner: Runner | None = None,
                  on_progress: Progress | None = None, on_update: Update | None = None, name: str | None = None,
                  routed: Routed | None = None, about: dict[str, Any] | None = None) -> Heatmap:
    """Heatmap of a slide file; with `out` (a case folder, local or s3://) also write heatmap.zarr and triage.json.

    `on_update` sees the heatmap after the coarse pass (coarse mode) and when it is complete. The results call the
    slide `name` (a send passes its case ID), by default the de-identified slide's own name: never the file name,
    which may hold an accession number or the patient's name. `routed` is what the routing held the slide to
    (`inference.routing`), recorded in triage.json: without it no reader shows the score; `about` what the model
    detects and how well it did (`Route.about`), shown beside it.
    """
    ref = SlideFileRef.of(path)
    source = cast(SlideSource, open_source(ref))
    heatmap = plan_heatmap(source, options, name or source.slide.name)
    location = out if isinstance(out, Location) or out is None else Location.parse(out)

    def publish(current: Heatmap) -> None:
        if location is not None:
            write_results(current, location, options.threshold, source.mpp, routed, about)
        if on_update is not None:
            on_update(current)

    todo = heatmap.tissue.copy() if options.sample is None else edge_sample(heatmap.tissue, tile_hematoxylin(source, heatmap), options.sample)
    with _runner(runner, options) as run:
        _score(heatmap, ref, source, run, options, todo, options.coarse and options.sample is None, on_progress, publish)
    heatmap.complete = True
    publish(heatmap)
    return heatmap


def analyze_case(case: str | Location, out: str | Location | None = None, options: AnalyzeOptions = AnalyzeOptions(), *,
                 heatmap: Heatmap | None = None, runner: Runner | None = None, on_progress: Progress | None = None,
                 endpoint_url: str | None = None, limit: int | None = None, priority: np.ndarray | None = None,
                 routed: Routed | None = None, about: dict[str, Any] | None = None) -> Heatmap:
    """One pass over a slide version (`image.zarr`, `manifest.json`): score what has arrived, write results.

    Pass the heatmap of the previous pass to score only the tiles that arrived since. A tile is scored once every
    shard its pixels come from has arrived (or is not planned at all: background) and is whole: a shard found
    corrupt (`tiling.shard_format.CorruptShardError`) is listed in the slide version's corrupt.json for the station to
    send again, its tiles stay unscored (the map is not final), and a later pass scores them once it reads whole
    (listed shards are verified again at the start of each pass). A case without a manifest is
    taken as complete; one whose send failed raises `caseformat.errors.SendFailedError` with the reason. Coarse mode applies only to a
    complete case's first pass without a `limit`. `limit` scores at most that many tiles this pass, hottest first
    (`inference.order.hottest_first`: the neighbours of the hottest tiles scored so far, then those of highest
    `priority`, a rank per tile of the heatmap's grid: `edge_priority`, `overview_priority` or the `strongest` of
    both), in rounds of one batch per worker. Results go to `out` (default: the case
    itself, where the viewer looks), their triage.json recording `routed` (as `analyze_slide`) and `about` in its
    summary (what the model detects and its validation record, which the hub adds).
    """
    case = case if isinstance(case, Location) else Location.parse(case, endpoint_url)
    manifest = read_manifest(case)
    state = arrival_state(case, manifest)
    if not case.exists(IMAGE_METADATA):
        raise CaseNotReadyError(f"{case.url}: no image metadata (not a slidestream case, or not arrived yet)")
    if manifest is not None and not manifest.plan_final:
        raise CaseNotReadyError(f"{case.url}: the sender has not found the tissue yet (only the overview is planned)")
    ref = ZarrRef(case.child(IMAGE))
    source = cast(ZarrSource, open_source(ref))
    if heatmap is None:
        heatmap = plan_heatmap(source, options)
    else:
        # the tissue label is read again while the case arrives: a sender publishes `plan_final` when it knows the
        # tissue, and its label objects may land a moment later; a mask read before them is empty, and kept, it
        # would call a slide full of tissue complete with nothing scored
        heatmap.tissue = tissue_tiles(source, heatmap.grid, options)
    level = read_level(source, heatmap.grid.tile / heatmap.spec.input_size)
    started_at = manifest.started_at if manifest is not None else None
    listed = corrupt_keys(case, started_at)
    whole = {key for key in listed if _whole(source, key)}
    corrupt: set[str] = listed - whole
    finished = state == COMPLETE
    coarse = options.coarse and finished and not heatmap.measured.any()
    scored_before = int(heatmap.measured.sum())
    while True:
        todo = heatmap.tissue & ~heatmap.measured & ready_tiles(source, heatmap.grid, level, manifest, corrupt)
        try:
            with _runner(runner, options) as run:
                if limit is None:
                    _score(heatmap, ref, source, run, options, todo, coarse, on_progress)
                else:
                    step = options.batch * run.slots
                    while todo.any() and (left := limit - (int(heatmap.measured.sum()) - scored_before)) > 0:
                        chosen = highest_ranked(todo, hottest_first(heatmap, priority), min(step, left))
                        _score(heatmap, ref, source, run, options, chosen, False, on_progress)
                        todo &= ~chosen
            break
        except CorruptShardError as error:  # its tiles are left out and the rest scored; what was scored stays
            if error.key in corrupt:
                raise
            corrupt.add(error.key)
            coarse = False
    update_corrupt(case, started_at, corrupt, whole)
    heatmap.complete = finished and bool(heatmap.scored[heatmap.tissue].all())  # a corrupt shard's tiles are not
    target = case if out is None else out if isinstance(out, Location) else Location.parse(out, endpoint_url)
    if heatmap.complete or heatmap.scored.any():  # an incomplete map with nothing scored would hide the edge's
        write_results(heatmap, target, options.threshold, source.mpp, routed, about)
    return heatmap




def published_heatmap(case: Location, options: AnalyzeOptions = AnalyzeOptions()) -> Heatmap | None:
    """The partial heatmap published beside `case` by an earlier run of the same stage and model (a hub that was
    stopped or died), as the `heatmap` to continue from with `analyze_case`; None when there is none to continue."""
    triage = read_triage(case)
    if triage is None or triage.stage != options.stage or triage.model != options.model.spec.name:
        return None
    if not case.exists(IMAGE_METADATA):
        return None
    heatmap = plan_heatmap(open_source(ZarrRef(case.child(IMAGE))), options)
    return heatmap if load_tile_state(heatmap, case.child(HEATMAP)) else None


def edge_priority(case: Location, options: AnalyzeOptions = AnalyzeOptions()) -> np.ndarray | None:
    """What the edge map says of each tile, for `hottest_first`: its sampled tiles' scores (`edge_map`), -1 for the
    rest. None while the edge left no scored map. Ranking every tile by its nearest sample instead, as the
    send then ordered its shards, put the 50 MB bench slide's hottest region later (94% of the way through its map
    against 72-73% in grid order: its 80 samples do not foretell its mosaic, docs/benchmarks.md)."""
    edge = edge_map(case, options)
    return None if edge is None else np.nan_to_num(edge.score, nan=-1.0)


def tile_hematoxylin(source: Source, heatmap: Heatmap) -> np.ndarray | None:
    """Each tissue tile's hematoxylin rank in [0, 1) (-1 off tissue) from the slide's overview level, for
    `edge_sample`; None for a slide without one small enough."""
    level = overview_level(source, heatmap.grid.tile)
    return None if level is None or not heatmap.tissue.any() else hematoxylin_rank(source, heatmap.grid, heatmap.tissue, level, 1.0)


def overview_priority(case: Location, options: AnalyzeOptions, manifest: Manifest | None) -> np.ndarray | None:
    """What the overview's hematoxylin says of each tissue tile, for `hottest_first` (`inference.order`): a rank
    below the model's threshold, -1 off tissue. None until the overview level it is read from has arrived whole
    (or when the image has no such level); computed once per case, it is worth it only before every tile is scored."""
    source = cast(ZarrSource, open_source(ZarrRef(case.child(IMAGE))))
    heatmap = plan_heatmap(source, options)
    level = overview_level(source, heatmap.grid.tile)
    if level is None or not heatmap.tissue.any() or not ready_tiles(source, heatmap.grid, level, manifest)[heatmap.tissue].all():
        return None
    return hematoxylin_rank(source, heatmap.grid, heatmap.tissue, level, options.threshold)


def edge_map(case: Location, options: AnalyzeOptions = AnalyzeOptions()) -> Heatmap | None:
    """The edge triage's sampled map, published beside the image, on the grid `options` plan (NaN where it scored
    nothing); None without one. It is read from the station's own folder (`Location.sent`): a station's map only
    ever orders the hub's work."""
    sent = case.sent
    triage = read_triage(sent)
    if triage is None or triage.stage != EDGE or not sent.exists(IMAGE_METADATA):
        return None
    edge = plan_heatmap(open_source(ZarrRef(sent.child(IMAGE))), options)
    return edge if load_tile_state(edge, sent.child(HEATMAP)) else None


def read_manifest(case: Location) -> Manifest | None:
    """The slide version's manifest, None without one (an image another tool wrote, a local conversion);
    `DocumentError` for one that is malformed."""
    data = case.read_bytes(MANIFEST)
    return None if data is None else Manifest.read(data, MANIFEST)


def arrival_state(case: Location, manifest: Manifest | None) -> str:
    """The case's state from its manifest (none: complete); `SendFailedError` with the sender's reason when its
    send was given up."""
    if manifest is None:
        return COMPLETE
    manifest.check_not_failed(case.url)
    return manifest.state


def follow_case(case: str | Location, out: str | Location | None = None, options: AnalyzeOptions = AnalyzeOptions(), *,
                poll_seconds: float = 2.0, timeout: float | None = None, runner: Runner | None = None,
                on_progress: Progress | None = None, on_update: Update | None = None,
                endpoint_url: str | None = None, routed: Routed | None = None, about: dict[str, Any] | None = None) -> Heatmap:
    """Receiving side: repeat `analyze_case` every `poll_seconds` until the manifest says the upload is complete."""
    case = case if isinstance(case, Location) else Location.parse(case, endpoint_url)
    deadline = None if timeout is None else time.monotonic() + timeout
    heatmap: Heatmap | None = None
    with _runner(runner, options) as run:
        while True:
            try:
                heatmap = analyze_case(case, out, options, heatmap=heatmap, runner=run, on_progress=on_progress, routed=routed,
                                       about=about)
                if on_update is not None:
                    on_update(heatmap)
                if heatmap.complete:
                    return heatmap
            except CaseNotReadyError:
                pass
            if deadline is not None and time.monotonic() > deadline:
                raise InferenceError(f"{case.url}: upload still incomplete after {timeout:g} s")
            time.sleep(poll_seconds)


def qc_slide(path: str | os.PathLike[str], options: AnalyzeOptions = AnalyzeOptions(), sample: int = QC_SAMPLE) -> dict[str, Any]:
    """Focus and pen-mark QC of a slide from a random sample of its tissue tiles, without running the model."""
    ref = SlideFileRef.of(path)
    source = open_source(ref)
    heatmap = plan_heatmap(source, options)
    tiles = np.argwhere(heatmap.tissue)
    chosen = np.random.default_rng(options.seed).permutation(len(tiles))[:sample]
    todo = np.zeros_like(heatmap.tissue)
    todo[tuple(tiles[chosen].T)] = True
    with _runner(None, options) as run:
        _score(heatmap, ref, source, run, options, todo, False, None, qc_only=True)
    return {**heatmap.qc(), "tissue_tiles": int(heatmap.tissue.sum()), "tiles_sampled": int(todo.sum()),
            "mpp": heatmap.mpp, "mpp_assumed": heatmap.mpp_assumed}


def _whole(source: ZarrSource, key: str) -> bool:
    """Whether the shard at `key` (listed as corrupt) reads whole now: the station sent it again."""
    store = source.group.store
    try:
        return isinstance(store, VerifiedShards) and store.verify(key)
    except CorruptShardError:
        return False


def ready_tiles(
    source: ZarrSource, grid: TileGrid, level: int, manifest: Manifest | None, corrupt: Collection[str] = ()
) -> np.ndarray:
    """Tiles whose pixels at `level` come only from shards that arrived or were never planned (background), and
    none of them `corrupt`."""
    shape = grid.shape
    if manifest is None and not corrupt:
        return np.ones(shape, bool)
    arrived = set(manifest.arrived) if manifest is not None else set()
    planned = manifest.planned if manifest is not None else ()
    missing_keys = [shard_address(key.removeprefix(image_key(""))) for key in (*planned, *corrupt) if key not in arrived or key in corrupt]
    side_y, side_x = source.shard_side(level)
    height, width = source.arrays[level].shape[1:]
    missing = np.zeros((math.ceil(height / side_y), math.ceil(width / side_x)), np.int32)
    for shard in missing_keys:
        if shard is not None and shard[0] == level and shard[1] < missing.shape[0] and shard[2] < missing.shape[1]:
            missing[shard[1], shard[2]] = 1
    # shards a tile touches: from the shard of its first pixel to that of its last (clipped to the level)
    step = grid.tile / source.downsamples[level]
    first_y, first_x = (np.arange(n) * step // side for n, side in zip(shape, (side_y, side_x)))
    last_y = np.minimum(np.ceil((np.arange(shape[0]) + 1) * step) - 1, height - 1) // side_y
    last_x = np.minimum(np.ceil((np.arange(shape[1]) + 1) * step) - 1, width - 1) // side_x
    first_y, first_x = np.minimum(first_y, missing.shape[0] - 1), np.minimum(first_x, missing.shape[1] - 1)
    # a summed-area table counts missing shards in each tile's shard rectangle
    table = np.pad(missing.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    y0, y1 = first_y.astype(int)[:, None], last_y.astype(int)[:, None] + 1
    x0, x1 = first_x.astype(int)[None, :], last_x.astype(int)[None, :] + 1
    return (table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]) == 0


@contextmanager
def _runner(runner: Runner | None, options: AnalyzeOptions) -> Iterator[Runner]:
    if runner is not None:
        yield runner
        return
    with Runner(options.scheduler, options.threads, options.torch_threads) as own:
        yield own


def _score(heatmap: Heatmap, ref: SourceRef, source: Source, runner: Runner, options: AnalyzeOptions, todo: np.ndarray,
           coarse: bool, on_progress: Progress | None, on_update: Update | None = None, *,
           qc_only: bool = False) -> None:
    """Score the `todo` tiles of `heatmap` (coarse first if asked); `qc_only` reads and measures without the model."""
    model_ref = None if qc_only else options.model
    spec = heatmap.spec
    done = 0
    planned = 0

    def run(grid: TileGrid, tiles: np.ndarray, on_result: Callable[[TileResults], None]) -> None:
        nonlocal planned
        level = read_level(source, grid.tile / spec.input_size)
        planned += len(tiles)
        tasks = [(ref, grid.tile, level, spec.input_size, tiles[k : k + options.batch], model_ref)
                 for k in range(0, len(tiles), options.batch)]

        def collect(result: TileResults) -> None:
            nonlocal done
            on_result(result)
            done += len(result.tiles)
            if on_progress is not None:
                on_progress(done, planned)

        runner.run(tasks, collect)

    if coarse:
        factor = options.coarse_factor
        cells = _blocks_any(todo, factor)
        coarse_scores = np.full(cells.shape, np.nan, np.float32)

        def add_coarse(result: TileResults) -> None:
            coarse_scores[tuple(result.tiles.T)] = result.score
            heatmap.add_coarse(result, factor)

        run(heatmap.grid.coarser(factor), np.argwhere(cells), add_coarse)
        if on_update is not None:
            on_update(heatmap)
        if not options.refine:
            return
        candidates = np.argwhere(cells)
        count = min(len(candidates), max(MIN_SAMPLE, round(options.refine_sample * len(candidates))))
        refine = cells & (np.nan_to_num(coarse_scores) >= options.refine_above)
        refine[tuple(np.random.default_rng(options.seed).permutation(candidates)[:count].T)] = True
        todo = todo & np.kron(refine, np.ones((factor, factor), bool))[: todo.shape[0], : todo.shape[1]]
    run(heatmap.grid, np.argwhere(todo), heatmap.add)


def _blocks_any(mask: np.ndarray, factor: int) -> np.ndarray:
    """Whether any cell of each factor x factor block is set (the last blocks may be partial)."""
    rows, cols = (-(-n // factor) * factor for n in mask.shape)
    padded = np.zeros((rows, cols), bool)
    padded[: mask.shape[0], : mask.shape[1]] = mask
    return padded.reshape(rows // factor, factor, cols // factor, factor).any(axis=(1, 3))
