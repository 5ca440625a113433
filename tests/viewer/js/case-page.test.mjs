// The case page's header and overlay rules (viewer/static/viewer-core.mjs), as a frozen-section reader reads them:
// `node --test tests/viewer/js/`.
import assert from "node:assert/strict";
import { test } from "node:test";

import { caseScore, caseTitle, overlayOpacity } from "../../../viewer/static/viewer-core.mjs";

const DETECTS = "colorectal adenocarcinoma epithelium";
const scored = (score, more = {}) => ({ score, stage: "hub", final: true, detects: DETECTS, ...more });
const refused = { score: null, stage: "hub", final: true, refused: "no validated AI for skin" };

test("a case is named by its hospital, specimen and site, never by its ID alone", () => {
    const context = { specimen_type: "frozen section", specimen_site: "sigmoid colon", clinical_question: "margin clear?" };
    assert.equal(caseTitle({ hospital: "Hospital C", context }, "theatre-1.9f2c41d07a5e3b18"), "Hospital C · frozen section · sigmoid colon");
    assert.equal(caseTitle({ hospital: "theatre-1", context: { specimen_site: "left breast" } }, "theatre-1.9f2c41d07a5e3b18"), "theatre-1 · left breast");
    // not registered (yet): the station its ID names, and what is missing said
    assert.equal(caseTitle({ context: {} }, "theatre-1.9f2c41d07a5e3b18"), "theatre-1 · specimen not described");
});

test("the header's score is the case's, the worklist's number, and says what it is the probability of", () => {
    assert.deepEqual(caseScore({ s1: scored(0.62) }, "s1"), { text: "AI triage 0.62", meaning: `probability of ${DETECTS}` });
    // two slides: the highest is the case's, and the one on screen says its own
    assert.deepEqual(caseScore({ s1: scored(0.43), s2: scored(0.55) }, "s1"),
        { text: "AI triage 0.55", meaning: `probability of ${DETECTS}, highest of 2 slides (s2); this slide: 0.43` });
    assert.equal(caseScore({ s1: scored(0.43), s2: scored(0.55) }, "s2").meaning, `probability of ${DETECTS}, highest of 2 slides (s2); the slide shown`);
    assert.equal(caseScore({ s1: scored(0.43), s2: null }, "s2").meaning, `probability of ${DETECTS}, highest of 2 slides (s1); this slide: no result yet`);
    assert.equal(caseScore({ s1: scored(0.3, { final: false, stage: "edge" }) }, "s1").text, "AI triage 0.30 edge (coarse)");
    assert.equal(caseScore({ s1: scored(0.5, { detects: undefined }) }, "s1").meaning, "probability of what the model detects");
});

test("a case no validated model covers shows the refusal in words, never a number", () => {
    assert.deepEqual(caseScore({ s1: refused }, "s1"), { text: "no validated AI for skin · QC only", meaning: "" });
    // a scored slide is the case's score; the refused one on screen says so
    assert.deepEqual(caseScore({ s1: refused, s2: scored(0.2) }, "s1"),
        { text: "AI triage 0.20", meaning: `probability of ${DETECTS}, highest of 2 slides (s2); this slide: no validated AI` });
    assert.equal(caseScore({ s1: null }, "s1"), null);
    assert.equal(caseScore({}, null), null);
});

test("at a top region the overlay leaves the cells visible until asked for there", () => {
    assert.equal(overlayOpacity(true, 60, false), 0.6);
    assert.equal(overlayOpacity(true, 60, true), 0);
    assert.equal(overlayOpacity(false, 60, false), 0);
});
