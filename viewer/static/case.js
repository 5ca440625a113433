"use strict";
// The case panel beside the slide: the clinical context, the structured report (a form until a
// pathologist signs it, then read-only with "Amend"; every version readable) and "ask the hospital".
// Only a pathologist's own sign-in link may sign, amend or ask; a case link sees the panel read-only.
const caseView = (() => {
    const { api, ApiError } = slidestream;
    const $ = (id) => document.getElementById(id);
    const CONTEXT_LABELS = {
        specimen_site: "Specimen site", specimen_type: "Specimen type", clinical_question: "Clinical question",
        surgeon: "Requesting surgeon", callback: "Call back", hospital: "Hospital",
    };
    let base = null;
    let me = null;
    let reports = [];
    let arrived = false;
    let missing = null; // "N of M slides failed at the hospital: ...", as the server said it
    let registeredAt = null;
    let lateAsked = false; // the server refused the report for want of a reason (its clock is the one that counts)
    const LATE_MS = 20 * 60 * 1000; // CAP ANP.11820: a first report after 20 minutes says why
    let started = false;
    let shownSlide = null;

    function definitions(list, pairs) {
        list.replaceChildren();
        for (const [term, value] of pairs) {
            const dt = document.createElement("dt");
            dt.textContent = term;
            const dd = document.createElement("dd");
            dd.textContent = value;
            list.append(dt, dd);
        }
    }

    function renderCase(info) {
        const pairs = Object.entries(info.context || {}).map(([name, value]) => [CONTEXT_LABELS[name] || name, value]);
        if (info.registered_at) pairs.push(["Registered", new Date(info.registered_at).toLocaleString()]);
        definitions($("context"), pairs.length ? pairs : [["", "no clinical context registered"]]);
        // the slides themselves (thumbnails, switching) are viewer.js's
        arrived = info.slides.some((slide) => slide.state !== "failed" && slide.state !== "unreadable");
        renderRefused(info);
        // slides the hospital could not send, or that failed on the way: said before the case is read as whole
        missing = info.missing || null;
        registeredAt = info.registered_at || null;
        $("missing-line").textContent = missing || "";
        $("missing").hidden = !info.missing;
    }

    // What of the case the server would not believe (documents not signed by the centre, or changed) or could not
    // read: a warning above the panel, each reason as text (it is the store's, so never markup).
    function renderRefused(info) {
        const lines = [...(info.unreadable ? [info.unreadable] : []), ...(info.refused || []).map((reason) => `refused: ${reason}`)];
        const items = lines.map((line) => {
            const item = document.createElement("li");
            item.textContent = line;
            return item;
        });
        $("refused-list").replaceChildren(...items);
        $("refused").hidden = !lines.length;
    }

    function reportPairs(report) {
        const pairs = [["Category", report.category], ["Diagnosis", report.diagnosis], ["Margins", report.margins || "–"], ["Comment", report.comment || "–"]];
        const known = report.missing ? [...pairs, ["Signed knowing", report.missing]] : pairs;
        return report.late_reason ? [...known, ["Why after 20 min", report.late_reason]] : known;
    }

    function signedLine(report) {
        const kind = report.kind === "signed" ? "Signed" : `Amendment ${report.number - 1}`;
        return `${kind} by ${report.author.name} at ${new Date(report.signed_at).toLocaleString()}`;
    }

    function renderReports() {
        const newest = reports[reports.length - 1];
        const canSign = me && me.user && me.user.role === "pathologist";
        $("signed").hidden = !newest;
        if (newest) {
            $("signed-by").textContent = signedLine(newest);
            definitions($("signed-report"), reportPairs(newest));
        }
        $("amend").hidden = !(newest && canSign);
        $("report-form").hidden = Boolean(newest) || !canSign || !arrived;
        $("sign").textContent = "Sign report";
        if (!canSign && !newest) $("report-note").textContent = me && me.user ? "Only a pathologist signs reports." : "View only: a case link cannot sign; sign in as a pathologist.";
        else if (!arrived && !newest) $("report-note").textContent = "No slide of this case arrived: nothing to report on.";
        const versions = $("versions");
        versions.replaceChildren();
        for (const report of reports) {
            const item = document.createElement("li");
            item.dataset.number = report.number;
            const line = document.createElement("p");
            line.textContent = signedLine(report);
            const details = document.createElement("dl");
            definitions(details, reportPairs(report));
            item.append(line, details);
            versions.append(item);
        }
        $("history").hidden = reports.length < 2;
        showLate();
    }

    // the reason field of a first report signed more than 20 minutes after the registration
    function showLate() {
        $("late").hidden = reports.length > 0 || !(lateAsked || (registeredAt && Date.now() - Date.parse(registeredAt) > LATE_MS));
    }

    function amend() {
        const newest = reports[reports.length - 1];
        $("category").value = newest.category;
        $("diagnosis").value = newest.diagnosis;
        $("margins").value = newest.margins || "";
        $("comment").value = newest.comment || "";
        $("report-form").hidden = false;
        $("amend").hidden = true;
        $("sign").textContent = "Sign amendment";
    }

    async function sign() {
        const newest = reports[reports.length - 1];
        const form = {
            category: $("category").value, diagnosis: $("diagnosis").value.trim(),
            margins: $("margins").value.trim() || null, comment: $("comment").value.trim() || null,
            amends: newest ? newest.number : null, missing_seen: missing,
            late_reason: $("late").hidden ? null : $("late-reason").value.trim() || null,
        };
        if (!form.category || !form.diagnosis) {
            $("report-note").textContent = "Choose a category and write the diagnosis first.";
            return;
        }
        if (!$("late").hidden && !form.late_reason) {
            $("report-note").textContent = "More than 20 minutes since registration: say why before signing.";
            $("late-reason").focus();
            return;
        }
        const what = newest ? "this amendment" : "this report";
        const warning = missing ? `\n\n${missing}: the report will say it was signed knowing this.` : "";
        if (!window.confirm(`Sign ${what} as ${me.user.name}? A signed version is final and goes to the hospital.${warning}`)) return;
        $("sign").disabled = true;
        try {
            const signed = await api(`${base}/reports`, {
                method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(form),
            });
            reports = [...reports, signed];
            $("report-note").textContent = "";
            renderReports();
            document.dispatchEvent(new CustomEvent("report-signed", { detail: reports[0] }));
        } catch (error) {
            $("report-note").textContent = `Not signed: ${error.message}`;
            lateAsked = error instanceof ApiError && error.status === 409 && error.message.includes("late_reason");
            if (error instanceof ApiError && error.status === 409) loadReports();
        } finally {
            $("sign").disabled = false;
        }
    }

    async function loadReports() {
        reports = (await api(`${base}/reports`)).reports;
        renderReports();
    }

    function renderRequests(requests) {
        const list = $("asked");
        list.replaceChildren();
        for (const request of requests) {
            const item = document.createElement("li");
            item.textContent = `${request.what}${request.slide ? ` (${request.slide})` : ""} · ${request.author.name}, ${new Date(request.asked_at).toLocaleTimeString()}`;
            list.append(item);
        }
    }

    async function askHospital(slide) {
        const what = $("ask-what").value.trim();
        if (!what) return;
        $("ask-send").disabled = true;
        try {
            await api(`${base}/requests`, {
                method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ what, slide }),
            });
            $("ask-what").value = "";
            $("ask-note").textContent = "Sent to the hospital.";
            renderRequests((await api(`${base}/requests`)).requests);
        } catch (error) {
            $("ask-note").textContent = `Not sent: ${error.message}`;
        } finally {
            $("ask-send").disabled = false;
        }
    }

    // Called with the case as /api/cases/CASE describes it, each time the page (re)opens it; `slide` is the slide
    // on screen (or null). The forms are set up once, so a reopening never loses what is being typed.
    async function show(caseBase, info, slide) {
        base = caseBase;
        shownSlide = slide;
        const before = arrived;
        renderCase(info);
        if (started) {
            if (arrived !== before && me) renderReports();
            return;
        }
        started = true;
        me = await api("/api/me");
        $("who").textContent = me.user ? `${me.user.name} (${me.user.role})` : "case link · view only";
        slidestream.offerSignOut(me);
        $("amend").addEventListener("click", amend);
        $("sign").addEventListener("click", sign);
        setInterval(showLate, 10000);
        const pathologist = me.user && me.user.role === "pathologist";
        $("ask").hidden = !pathologist;
        if (pathologist) {
            $("ask-send").addEventListener("click", () => askHospital(shownSlide));
            renderRequests((await api(`${base}/requests`)).requests);
        }
        await loadReports();
    }

    // who the page's token is (/api/me), once show() has run
    return { show, me: () => me };
})();
