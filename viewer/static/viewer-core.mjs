// The pages' pure rules, with no page, DOM or network in them: lengths and areas on the slide, the scale bar's
// length, the frozen-section clock's colours, which tiles have arrived, what the AI's stage and score say.
// Imported by viewer.js and worklist.js (no build step) and unit-tested by `node --test viewer/static/tests/`.

export const NO_MPP = "µm unavailable: the slide records no resolution";
const ARRIVED = "2"; // a shard's state in the status's level strings: 0 not yet, 1 sending, 2 arrived

// Lengths and areas in µm / mm from the slide's microns per pixel (`mpp`); in pixels where it records none.
export function formatLength(pixels, mpp) {
    if (!mpp) return `${Math.round(pixels)} px`;
    const microns = pixels * mpp;
    // the unit by the number shown: 999.96 µm reads "1.000 mm", not "1000.0 µm"
    return Number(microns.toFixed(1)) >= 1000 ? `${(microns / 1000).toFixed(3)} mm` : `${microns.toFixed(1)} µm`;
}

export function formatSize(width, height, mpp) {
    return mpp ? `${formatLength(width, mpp)} × ${formatLength(height, mpp)}` : `${Math.round(width)} × ${Math.round(height)} px`;
}

export function formatArea(squarePixels, mpp) {
    if (!mpp) return `${Math.round(squarePixels)} px²`;
    const square = squarePixels * mpp * mpp; // µm²
    return square >= 10000 ? `${(square / 1e6).toFixed(4)} mm²` : `${Math.round(square)} µm²`;
}

// the shoelace formula: the area a polygon's corners enclose, in image pixels²
export function polygonArea(points) {
    let twice = 0;
    points.forEach(([x, y], i) => {
        const [nx, ny] = points[(i + 1) % points.length];
        twice += x * ny - nx * y;
    });
    return Math.abs(twice) / 2;
}

// what an annotation measures: a line's length, a polygon's area (the tumour's extent, the margin's distance)
export function annotationSize({ kind, points }, mpp) {
    if (kind === "line") return formatLength(Math.hypot(points[1][0] - points[0][0], points[1][1] - points[0][1]), mpp);
    return kind === "polygon" && points.length >= 3 ? formatArea(polygonArea(points), mpp) : "";
}

// the ruler's or the area tool's line, from its two corners in image pixels
export function measurement({ kind, a, b }, mpp) {
    const [dx, dy] = [Math.abs(b.x - a.x), Math.abs(b.y - a.y)];
    if (kind === "ruler") return `Length ${formatLength(Math.hypot(dx, dy), mpp)}${mpp ? "" : ` (${NO_MPP})`}`;
    return `Area ${formatArea(dx * dy, mpp)} (${formatSize(dx, dy, mpp)}${mpp ? "" : `; ${NO_MPP}`})`;
}

// The scale bar: the longest round length (1, 2 or 5 × a power of ten µm) no longer than `target` screen pixels.
export function scaleBar(micronsPerScreenPixel, target = 120) {
    const wanted = target * micronsPerScreenPixel;
    const power = 10 ** Math.floor(Math.log10(wanted));
    const microns = [5, 2, 1].map((m) => m * power).find((v) => v <= wanted);
    return { pixels: Math.round(microns / micronsPerScreenPixel), label: microns >= 1000 ? `${microns / 1000} mm` : `${microns} µm` };
}

// Frozen-section clock: time since the specimen was registered, stopped by the first signed report.
// Amber from 20 minutes, red from 30 (the intraoperative turnaround rule).
export function clock(startedAt, stoppedAt, now) {
    if (!startedAt) return { text: "–", level: "" };
    const end = stoppedAt ? Date.parse(stoppedAt) : now;
    const seconds = Math.max(0, Math.floor((end - Date.parse(startedAt)) / 1000));
    const minutes = Math.floor(seconds / 60);
    const text = `${minutes}:${String(seconds % 60).padStart(2, "0")}`;
    const level = minutes >= 30 ? "red" : minutes >= 20 ? "amber" : "ok";
    return { text: stoppedAt ? `${text} ✓` : text, level };
}

