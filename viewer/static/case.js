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
    // the surgeon's question first: it is what the reader answers
    const CONTEXT_ORDER = ["clinical_question", "specimen_type", "specimen_site", "surgeon", "callback", "hospital"];
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
        const context = info.context || {};
        const names = Object.keys(context).sort((a, b) => rank(a) - rank(b));
        const pairs = names.map((name) => [CONTEXT_LABELS[name] || name, context[name]]);
        if (info.registered_at) pairs.push(["Registered", new Date(info.registered_at).toLocaleString()]);
        definitions($("context"), pairs.length ? pairs : [["", "no clinical context registered"]]);
        if (context.clinical_question) for (const cell of $("context").querySelectorAll("dt:first-of-type, dd:first-of-type")) cell.classList.add("question");
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

    function rank(name) {
        const at = CONTEXT_ORDER.indexOf(name);
        return at < 0 ? CONTEXT_ORDER.length : at;
    }

    function reportPairs(report) {
        const pairs = [["Category", report.category], ["Diagnosis", report.diagnosis], ["Margins", report.margins || "–"], ["Comment", report.comment || "–"]];
        const known = report.missing ? [...pairs, ["Signed knowing", report.missing]] : pairs;
        return report.late_reason ? [...known, ["Why after 20 min", report.late_reason]] : known;
    }

    function signedLine(report) {
        // numbered as the station's outbox, its PDF and its HL7 message number it: by the report's number, so
        // "Amendment 2 (amends report 1)" is the same document at the centre and in the operating room
        const kind = report.kind === "signed" ? "Signed" : `Amendment ${report.number} (amends report ${report.amends})`;
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

    // a rework order's state as the hospital's station wrote it: asked → acknowledged → fulfilled (by a slide version)
    function orderState(state) {
        if (!state) return "asked";
        if (state.state === "fulfilled" && state.fulfilled_by) return `fulfilled: ${state.fulfilled_by.slide} ${state.fulfilled_by.version}`;
        return state.state;
    }

    // Each request (a rework order with its state), then one line per document of the folders that was refused.
    function renderRequests({ requests, orders, refused }) {
        const list = $("asked");
        list.replaceChildren();
        for (const request of requests) {
            const item = document.createElement("li");
            const order = request.order ? `${request.order}${request.stain ? ` ${request.stain}` : ""}: ` : "";
            const state = request.order ? ` · ${orderState((orders || {})[request.number])}` : "";
            item.textContent = `${order}${request.what}${request.slide ? ` (${request.slide})` : ""} · ${request.author.name}, ${new Date(request.asked_at).toLocaleTimeString()}${state}`;
            item.dataset.number = request.number;
            list.append(item);
        }
        for (const line of refused || []) {
            const item = document.createElement("li");
            item.className = "refused";
            item.textContent = line;
            list.append(item);
        }
    }

    const REQUESTS_POLL_MS = 5000; // the station's acknowledgement and fulfilment show without a reload
    async function pollRequests() {
        try {
            renderRequests(await api(`${base}/requests`));
        } catch (error) {
            if (!(error instanceof ApiError)) throw error;
        }
        setTimeout(pollRequests, REQUESTS_POLL_MS);
    }

    const SPECIMEN_ORDERS = new Set(["new-block", "additional-section"]); // IHE DPOW: orders on the specimen, not a slide

    async function askHospital(slide) {
        const what = $("ask-what").value.trim();
        const order = $("ask-order").value || null;
        const stain = order === "stain" ? $("ask-stain").value.trim() || null : null;
        if (!what && !order) return;
        $("ask-send").disabled = true;
        try {
            await api(`${base}/requests`, {
                // a new block or an additional section is of the specimen, not of the slide on screen
                method: "POST", headers: { "Content-Type": "application/json" },
                body: JSON.stringify({ what, slide: SPECIMEN_ORDERS.has(order) ? null : slide, order, stain }),
            });
            $("ask-what").value = "";
            $("ask-note").textContent = "Sent to the hospital.";
            renderRequests(await api(`${base}/requests`));
        } catch (error) {
            $("ask-note").textContent = `Not sent: ${error.message}`;
        } finally {
            $("ask-send").disabled = false;
        }
    }

    // The shown slide's scan as the hospital's station checked it: each check's line ("rescan advised: ..." first) and
    // the macro image (the whole glass, label blanked) beside the slide, enlarged on a click. Lines are the store's text.
    const macros = new Map(); // "s1/v1" -> object URL of its macro ("" while asked)
    function renderScan(info, slide) {
        const entry = (info.slides || []).find((each) => each.slide === slide);
        const checked = entry && entry.scan_qc;
        $("scan-box").hidden = !checked;
        if (!checked) return;
        const advice = new Set(checked.advice);
        const lines = checked.unreadable ? [checked.unreadable] : [...checked.advice, ...checked.lines.filter((line) => !advice.has(line))];
        $("scan-lines").replaceChildren(...lines.map((line) => {
            const item = document.createElement("li");
            item.textContent = line;
            if (advice.has(line)) item.className = "advice";
            return item;
        }));
        const key = `${entry.slide}/${entry.version}`;
        $("macro-open").hidden = !checked.macro || !macros.get(key);
        if (checked.macro && !macros.has(key)) loadMacro(entry, key, slide);
        else if (macros.get(key)) $("macro").src = $("macro-large").src = macros.get(key);
    }

    async function loadMacro(entry, key, slide) {
        macros.set(key, "");
        const response = await fetch(`${base}/slides/${encodeURIComponent(entry.slide)}/${encodeURIComponent(entry.version)}/macro`,
            { headers: slidestream.authorization() }).catch(() => null);
        if (!response || !response.ok) return; // none shown (the lines still are)
        macros.set(key, URL.createObjectURL(await response.blob()));
        if (shownSlide !== slide) return;
        $("macro").src = $("macro-large").src = macros.get(key);
        $("macro-open").hidden = false;
    }

    // Called with the case as /api/cases/CASE describes it, each time the page (re)opens it; `slide` is the slide
    // on screen (or null). The forms are set up once, so a reopening never loses what is being typed.
    async function show(caseBase, info, slide) {
        base = caseBase;
        shownSlide = slide;
        const before = arrived;
        renderCase(info);
        renderScan(info, slide);
        if (started) {
            if (arrived !== before && me) renderReports();
            return;
        }
        started = true;
        me = await api("/api/me");
        $("who").textContent = me.user ? `${me.user.name} (${me.user.role})` : "case link · view only";
        slidestream.offerSignOut(me);
        $("amend").addEventListener("click", amend);
        $("macro-open").addEventListener("click", () => $("macro-dialog").showModal());
        $("sign").addEventListener("click", sign);
        setInterval(showLate, 10000);
        const pathologist = me.user && me.user.role === "pathologist";
        $("ask").hidden = !pathologist;
        if (pathologist) {
            $("ask-send").addEventListener("click", () => askHospital(shownSlide));
            $("ask-order").addEventListener("change", () => ($("ask-stain").hidden = $("ask-order").value !== "stain"));
            await pollRequests();
        }
        await loadReports();
    }

    // who the page's token is (/api/me), once show() has run
    return { show, me: () => me };
})();
