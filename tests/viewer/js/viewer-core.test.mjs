// The viewer's pure rules (viewer/static/viewer-core.mjs), as a pathologist would check them on screen:
// `node --test tests/viewer/js/` (tests/viewer/test_viewer_js.py runs it with the Python tests).
import assert from "node:assert/strict";
import { test } from "node:test";

import {
    NO_MPP, annotationSize, clock, formatArea, formatLength, formatSize, measurement, polygonArea, scaleBar, stageText, tileArrived, triageText,
} from "../../../viewer/static/viewer-core.mjs";

const MPP = 0.499; // the sample slide's microns per pixel

test("lengths read in µm, from 1 mm in mm, and in pixels on a slide without a resolution", () => {
    assert.equal(formatLength(100, MPP), "49.9 µm");
    assert.equal(formatLength(2003, MPP), "999.5 µm");
    assert.equal(formatLength(2004, MPP), "1.000 mm"); // 999.996 µm: never "1000.0 µm"
    assert.equal(formatLength(2005, MPP), "1.000 mm");
    assert.equal(formatLength(10000, 0.25), "2.500 mm");
    assert.equal(formatLength(123.6, null), "124 px");
    assert.equal(formatSize(100, 200, MPP), "49.9 µm × 99.8 µm");
    assert.equal(formatSize(100.4, 200.6, undefined), "100 × 201 px");
});

test("areas read in µm², from 0.01 mm² in mm², and in px² without a resolution", () => {
    assert.equal(formatArea(100 * 100, 0.5), "2500 µm²");
    assert.equal(formatArea(200 * 200, 0.5), "0.0100 mm²");
    assert.equal(formatArea(1234.4, 0), "1234 px²");
});

test("a polygon's area is what its corners enclose, whichever way round they go", () => {
    const square = [[0, 0], [10, 0], [10, 10], [0, 10]];
    assert.equal(polygonArea(square), 100);
    assert.equal(polygonArea([...square].reverse()), 100);
    assert.equal(polygonArea([[0, 0], [4, 0], [0, 3]]), 6);
    assert.equal(polygonArea([[0, 0], [2, 2], [4, 4]]), 0); // corners on one line enclose nothing
});

test("an annotation measures a line's length and a polygon's area; a point nothing", () => {
    assert.equal(annotationSize({ kind: "line", points: [[1000, 800], [1400, 1100]] }, MPP), "249.5 µm");
    assert.equal(annotationSize({ kind: "polygon", points: [[0, 0], [100, 0], [100, 100], [0, 100]] }, 0.5), "2500 µm²");
    assert.equal(annotationSize({ kind: "polygon", points: [[0, 0], [100, 0]] }, 0.5), "");
    assert.equal(annotationSize({ kind: "point", points: [[5, 5]] }, 0.5), "");
});

test("the ruler and the area tool say what they measured, and when µm are unavailable", () => {
    const ruler = { kind: "ruler", a: { x: 0, y: 0 }, b: { x: 300, y: 400 } };
    assert.equal(measurement(ruler, 0.5), "Length 250.0 µm");
    assert.equal(measurement(ruler, null), `Length 500 px (${NO_MPP})`);
    const area = { kind: "area", a: { x: 300, y: 400 }, b: { x: 100, y: 100 } }; // dragged up and left
    assert.equal(measurement(area, 0.5), "Area 0.0150 mm² (100.0 µm × 150.0 µm)");
    assert.equal(measurement({ kind: "area", a: { x: 0, y: 0 }, b: { x: 100, y: 100 } }, 0.5), "Area 2500 µm² (50.0 µm × 50.0 µm)");
    assert.equal(measurement(area, null), `Area 60000 px² (200 × 300 px; ${NO_MPP})`);
});

