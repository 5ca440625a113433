// The worklist: every case, most urgent first (the server's order: minutes left, then triage score), with where
// it comes from, its slides' arrival, the AI result's stage, the frozen-section clock and the signature. Polled:
// new cases appear by themselves. After the first answer each poll asks only for what changed since the last
// (`since`: rows changed, cases removed) and merges it, in the server's order (viewer/worklist.py `by_urgency`).
// A module: the clock's rule is viewer-core.mjs's.
import { clock } from "./viewer-core.mjs";

(() => {
    const { api, ApiError, offerSignOut, refusedText } = slidestream;
    const $ = (id) => document.getElementById(id);
    const REFRESH_MS = 5000;
    const TURNAROUND_MS = 30 * 60 * 1000; // viewer/worklist.py TURNAROUND
    // what the server's `_parse_time` takes for a clock's start: ISO 8601 with a zone, years 2000-2200
    const ISO_TIME = /^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})$/;
    let offset = 0; // server clock minus ours, so every pathologist sees the same clock
    let cases = [];
    let since = null; // the token of the last answer: the next poll asks for what changed after it

    function showMessage(text) {
        $("message").textContent = text;
        $("message").hidden = !text;
    }

    // Refused (never signed in, or the session ended): "Sign in" where the viewer has a directory to sign in through
    async function refused(error) {
        cases = []; // signed out: the list goes with the session
        since = null;
        render();
        showMessage(`${refusedText} (${error.message})`);
        const directory = await fetch("/auth/oidc", { cache: "no-store" }).catch(() => null);
        $("sign-in").hidden = !(directory && directory.ok);
        $("sign-out").hidden = true;
    }

    function cell(row, content, className) {
        const td = row.insertCell();
        if (className) td.className = className;
        if (content instanceof Node) td.append(content);
        else td.textContent = content;
        return td;
    }

    function render() {
        const body = $("cases").tBodies[0];
        body.replaceChildren();
        for (const entry of cases) {
            const row = body.insertRow();
            row.dataset.case = entry.case;
            const link = document.createElement("a");
            link.href = entry.link; // the session opens it: no token in any address
            link.textContent = entry.case;
            const caseCell = cell(row, link, "case");
            if (entry.unreadable) {
                // the store's text, as text: the case stays on the list, saying what of it cannot be read
                const reason = document.createElement("div");
                reason.className = "unreadable";
                reason.textContent = entry.unreadable;
                caseCell.append(reason);
            }
            cell(row, entry.hospital || "–", "hospital");
            cell(row, entry.specimen || "–", "specimen");
            cell(row, String(entry.slides.length), "slide-count");
            const score = entry.triage ? entry.triage.score : null;
            const meter = document.createElement("span");
            meter.className = "meter";
            meter.append(document.createElement("span"));
            meter.firstChild.style.width = `${(score || 0) * 100}%`;
            const scoreCell = cell(row, meter, "triage");
            // a slide no validated model covers: the words, never a number that looks like a diagnosis
            scoreCell.append(entry.triage && entry.triage.refused ? " no validated AI" : score === null ? " –" : ` ${score.toFixed(2)}`);
            // what the number is, in the case page header's words: the case's, its most suspicious slide's
            if (score !== null) scoreCell.title = `probability of ${entry.triage.detects || "what the model detects"}, the case's highest slide`;
            cell(row, STAGES[entry.stage] || (entry.triage ? "stage not recorded" : "–"), "ai-stage");
            const arrived = entry.planned ? `${Math.round((100 * entry.arrived) / entry.planned)}%` : "";
            const states = { sending: `arriving ${arrived}`, complete: "all arrived ✓" };
            cell(row, entry.state === "failed" ? `failed: ${entry.failed}` : states[entry.state] || entry.state, "arrived");
            const clockCell = cell(row, "", "clock");
            clockCell.dataset.started = entry.started_at || "";
            clockCell.dataset.reported = entry.reported_at || "";
            cell(row, entry.reported_at ? `signed ${new Date(entry.reported_at).toLocaleTimeString()}` : "not signed", "report");
        }
        tick();
    }

    // what the score on the row comes from: an edge triage's coarse map and a hub map still growing are not final
    const STAGES = { edge: "edge (coarse)", hub: "hub (partial)", analyze: "analysis (partial)", final: "final" };

    function tick() {
        for (const td of document.querySelectorAll("td.clock")) {
            const { text, level } = clock(td.dataset.started || null, td.dataset.reported || null, Date.now() + offset);
            td.textContent = text;
            td.className = `clock ${level}`;
        }
    }

    function clockStart(text) {
        if (typeof text !== "string" || !ISO_TIME.test(text)) return null;
        const moment = Date.parse(text);
        const year = new Date(moment).getUTCFullYear();
        return Number.isNaN(moment) || year < 2000 || year > 2200 ? null : moment;
    }

    // the server's order: unsigned by whole minutes left, then score (unscored last); no clock after; signed last
    function urgency(entry, now) {
        const started = clockStart(entry.started_at);
        const minutesLeft = started === null ? 0 : Math.floor((started + TURNAROUND_MS - now) / 60000);
        const score = entry.triage ? entry.triage.score : null;
        return [entry.reported_at != null, started === null, minutesLeft, score == null, -(score || 0), entry.case];
    }

    function byUrgency(entries, now) {
        const keyed = entries.map((entry) => [urgency(entry, now), entry]);
        keyed.sort(([a], [b]) => {
            for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
            return 0;
        });
        return keyed.map(([, entry]) => entry);
    }

    // the whole list (the first answer, or after a server restart), or the rows changed and cases removed since
    function merge(data) {
        if (data.cases) return data.cases;
        const byCase = new Map(cases.map((entry) => [entry.case, entry]));
        for (const entry of data.changed) byCase.set(entry.case, entry);
        for (const gone of data.removed) byCase.delete(gone);
        return byUrgency([...byCase.values()], Date.parse(data.now));
    }

    async function refresh() {
        try {
            const sent = Date.now();
            const data = await api(since ? `/api/worklist?since=${encodeURIComponent(since)}` : "/api/worklist");
            offset = Date.parse(data.now) - (sent + Date.now()) / 2; // the server's time was read mid-round-trip
            cases = merge(data);
            since = data.since;
            showMessage(cases.length ? "" : "No cases yet.");
            render();
        } catch (error) {
            if (error instanceof ApiError && error.refused) {
                refused(error);
                return;
            }
            showMessage(`Connection problem: ${error.message}. Retrying…`);
        }
        setTimeout(refresh, REFRESH_MS);
    }

    // A station's user signs in by the same kind of link, but the worklist is the centre's: the page offers the
    // station's own cases by their ID instead (`slidestream status` and the outbox's reports name them), at /view/CASE.
    function offerStationCases(user) {
        $("station-line").textContent = `Signed in as ${user.name} (station). The worklist is the centre's; a station opens the cases it ` +
            "registered by their ID, as `slidestream status` and the reports in its outbox name them.";
        $("cases").hidden = true;
        $("station-open").hidden = false;
        const open = () => {
            const id = $("station-case").value.trim();
            if (id) location.assign(`/view/${encodeURIComponent(id)}`);
        };
        $("station-go").addEventListener("click", open);
        $("station-case").addEventListener("keydown", (event) => event.key === "Enter" && open());
    }

    async function start() {
        try {
            const me = await api("/api/me");
            offerSignOut(me);
            if (me.user && me.user.role === "station") {
                offerStationCases(me.user);
                return;
            }
        } catch (error) {
            if (error instanceof ApiError && error.refused) {
                refused(error);
                return;
            }
            showMessage(`Connection problem: ${error.message}`);
        }
        setInterval(tick, 1000);
        refresh();
    }

    start();
})();