// Whether OpenSeadragon's tile (level, x, y) exists and has arrived. Its levels go up in resolution, ours down
// (level 0 = full resolution); `states` (the status's levels, null once all arrived) say which shards of
// `image.shard_chunks`² tiles are in.
export function tileArrived(image, states, level, x, y) {
    const maxLevel = image.levels.length - 1;
    const ours = image.levels[maxLevel - level];
    const size = image.tile_size;
    if (!ours || x < 0 || y < 0 || x * size >= ours.width || y * size >= ours.height) return false;
    if (!states) return true;
    const n = image.shard_chunks;
    const shard = Math.floor(y / n) * ours.shards_x + Math.floor(x / n);
    return states[maxLevel - level].state[shard] === ARRIVED;
}

// What produced the map on screen, and whether it is the last word
export function stageText({ stage, complete, tiles_scored: scored, tissue_tiles: tissue }) {
    const counts = Number.isInteger(scored) && Number.isInteger(tissue) && tissue ? `${scored} of ${tissue} tissue tiles scored` : "";
    const parts = stage === "edge"
        ? ["Edge triage before the send", "coarse, not final"]
        : [{ hub: "Hub", analyze: "Batch analysis" }[stage] || "Stage not recorded", complete === true ? "final" : complete === false ? "still scoring" : ""];
    return [...parts, counts].filter(Boolean).join(" · ");
}

// the case's AI score in the header: a coarse edge score or a partial hub map says so
export function triageText({ score, final, stage }) {
    return `AI triage ${score.toFixed(2)}${final || !stage ? "" : stage === "edge" ? " edge (coarse)" : " (partial)"}`;
}

// The case's name in its page's title: the hospital (case.json's `hospital`, else the station its ID names, as the
// worklist's hospital column), then the specimen and its site; the case ID (a station's name and 16 hex digits) is
// no name for a reader, and stays beside the title, small, to copy.
export function caseTitle({ hospital, context }, caseId) {
    const { specimen_type: type, specimen_site: site } = context || {};
    const from = hospital || caseId.split(".")[0];
    return type || site ? [from, type, site].filter(Boolean).join(" · ") : `${from} · specimen not described`;
}

// The AI score in the case's header: the case's own, the number the worklist shows (viewer/summary.py `case_triage`:
// its most suspicious slide's), with what it is the probability of; in a case of several slides, which slide that is
// and what the one on screen scored, so two numbers never stand unexplained. `triages`: each slide's result (null:
// none yet), `shown`: the slide on screen. A refusal is words, never a number; null while no slide has a result.
export function caseScore(triages, shown) {
    const results = Object.entries(triages).filter(([, triage]) => triage);
    if (!results.length) return null;
    const value = (triage) => (triage.score === null ? -1 : triage.score);
    const [top, best] = results.reduce((a, b) => (value(b[1]) > value(a[1]) ? b : a)); // the first of equals, as max()
    if (best.score === null) return { text: `${best.refused} · QC only`, meaning: "" };
    const what = `probability of ${best.detects || "what the model detects"}`;
    const count = Object.keys(triages).length;
    if (count < 2) return { text: triageText(best), meaning: what };
    const here = triages[shown];
    const mine = top === shown ? "the slide shown" : `this slide: ${!here ? "no result yet" : here.score === null ? "no validated AI" : here.score.toFixed(2)}`;
    return { text: triageText(best), meaning: `${what}, highest of ${count} slides (${top}); ${mine}` };
}

// The overlay's opacity: the slider's while ticked; none at a top region the page jumped to, whose cells the map
// would cover (the region's outline still shows where the model pointed), until the reader asks for the map there.
export function overlayOpacity(on, percent, atRegion) {
    return on && !atRegion ? percent / 100 : 0;
}
