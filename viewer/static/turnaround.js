"use strict";
// The centre's turnaround (viewer/turnaround.py): the share of frozen sections reported within 20 and 30 minutes of
// registration, deferrals and median minutes, overall, per hospital and per pathologist, and each case's times.
// Every value is the store's or a person's text: set as text, never as markup.
(() => {
    const { api, ApiError, offerSignOut, refusedText } = slidestream;
    const $ = (id) => document.getElementById(id);
    const FIGURES = [["signed", "signed"], ["share_20", "≤ 20 min"], ["share_30", "≤ 30 min"], ["deferred", "deferred"], ["median_minutes", "median min"]];
    const CASE_COLUMNS = [
        ["case", "case"], ["hospital", "hospital"], ["registered_at", "registered"], ["first_viewable_at", "first slide viewable"],
        ["signed_at", "signed"], ["minutes_to_report", "minutes"], ["category", "category"], ["pathologist", "pathologist"],
        ["late_reason", "reason for over 20 min"],
    ];

    function showMessage(text) {
        $("message").textContent = text;
        $("message").hidden = !text;
    }

    function shown(name, value, row) {
        if (value === null || value === undefined) return "–";
        if (name.startsWith("share_")) return `${(100 * value).toFixed(0)}% (${row[name.replace("share_", "within_")]})`;
        if (name.endsWith("_at")) return new Date(value).toLocaleString();
        return String(value);
    }

    function table(id, columns, rows) {
        const head = document.createElement("tr");
        for (const [, title] of columns) {
            const th = document.createElement("th");
            th.textContent = title;
            head.append(th);
        }
        $(id).tHead.replaceChildren(head);
        const body = $(id).tBodies[0];
        body.replaceChildren();
        for (const row of rows) {
            const tr = body.insertRow();
            for (const [name] of columns) tr.insertCell().textContent = shown(name, row[name], row);
            if (row.within_20 === false) tr.className = row.late_reason ? "late" : "late unexplained";
        }
    }

    function period() {
        const query = new URLSearchParams();
        for (const name of ["since", "until"]) {
            if ($(name).value) query.set(name, new Date(`${$(name).value}T00:00`).toISOString());
        }
        return query.toString() ? `?${query}` : "";
    }

    async function show() {
        const query = period();
        $("csv").href = `/api/turnaround.csv${query}`;
        try {
            const data = await api(`/api/turnaround${query}`);
            table("overall", FIGURES, [data.overall]);
            table("hospitals", [["hospital", "hospital"], ...FIGURES], data.hospitals);
            table("pathologists", [["pathologist", "pathologist"], ...FIGURES], data.pathologists);
            table("cases", CASE_COLUMNS, data.cases);
            showMessage(data.cases.length ? "" : "No cases registered in this period.");
        } catch (error) {
            showMessage(error instanceof ApiError && error.refused ? `${refusedText} (${error.message})` : `Not shown: ${error.message}`);
        }
    }

    async function start() {
        try {
            offerSignOut(await api("/api/me"));
        } catch (error) {
            showMessage(error instanceof ApiError && error.refused ? `${refusedText} (${error.message})` : `Connection problem: ${error.message}`);
            return;
        }
        $("period").addEventListener("submit", (event) => {
            event.preventDefault();
            show();
        });
        show();
    }

    start();
})();