test("the scale bar is the longest 1, 2 or 5 × 10ⁿ µm that fits 120 screen pixels", () => {
    assert.deepEqual(scaleBar(1), { pixels: 100, label: "100 µm" });
    assert.deepEqual(scaleBar(0.5), { pixels: 100, label: "50 µm" });
    assert.deepEqual(scaleBar(2), { pixels: 100, label: "200 µm" });
    assert.deepEqual(scaleBar(10), { pixels: 100, label: "1 mm" });
    assert.deepEqual(scaleBar(0.02), { pixels: 100, label: "2 µm" });
    for (const micronsPerPixel of [0.013, 0.3, 1.7, 4.2, 33]) {
        const { pixels } = scaleBar(micronsPerPixel);
        assert.ok(pixels <= 120 && pixels > 120 / 5 - 1, `${micronsPerPixel}: ${pixels} px`);
    }
});

test("the frozen-section clock turns amber at 20 minutes, red at 30, and stops at the signed report", () => {
    const start = "2026-12-01T21:00:00Z";
    const at = (minutes, seconds = 0) => Date.parse(start) + (minutes * 60 + seconds) * 1000;
    assert.deepEqual(clock(start, null, at(19, 59)), { text: "19:59", level: "ok" });
    assert.deepEqual(clock(start, null, at(20)), { text: "20:00", level: "amber" });
    assert.deepEqual(clock(start, null, at(29, 59)), { text: "29:59", level: "amber" });
    assert.deepEqual(clock(start, null, at(30)), { text: "30:00", level: "red" });
    assert.deepEqual(clock(start, "2026-12-01T21:12:05Z", at(90)), { text: "12:05 ✓", level: "ok" });
    assert.deepEqual(clock(start, null, at(-1)), { text: "0:00", level: "ok" }); // a clock a little ahead of ours
    assert.deepEqual(clock(null, null, at(5)), { text: "–", level: "" });
});

test("only tiles that exist and whose shard arrived are asked for", () => {
    // two levels: full resolution 1000 × 600 (shards of 2 × 2 tiles of 256: 2 shards across), and 500 × 300
    const image = {
        tile_size: 256, shard_chunks: 2,
        levels: [{ width: 1000, height: 600, shards_x: 2 }, { width: 500, height: 300, shards_x: 1 }],
    };
    const states = [{ state: "20" }, { state: "2" }]; // full resolution: the left shard in, the right one not yet
    // OpenSeadragon's level 1 is our level 0
    assert.equal(tileArrived(image, states, 1, 0, 0), true);
    assert.equal(tileArrived(image, states, 1, 1, 1), true);
    assert.equal(tileArrived(image, states, 1, 2, 0), false); // the right shard
    assert.equal(tileArrived(image, states, 1, 4, 0), false); // past the edge
    assert.equal(tileArrived(image, states, 1, 0, 3), false);
    assert.equal(tileArrived(image, states, 1, -1, 0), false);
    assert.equal(tileArrived(image, states, 0, 1, 1), true);
    assert.equal(tileArrived(image, null, 1, 3, 2), true); // all arrived
    assert.equal(tileArrived(image, null, 2, 0, 0), false); // no such level
});

test("the AI's stage and score say how final they are", () => {
    assert.equal(stageText({ stage: "edge" }), "Edge triage before the send · coarse, not final");
    assert.equal(stageText({ stage: "hub", complete: false, tiles_scored: 64, tissue_tiles: 660 }), "Hub · still scoring · 64 of 660 tissue tiles scored");
    assert.equal(stageText({ stage: "analyze", complete: true }), "Batch analysis · final");
    assert.equal(stageText({ stage: undefined, tiles_scored: 1, tissue_tiles: 0 }), "Stage not recorded");
    assert.equal(triageText({ score: 0.617, final: false, stage: "edge" }), "AI triage 0.62 edge (coarse)");
    assert.equal(triageText({ score: 0.9, final: false, stage: "hub" }), "AI triage 0.90 (partial)");
    assert.equal(triageText({ score: 0.9, final: true, stage: "hub" }), "AI triage 0.90");
    assert.equal(triageText({ score: 0.05 }), "AI triage 0.05");
});
