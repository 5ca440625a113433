// The case viewer: OpenSeadragon over the slide's chunks, sharpening as shards arrive, with the AI overlay and its
// top regions, a scale bar, ruler and area tools, annotations, keyboard navigation and the case panel (case.js:
// context, slides, report). State lives in the store; this page only polls and draws. A module: its pure rules
// (lengths, areas, the scale bar, the clock, tile arrival) are viewer-core.mjs's, unit-tested on their own.
import * as core from "./viewer-core.mjs";

(() => {
    const { api, ApiError, authorization, refusedText } = slidestream;
    const { NO_MPP, clock, stageText } = core;
    const caseId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
    const $ = (id) => document.getElementById(id);
    const POLL_MS = 2000;
    const SLIDES_POLL_MS = 5000; // how soon a slide sent later, or another pathologist's annotation, appears
    const PAN_STEP = 0.2; // of the view per arrow key
    const ZOOM_STEP = 1.5; // per + or -
    const REGION_MARGIN = 0.25; // of a top region's size, kept around it when jumping there
    const SVG = "http://www.w3.org/2000/svg";
    const SAME_SHAPE = Math.log(1.25); // aspect ratios within 25%: a switch of slide keeps the view's place

    // The case's slides as /api/cases/CASE lists them (each at its newest version), stepped through with [ and ].
    let slides = [];
    let slideIndex = 0;

    // Every URL this page builds, in one place, so the store's case layout can move without touching the rest
    // (the slide shown is slides[slideIndex]).
    function url(what, { level, row, col, send, version, of } = {}) {
        const base = `/api/cases/${encodeURIComponent(caseId)}`;
        const shown = of || slides[slideIndex]; // the slide version asked about: the one shown unless `of` names one
        const slide = shown && `${base}/slides/${encodeURIComponent(shown.slide)}/${encodeURIComponent(shown.version)}`;
        switch (what) {
            case "case":
                return base;
            case "annotations":
                return `${base}/annotations`;
            case "slides":
                return `${base}/slides`;
            case "thumbnail":
                return `${slide}/thumbnail`;
            case "image":
                return `${slide}/image`;
            case "status":
                return `${slide}/status`;
            case "tile":
                return `${slide}/tiles/${level}/${row}/${col}${send ? `?send=${encodeURIComponent(send)}` : ""}`;
            case "heatmap":
                return `${slide}/heatmap/${level}/${row}/${col}.png?v=${encodeURIComponent(version)}`;
            default:
                throw new Error(`no URL for ${what}`);
        }
    }

    let info = null;
    let viewer = null;
    let slideLayer = null;
    let heatLayer = null;
    let shownStates = null;
    let heatVersion = null;
    let regions = [];
    let regionIndex = -1;
    let mapAtRegion = false; // the reader asked for the map at the region jumped to (else it is hidden there)
    let triages = {}; // each slide's AI result (the shown one's from its status poll): the header's case score
    let regionsKey = "";
    const TOOLS = ["ruler", "area", "point", "line", "polygon"];
    let tool = null; // one of TOOLS, or null: the mouse pans and zooms
    let draft = null; // the annotation being drawn: { kind, points, hover }
    let annotations = []; // the case's, as saved on the store; those of the slide version shown are drawn
    let shape = null; // the measurement on screen: { kind, a, b }, points in level-0 image pixels
    let dragging = false;
    let marks = null; // the SVG the measurement and the current region are drawn on
    let polling = false;
    let keptView = null; // the view (fractions of the slide) the next slide opens at, from the slide before it
    // the clock: from the specimen's registration (else the send's start) to the first signed report
    const times = { registered: null, started: null, reported: null };

    function showMessage(text) {
        $("message").textContent = text;
        $("message").hidden = !text;
    }

    // OpenSeadragon levels go up in resolution; ours go down (level 0 = full resolution).
    // `tag` goes into tile URLs: the heatmap's version, or the send's start (a rescan must not hit cached tiles)
    // (`image` and `of`: another slide version's, for the side-by-side view)
    function tileSource(kind, states, tag, image = info, of = null) {
        const maxLevel = image.levels.length - 1;
        return {
            width: image.width,
            height: image.height,
            tileSize: image.tile_size,
            tileOverlap: 0,
            minLevel: 0,
            maxLevel,
            // only tiles that exist and have arrived are requested: the coarser level shows meanwhile
            tileExists: (level, x, y) => core.tileArrived(image, states, level, x, y),
            getTileUrl(level, x, y) {
                const address = { level: maxLevel - level, row: y, col: x, of };
                return kind === "heatmap" ? url("heatmap", { ...address, version: tag }) : url("tile", { ...address, send: tag });
            },
        };
    }

    // A layer is replaced by a fresh TiledImage when its tiles change (new arrivals, new heatmap); the old one stays
    // on screen until the new one has loaded, so the picture sharpens without flicker. Tiles already fetched come
    // from OpenSeadragon's cache and the browser's (they are immutable), so a swap costs little.
    class Layer {
        constructor(bottom, opacity) {
            this.bottom = bottom;
            this.opacity = opacity;
            this.item = null;
            this.pending = null;
            this.next = null;
        }

        show(source) {
            if (this.pending) {
                this.next = source;
                return;
            }
            const options = { tileSource: source, opacity: this.opacity };
            if (this.bottom) options.index = 0;
            options.success = ({ item }) => {
                if (!this.item) {
                    this.item = item;
                    if (this.bottom && keptView) {
                        const { x, y, width, height } = keptView;
                        viewer.viewport.fitBounds(item.imageToViewportRectangle(x * info.width, y * info.height, width * info.width, height * info.height), true);
                        keptView = null;
                    }
                    updateScaleBar();
                    drawMarks();
                    return;
                }
                this.pending = item;
                const swap = () => {
                    viewer.world.removeItem(this.item);
                    this.item = item;
                    this.pending = null;
                    if (this.next) {
                        const next = this.next;
                        this.next = null;
                        this.show(next);
                    }
                };
                // a hidden layer never loads its tiles: swap at once
                if (item.getFullyLoaded() || item.getOpacity() === 0) {
                    swap();
                    return;
                }
                const handler = (event) => {
                    if (event.fullyLoaded) {
                        item.removeHandler("fully-loaded-change", handler);
                        swap();
                    }
                };
                item.addHandler("fully-loaded-change", handler);
            };
            viewer.addTiledImage(options);
        }

        setOpacity(opacity) {
            this.opacity = opacity;
            for (const item of [this.item, this.pending]) if (item) item.setOpacity(opacity);
        }
    }

    function updateScaleBar() {
        const bar = $("scalebar");
        const item = slideLayer && slideLayer.item;
        if (!info.mpp || !item) {
            bar.hidden = true;
            return;
        }
        const { pixels, label } = core.scaleBar(info.mpp / item.viewportToImageZoom(viewer.viewport.getZoom(true)));
        bar.querySelector(".bar").style.width = `${pixels}px`;
        bar.querySelector(".label").textContent = label;
        bar.hidden = false;
    }

    // hidden at a top region jumped to (the map would cover its cells) until asked for there: regionIndex >= 0
    // from a jump until the view goes home or to another slide
    function heatOpacity() {
        return core.overlayOpacity($("heat-on").checked, Number($("heat-opacity").value), regionIndex >= 0 && !mapAtRegion);
    }

    function showHeat() {
        if (heatLayer) heatLayer.setOpacity(heatOpacity());
        $("region-note").hidden = !(regionIndex >= 0 && !mapAtRegion && $("heat-on").checked);
    }

    // the case's score (the worklist's: its most suspicious slide's) and what it means, in the header
    function showScore() {
        const said = core.caseScore(triages, slides[slideIndex] ? slides[slideIndex].slide : null);
        $("score-box").hidden = !said;
        $("score").textContent = said ? said.text : "";
        $("score-meaning").textContent = said ? said.meaning : "";
    }

    function applyStatus(status) {
        const shown = slides[slideIndex];
        if (shown && status.state !== shown.state) {
            [shown.state, shown.failed] = [status.state, status.failed];
            showSlides();
        }
        if (status.state === "failed") {
            showMessage(`case ${caseId}: send failed: ${status.failed}`);
            return;
        }
        const states = status.manifest ? status.levels : null;
        const key = `${status.started_at}|${states ? states.map((level) => level.state).join("|") : "all"}`;
        if (key !== shownStates) {
            shownStates = key;
            slideLayer.show(tileSource("slide", states, status.started_at));
        }
        const progress = $("progress");
        progress.hidden = !status.manifest;
        if (status.manifest) {
            const planned = status.levels.reduce((sum, level) => sum + level.planned, 0);
            const arrived = status.levels.reduce((sum, level) => sum + level.arrived, 0);
            const full = status.levels[0];
            progress.querySelector(".bar span").style.width = `${planned ? (100 * arrived) / planned : 0}%`;
            progress.querySelector(".label").textContent = status.complete
                ? "all arrived"
                : `arriving · full resolution ${full.arrived}/${full.planned}`;
        }
        // pieces that failed their checksum on the store: refused (never drawn), asked again of the hospital
        const corrupt = status.corrupt || [];
        progress.classList.toggle("corrupt", corrupt.length > 0);
        if (corrupt.length) {
            progress.hidden = false;
            progress.querySelector(".label").textContent = `corrupt on the store, asked again of the hospital: ${corrupt.join(", ")}`;
        }
        if (status.heatmap && status.heatmap.version !== heatVersion) {
            heatVersion = status.heatmap.version;
            showLegend(status.heatmap.legend);
            $("ai-stage").textContent = stageText(status.heatmap);
            $("overlay").hidden = false;
            heatLayer.show(tileSource("heatmap", null, heatVersion));
        }
        showRegions(status.top_regions || []);
        if (shown) triages = { ...triages, [shown.slide]: status.triage };
        showScore();
        showModel(status.triage);
        times.started = times.registered || status.started_at;
        times.reported = status.report && status.report.signed_at;
        tick();
    }

    function tick() {
        const { text, level } = clock(times.started, times.reported, Date.now());
        $("clock").textContent = times.started ? text : "";
        $("clock").className = `clock ${level}`;
    }

    async function poll() {
        try {
            const asked = url("status");
            const status = await api(asked);
            if (asked === url("status") && slideLayer) applyStatus(status);
        } catch (error) {
            if (error instanceof ApiError && error.refused) {
                showMessage(`${refusedText} (${error.message})`);
                return;
            }
            showMessage(`Connection problem: ${error.message}. Retrying…`);
            setTimeout(() => showMessage(""), POLL_MS);
        }
        setTimeout(poll, POLL_MS);
    }

    // -- the overlay's legend, stage and top regions -------------------------------------------------------------
    function showLegend(legend) {
        const stops = legend.stops.map(({ at, rgb }) => `rgb(${rgb.join(",")}) ${at * 100}%`);
        $("legend-ramp").style.background = `linear-gradient(to right, ${stops.join(", ")})`;
        const { rgb, period } = legend.pending;
        const half = period / 2;
        $("legend-pending").style.background = `repeating-linear-gradient(45deg, rgb(${rgb.join(",")}) 0 ${half}px, transparent ${half}px ${period}px), #b5739d`;
    }

    // what the model detects and how it did on its validation tiles, beside its map; a refused slide gets the
    // refusal and its QC instead, never a score
    function showModel(triage) {
        const refused = triage && triage.refused;
        $("ai-refused").hidden = !refused;
        if (refused) {
            $("overlay").hidden = true;
            $("ai-refused-text").textContent = refused;
            const { blur_fraction: blur, pen_fraction: pen, tiles } = triage.qc || {};
            const percent = (value) => (typeof value === "number" ? `${Math.round(value * 100)}%` : "not measured");
            $("ai-qc").textContent = `QC: ${triage.tissue_tiles || 0} tissue tiles; blurry ${percent(blur)}, pen marks ${percent(pen)}` +
                (tiles ? ` (of ${tiles} tiles measured)` : "");
            return;
        }
        $("legend-detects").textContent = triage && triage.detects ? `probability of ${triage.detects}` : "probability of what the model detects";
        $("model-record").hidden = !(triage && triage.validation);
        $("model-record").textContent = triage && triage.validation ? `validation: ${triage.validation}` : "";
    }

    function showRegions(list) {
        const key = JSON.stringify(list);
        if (key === regionsKey) return;
        regionsKey = key;
        regions = list;
        leaveRegion();
        const items = list.map((region, index) => {
            const button = document.createElement("button");
            button.type = "button";
            const size = formatSize(region.width, region.height);
            button.textContent = `${region.score.toFixed(2)} · ${size}`;
            button.setAttribute("aria-label", `Go to region ${index + 1}: probability ${region.score.toFixed(2)}, ${size}`);
            button.addEventListener("click", () => goToRegion(index));
            const item = document.createElement("li");
            item.append(button);
            return item;
        });
        $("regions").replaceChildren(...items);
        $("regions-box").hidden = !list.length;
        drawMarks();
    }

    function goToRegion(index) {
        const item = slideLayer && slideLayer.item;
        if (!regions.length || !item) return;
        leader = viewer;
        regionIndex = ((index % regions.length) + regions.length) % regions.length;
        mapAtRegion = false;
        showHeat();
        const { x, y, width, height } = regions[regionIndex];
        const [mx, my] = [width * REGION_MARGIN, height * REGION_MARGIN];
        viewer.viewport.fitBoundsWithConstraints(item.imageToViewportRectangle(x - mx, y - my, width + 2 * mx, height + 2 * my));
        [...$("regions").querySelectorAll("button")].forEach((button, i) => {
            if (i === regionIndex) button.setAttribute("aria-current", "true");
            else button.removeAttribute("aria-current");
        });
        drawMarks();
    }

    // back from a region: the overlay as the reader set it
    function leaveRegion() {
        regionIndex = -1;
        mapAtRegion = false;
        for (const button of $("regions").querySelectorAll("button")) button.removeAttribute("aria-current");
        showHeat();
        drawMarks();
    }

    // -- measuring: in level-0 image pixels, drawn on an SVG over the slide and redrawn every frame -------------
    // lengths and areas in µm / mm from the shown slide's mpp (viewer-core.mjs); in pixels where it records none
    // (the annotations are listed before the slide's description has come: no mpp yet)
    const mpp = () => (info ? info.mpp : null);
    const formatSize = (width, height) => core.formatSize(width, height, mpp());
    const annotationSize = (annotation) => core.annotationSize(annotation, mpp());
    const measurement = (drawn) => core.measurement(drawn, mpp());

    function imageToElement(point) {
        return slideLayer.item.imageToViewerElementCoordinates(new OpenSeadragon.Point(point.x, point.y));
    }

    function eventToImage(event) {
        const box = viewer.element.getBoundingClientRect();
        const point = slideLayer.item.viewerElementToImageCoordinates(new OpenSeadragon.Point(event.clientX - box.left, event.clientY - box.top));
        return { x: point.x, y: point.y };
    }

    function svg(name, attributes, text) {
        const node = document.createElementNS(SVG, name);
        for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
        if (text) node.textContent = text;
        marks.append(node);
        return node;
    }

    function drawRect(a, b, className) {
        const [p, q] = [imageToElement(a), imageToElement(b)];
        svg("rect", { class: className, x: Math.min(p.x, q.x), y: Math.min(p.y, q.y), width: Math.abs(q.x - p.x), height: Math.abs(q.y - p.y) });
    }

    function label(point, text) {
        svg("text", { x: point.x + 8, y: point.y - 8 }, text);
    }

    function drawAnnotation({ kind, points, text }, className) {
        const on = points.map(([x, y]) => imageToElement({ x, y }));
        const list = on.map((q) => `${q.x},${q.y}`).join(" ");
        if (kind === "point") svg("circle", { class: className, cx: on[0].x, cy: on[0].y, r: 5 });
        else if (kind === "line") svg("line", { class: className, x1: on[0].x, y1: on[0].y, x2: on[1].x, y2: on[1].y });
        else svg(className === "draft" ? "polyline" : "polygon", { class: className, points: list });
        if (text) label(on[0], text);
        if (className === "draft" && kind === "polygon" && points.length >= 3) label(on[on.length - 1], annotationSize({ kind, points }));
    }

    function drawMarks() {
        if (!marks) return;
        marks.replaceChildren();
        if (!slideLayer || !slideLayer.item) return;
        if (regions[regionIndex]) {
            const { x, y, width, height } = regions[regionIndex];
            drawRect({ x, y }, { x: x + width, y: y + height }, "region");
        }
        for (const annotation of shownAnnotations()) drawAnnotation(annotation, "note");
        if (draft) drawAnnotation({ ...draft, points: [...draft.points, ...(draft.hover ? [draft.hover] : [])].map(({ x, y }) => [x, y]) }, "draft");
        if (!shape) return;
        const [p, q] = [imageToElement(shape.a), imageToElement(shape.b)];
        if (shape.kind === "ruler") {
            svg("line", { class: "ruler", x1: p.x, y1: p.y, x2: q.x, y2: q.y });
            for (const end of [p, q]) svg("circle", { class: "ruler", cx: end.x, cy: end.y, r: 3 });
        } else {
            drawRect(shape.a, shape.b, "area");
        }
        label(q, measurement(shape).replace(` (${NO_MPP})`, "").replace(`; ${NO_MPP}`, ""));
    }

    function setTool(name) {
        tool = name;
        draft = null;
        for (const kind of TOOLS) $(`tool-${kind}`).setAttribute("aria-pressed", String(tool === kind));
        marks.classList.toggle("active", Boolean(tool));
        drawMarks();
    }

    // -- annotations: point, line, polygon with a short text, in level-0 image pixels of the slide version ----
    // Saved with the case on the store (CASE/annotations/), with the signed-in pathologist as author; anyone who
    // opens the case (a case link, the hospital's station) sees them.
    function shownAnnotations() {
        const shown = slides[slideIndex];
        return shown ? annotations.filter((a) => a.slide === shown.slide && a.version === shown.version) : [];
    }

    // Called on opening the case and with every slides poll: another pathologist's annotation appears without a
    // reload (the list and the drawing change only when the set of annotations did).
    async function loadAnnotations() {
        let fresh;
        try {
            fresh = (await api(url("annotations"))).annotations;
        } catch (error) {
            $("annotate-result").textContent = `Could not load the annotations: ${error.message}`;
            return;
        }
        const ids = (list) => list.map(({ id }) => id).join(" ");
        if (ids(fresh) === ids(annotations)) return;
        annotations = fresh;
        showAnnotations();
        drawMarks();
    }

    async function saveAnnotation(annotation) {
        const saved = await api(url("annotations"), {
            method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(annotation),
        });
        annotations = [...annotations, saved];
        return saved;
    }

    async function finishAnnotation({ kind, points }) {
        draft = null;
        const shown = slides[slideIndex];
        const annotation = {
            slide: shown.slide,
            version: shown.version,
            kind,
            points: points.map(({ x, y }) => [Math.round(x * 10) / 10, Math.round(y * 10) / 10]),
            text: $("note").value.trim(),
        };
        drawMarks();
        try {
            await saveAnnotation(annotation);
            $("annotate-result").textContent = `${kind} saved${annotation.text ? `: “${annotation.text}”` : ""}`;
        } catch (error) {
            $("annotate-result").textContent = `Not saved: ${error.message}`;
        }
        showAnnotations();
        drawMarks();
    }

    function showAnnotations() {
        const items = shownAnnotations().map(({ kind, points, text, author }) => {
            const item = document.createElement("li");
            const size = annotationSize({ kind, points });
            const details = kind === "polygon" ? `${points.length} points, ${size}` : size;
            item.textContent = `${kind}${details ? ` (${details})` : ""}${text ? `: ${text}` : ""} · ${author.name}`;
            return item;
        });
        $("annotations").replaceChildren(...items);
    }

    // Only a signed-in pathologist annotates (the server says so too); others see the annotations, not the tools.
    function allowAnnotating(me) {
        const pathologist = Boolean(me && me.user && me.user.role === "pathologist");
        for (const kind of ["point", "line", "polygon"]) $(`tool-${kind}`).disabled = !pathologist;
        $("note").disabled = !pathologist;
        $("annotate-note").textContent = pathologist ? "Saved with the case, under your name." : "View only: a pathologist signed in draws annotations.";
    }

    function closePolygon() {
        if (!draft || draft.kind !== "polygon" || draft.points.length < 3) return false;
        finishAnnotation(draft);
        return true;
    }

    function startMarks() {
        marks = document.createElementNS(SVG, "svg");
        marks.id = "marks";
        marks.setAttribute("aria-hidden", "true"); // what it shows is also in #measure-result and #annotations
        viewer.element.append(marks);
        const follow = (event, done) => {
            if (!dragging) return;
            dragging = !done;
            const point = eventToImage(event);
            if (draft) {
                draft.points[1] = point;
                if (done && (point.x !== draft.points[0].x || point.y !== draft.points[0].y)) finishAnnotation(draft);
            } else {
                shape.b = point;
                $("measure-result").textContent = measurement(shape);
            }
            drawMarks();
        };
        marks.addEventListener("pointerdown", (event) => {
            if (!tool || !slideLayer || !slideLayer.item) return;
            const point = eventToImage(event);
            if (tool === "point") {
                finishAnnotation({ kind: "point", points: [point] });
            } else if (tool === "polygon") {
                const first = draft && imageToElement(draft.points[0]);
                const box = viewer.element.getBoundingClientRect();
                const closes = first && Math.hypot(first.x - (event.clientX - box.left), first.y - (event.clientY - box.top)) < 10;
                if (!(closes && closePolygon())) {
                    if (draft) draft.points.push(point);
                    else draft = { kind: "polygon", points: [point], hover: point };
                }
            } else {
                marks.setPointerCapture(event.pointerId);
                dragging = true;
                if (tool === "line") draft = { kind: "line", points: [point, point] };
                else shape = { kind: tool, a: point, b: point };
            }
            drawMarks();
        });
        marks.addEventListener("pointermove", (event) => {
            if (draft && draft.kind === "polygon") {
                draft.hover = eventToImage(event);
                drawMarks();
            } else {
                follow(event, false);
            }
        });
        marks.addEventListener("pointerup", (event) => follow(event, true));
        viewer.addHandler("update-viewport", drawMarks);
        for (const kind of TOOLS) $(`tool-${kind}`).addEventListener("click", () => setTool(tool === kind ? null : kind));
        $("tool-clear").addEventListener("click", () => {
            shape = null;
            $("measure-result").textContent = "";
            drawMarks();
        });
    }

    // -- keyboard: arrows pan, +/- zoom, n/p top regions, ]/[ slides, m/a tools, Enter closes a polygon, Esc ends a tool
    function pan(dx, dy) {
        const bounds = viewer.viewport.getBounds();
        viewer.viewport.panBy(new OpenSeadragon.Point(dx * bounds.width * PAN_STEP, dy * bounds.height * PAN_STEP));
        viewer.viewport.applyConstraints();
    }

    function zoom(factor) {
        viewer.viewport.zoomBy(factor);
        viewer.viewport.applyConstraints();
    }

    function home() {
        viewer.viewport.goHome();
        leaveRegion();
    }

    function fullPage() {
        viewer.setFullPage(!viewer.isFullPage());
    }

    // the view's buttons, as the keys do; full page keeps them over the slide
    function startViewControls() {
        const controls = $("view-controls");
        $("view-in").addEventListener("click", () => zoom(ZOOM_STEP));
        $("view-out").addEventListener("click", () => zoom(1 / ZOOM_STEP));
        $("view-home").addEventListener("click", home);
        $("view-full").addEventListener("click", fullPage);
        viewer.addHandler("full-page", (event) => {
            $("view-full").setAttribute("aria-pressed", String(event.fullPage));
            (event.fullPage ? viewer.element : document.querySelector("main")).append(controls);
        });
        controls.hidden = false;
    }

    // the slide shown goes into the address (?slide=), so a reload or a shared link opens the same one
    function rememberSlide() {
        const address = new URLSearchParams(location.search);
        address.set("slide", slides[slideIndex].slide);
        history.replaceState(null, "", `?${address}${location.hash}`);
    }

    function stepSlide(delta) {
        if (slides.length > 1) switchSlide((slideIndex + delta + slides.length) % slides.length);
    }

    // -- the case's slides: a thumbnail each (its coarsest level), a click or ] / [ switches ----------------------
    const thumbnails = new Map(); // "s1/v1" -> object URL of its picture ("" while asked)
    let caseInfo = null;

    function showSlides() {
        const items = slides.map((entry, index) => {
            const key = `${entry.slide}/${entry.version}`;
            const picture = document.createElement("img");
            picture.alt = "";
            picture.dataset.key = key;
            if (thumbnails.get(key)) picture.src = thumbnails.get(key);
            else if (!thumbnails.has(key) && !unviewable(entry)) loadThumbnail(entry, key);
            const caption = document.createElement("span");
            caption.textContent = `${entry.slide} (${entry.version}) ${slideState(entry)}`;
            const button = document.createElement("button");
            button.type = "button";
            button.append(picture, caption);
            if (index === slideIndex) button.setAttribute("aria-current", "true");
            button.addEventListener("click", () => switchSlide(index));
            const item = document.createElement("li");
            item.dataset.slide = entry.slide;
            item.classList.toggle("failed", unviewable(entry));
            item.append(button);
            return item;
        });
        $("slides").replaceChildren(...items);
    }

    // a slide whose send failed, or whose manifest the store holds malformed: its reason, never a blank image
    function unviewable(entry) {
        return entry.state === "failed" || entry.state === "unreadable";
    }

    function slideState(entry) {
        if (entry.state === "failed") return `failed: ${entry.failed}`;
        return entry.state === "unreadable" ? entry.unreadable : entry.state;
    }

    // fetched with a case link's token in a header (an <img src> cannot carry it), shown from a blob: URL
    async function loadThumbnail(entry, key) {
        thumbnails.set(key, "");
        try {
            const response = await fetch(url("thumbnail", { of: entry }), { headers: authorization() });
            if (!response.ok) throw new Error(response.statusText);
            thumbnails.set(key, URL.createObjectURL(await response.blob()));
            for (const picture of $("slides").querySelectorAll("img")) if (picture.dataset.key === key) picture.src = thumbnails.get(key);
        } catch (error) {
            thumbnails.delete(key); // not arrived yet: asked again when the strip is next drawn
        }
    }

    // Where the view is, as fractions of the slide: another slide of the case opens at the same place when the two
    // have about the same shape (serial sections, levels of one block); otherwise it opens whole.
    function relativeView() {
        const item = slideLayer && slideLayer.item;
        if (!item) return null;
        const { x, y, width, height } = item.viewportToImageRectangle(viewer.viewport.getBounds(true));
        return { x: x / info.width, y: y / info.height, width: width / info.width, height: height / info.height, shape: info.width / info.height };
    }

    // -- side by side: another slide of the case beside the one shown, panned and zoomed with it ----------------
    // Both views show the same part of their slides, as fractions of each slide's size (serial sections, a
    // stain beside the H&E); either one leads.
    let compare = null; // { viewer, entry, image }
    // the view the pathologist moves (pointer or wheel on it; our keys move the first): only its changes are
    // followed, so the other's own animation never echoes back and stops the one being made
    let leader = null;

    function leads(which) {
        for (const name of ["canvas-press", "canvas-scroll", "canvas-drag"]) which.addHandler(name, () => { leader = which; });
    }

    function compareChoices() {
        const select = $("compare-with");
        const chosen = compare ? `${compare.entry.slide}/${compare.entry.version}` : "";
        const options = [new Option("none", "")];
        for (const entry of slides) {
            if (unviewable(entry) || entry === slides[slideIndex]) continue;
            options.push(new Option(`${entry.slide} (${entry.version})`, `${entry.slide}/${entry.version}`));
        }
        select.replaceChildren(...options);
        select.value = chosen;
        $("compare-box").hidden = options.length < 2;
    }

    function closeCompare() {
        if (compare) compare.viewer.destroy();
        compare = null;
        $("compare").hidden = true;
        $("compare").replaceChildren();
    }

    async function openCompare(key) {
        closeCompare();
        const entry = slides.find((candidate) => `${candidate.slide}/${candidate.version}` === key);
        if (!entry) return;
        const [image, status] = await Promise.all([api(url("image", { of: entry })), api(url("status", { of: entry }))]);
        $("compare").hidden = false;
        const other = OpenSeadragon(viewerOptions($("compare")));
        const caption = document.createElement("div");
        caption.className = "compare-caption";
        caption.textContent = `${entry.slide} (${entry.version})`;
        $("compare").append(caption);
        compare = { viewer: other, entry, image };
        leader = viewer;
        leads(other);
        other.addTiledImage({
            tileSource: tileSource("slide", status.manifest ? status.levels : null, status.started_at, image, entry),
            success: () => follow(viewer, other),
        });
        other.addHandler("viewport-change", () => leader === other && follow(other, viewer));
    }

    // `target` shows what `source` shows, in fractions of each slide
    function follow(source, target) {
        if (!compare || !slideLayer || !slideLayer.item) return;
        const ours = { item: slideLayer.item, image: info };
        const theirs = { item: compare.viewer.world.getItemAt(0), image: compare.image };
        if (!theirs.item) return;
        const [from, to] = source === viewer ? [ours, theirs] : [theirs, ours];
        const { x, y, width, height } = from.item.viewportToImageRectangle(source.viewport.getBounds(true));
        const [sx, sy] = [to.image.width / from.image.width, to.image.height / from.image.height];
        target.viewport.fitBounds(to.item.imageToViewportRectangle(x * sx, y * sy, width * sx, height * sy), true);
    }

    // A slide sent later joins the strip, and one that failed since says so, without a reload. The slide on screen
    // keeps the version it shows (its status poll follows it); a rescan of it is listed when the page is reopened.
    let watchingSlides = false;

    async function pollSlides() {
        try {
            const shown = slides[slideIndex];
            const answer = await api(url("slides"));
            const fresh = answer.slides.map((entry) => (entry.slide === shown.slide ? shown : entry));
            // the other slides' results as the server has them; the one shown as its own status poll has it
            triages = { ...(answer.triages || {}), ...(shown.slide in triages ? { [shown.slide]: triages[shown.slide] } : {}) };
            showScore();
            const summary = (list) => JSON.stringify(list.map(({ slide, version, state, failed }) => [slide, version, state, failed]));
            if (fresh.includes(shown) && summary(fresh) !== summary(slides)) {
                slides = fresh;
                slideIndex = slides.indexOf(shown);
                caseInfo = { ...caseInfo, slides };
                showSlides();
                compareChoices();
                caseView.show(url("case"), caseInfo, shown.slide);
            }
        } catch (error) {
            if (error instanceof ApiError && error.refused) return;
        }
        await loadAnnotations();
        setTimeout(pollSlides, SLIDES_POLL_MS);
    }

    function switchSlide(index) {
        if (index === slideIndex || !slides[index]) return;
        const view = relativeView();
        slideIndex = index;
        rememberSlide();
        showSlides();
        showScore();
        if (compare && compare.entry === slides[slideIndex]) closeCompare();
        compareChoices();
        caseView.show(url("case"), caseInfo, slides[slideIndex].slide);
        openSlide(view);
    }

    const SLIDE_KEYS = ["[", "]"]; // the only keys that work while no slide is on screen (one failed, say)
    const KEYS = {
        ArrowLeft: () => pan(-1, 0),
        ArrowRight: () => pan(1, 0),
        ArrowUp: () => pan(0, -1),
        ArrowDown: () => pan(0, 1),
        "+": () => zoom(ZOOM_STEP),
        "=": () => zoom(ZOOM_STEP),
        "-": () => zoom(1 / ZOOM_STEP),
        _: () => zoom(1 / ZOOM_STEP),
        0: home,
        f: fullPage,
        n: () => goToRegion(regionIndex + 1),
        p: () => goToRegion(regionIndex - 1),
        "]": () => stepSlide(1),
        "[": () => stepSlide(-1),
        m: () => setTool(tool === "ruler" ? null : "ruler"),
        a: () => setTool(tool === "area" ? null : "area"),
        Enter: closePolygon,
        Escape: () => setTool(null),
    };

    // Keys a focused control needs for itself: text entry takes every key, a slider its arrows; a ticked checkbox
    // or a clicked button takes none of ours, so the keys keep working after using the side panel.
    function ownsKey(target, key) {
        if (!(target instanceof Element)) return false;
        if (target.closest("textarea, select, [contenteditable]")) return true;
        if (!(target instanceof HTMLInputElement)) return false;
        return target.type === "range" ? key.startsWith("Arrow") : !["checkbox", "radio", "button"].includes(target.type);
    }

    // in the capture phase: before OpenSeadragon's own keys on its canvas, which would pan a second time
    function onKey(event) {
        if (event.ctrlKey || event.metaKey || event.altKey || ownsKey(event.target, event.key)) return;
        if (!SLIDE_KEYS.includes(event.key) && !(slideLayer && slideLayer.item)) return;
        const action = KEYS[event.key];
        if (!action) return;
        leader = viewer;
        if (action() === false) return; // false: not for us (Enter on a button stays the button's)
        event.preventDefault();
        event.stopPropagation();
    }

    // -- opening the case and a slide ------------------------------------------------------------------------
    let opening = 0; // the latest openSlide(): an earlier one still waiting for the store gives way

    function cannotOpen(error, retry) {
        if (error instanceof ApiError && error.refused) {
            showMessage(`${refusedText} (${error.message})`);
            return;
        }
        const failed = error.status === 404 && error.message.includes(": send failed: ");
        showMessage(failed ? error.message : error.status === 404 ? "Waiting for the slide to arrive…" : `Cannot open the case: ${error.message}`);
        if (!failed) setTimeout(retry, POLL_MS);
    }

    // The case as /api/cases/CASE describes it: its clock, its panel (case.js) and its slides; the slide shown is
    // the one named in ?slide= (else the first), at its newest version.
    async function openCase() {
        let found;
        try {
            found = await api(url("case"));
        } catch (error) {
            cannotOpen(error, openCase);
            return;
        }
        const wanted = slides[slideIndex] ? slides[slideIndex].slide : new URLSearchParams(location.search).get("slide");
        caseInfo = found;
        slides = found.slides;
        triages = { ...(found.triages || {}) };
        const title = core.caseTitle(found, caseId);
        $("case-title").textContent = title;
        $("case-title").title = title; // whole, where the header cuts it short
        document.title = `${title} · slidestream`;
        slideIndex = Math.max(0, slides.findIndex((entry) => entry.slide === wanted));
        showSlides();
        compareChoices();
        times.registered = found.registered_at;
        times.started = found.registered_at || times.started;
        times.reported = found.signed_at;
        tick();
        // the panel (who is signed in, requests, reports) loads beside the slide, not before it: over a 20 ms link
        // its three requests in a row would hold the first tile back
        const panel = caseView.show(url("case"), found, slides.length ? slides[slideIndex].slide : null).then(() => allowAnnotating(caseView.me()));
        loadAnnotations();
        if (!slides.length) {
            showMessage("Waiting for the slide to arrive…");
            setTimeout(openCase, POLL_MS);
            return;
        }
        if (!watchingSlides) {
            watchingSlides = true;
            setTimeout(pollSlides, SLIDES_POLL_MS);
        }
        openSlide();
        await panel;
    }

    async function openSlide(view = null) {
        const ours = ++opening;
        const shown = slides[slideIndex];
        showAnnotations();
        if (unviewable(shown)) {
            if (viewer) viewer.world.removeAll();
            slideLayer = heatLayer = null;
            showMessage(shown.state === "failed" ? `case ${caseId}: send failed: ${shown.failed}` : `${shown.slide} (${shown.version}): ${shown.unreadable}`);
            return;
        }
        let image;
        try {
            image = await api(url("image"));
        } catch (error) {
            if (ours === opening) cannotOpen(error, () => openSlide(view));
            return;
        }
        if (ours !== opening) return;
        info = image;
        // background chunks are not fetched: the page shows the image's fill value (white glass, dark fluorescence)
        $("slide").style.background = `rgb(${info.fill_value}, ${info.fill_value}, ${info.fill_value})`;
        showMessage("");
        if (viewer) viewer.world.removeAll();
        else startViewer();
        slideLayer = new Layer(true, 1);
        heatLayer = new Layer(false, heatOpacity());
        [shownStates, heatVersion, regionsKey, shape] = [null, null, "", null];
        keptView = view && Math.abs(Math.log(view.shape / (info.width / info.height))) < SAME_SHAPE ? view : null;
        $("measure-result").textContent = info.mpp ? "" : "This slide records no resolution: lengths in pixels only.";
        if (!polling) {
            polling = true;
            poll();
        }
    }

    // what the slide's viewer and the one side by side share
    function viewerOptions(element) {
        return {
            element,
            showNavigationControl: false, // the page's own buttons (#view-controls): no button images to fetch
            loadTilesWithAjax: true,
            ajaxHeaders: authorization(),
            maxZoomPixelRatio: 2,
            visibilityRatio: 0.5,
            // OpenSeadragon asks for one tile per frame by default: a jump to a new field needs ~20, which at one a
            // frame is a third of a second of asking before the last request leaves (bench/bench_browser.py)
            maxTilesPerFrame: 16,
        };
    }

    function startViewer() {
        viewer = OpenSeadragon({
            ...viewerOptions($("slide")),
            showNavigator: true,
            navigatorPosition: "TOP_RIGHT",
            // PNG overlay tiles carry straight (not premultiplied) alpha: without this WebGL adds their colour
            drawerOptions: { webgl: { unpackWithPremultipliedAlpha: true } },
        });
        viewer.addHandler("animation", updateScaleBar);
        viewer.addHandler("resize", updateScaleBar);
        viewer.addHandler("viewport-change", () => compare && leader === viewer && follow(viewer, compare.viewer));
        leads(viewer);
        startMarks();
        startViewControls();
        // for tests and automation: the viewer's own conversion between slide pixels and the page
        window.slideView = {
            imageToPage(x, y) {
                const point = imageToElement({ x, y });
                const box = viewer.element.getBoundingClientRect();
                return { x: point.x + box.left, y: point.y + box.top };
            },
            imageBounds() {
                const { x, y, width, height } = slideLayer.item.viewportToImageRectangle(viewer.viewport.getBounds(true));
                return { x, y, width, height };
            },
            annotations: () => annotations,
            shown: () => slides[slideIndex].slide,
            overlayOpacity: () => (heatLayer && heatLayer.item ? heatLayer.item.getOpacity() : null),
            compareBounds() {
                const item = compare && compare.viewer.world.getItemAt(0);
                if (!item) return null;
                const { x, y, width, height } = item.viewportToImageRectangle(compare.viewer.viewport.getBounds(true));
                return { x, y, width, height };
            },
            settled() {
                const still = ({ viewport }) => viewport.getZoom(true) === viewport.getZoom(false) && viewport.getCenter(true).equals(viewport.getCenter(false));
                return Boolean(slideLayer.item) && still(viewer) && (!compare || still(compare.viewer));
            },
        };
    }

    function start() {
        $("case").textContent = caseId;
        // ticking the overlay or moving its slider asks for the map, at a region too
        const askForMap = () => {
            mapAtRegion = true;
            showHeat();
        };
        $("heat-on").addEventListener("change", askForMap);
        $("heat-opacity").addEventListener("input", askForMap);
        $("region-map").addEventListener("click", askForMap);
        document.addEventListener("report-signed", (event) => {
            times.reported = event.detail.signed_at;
            tick();
        });
        document.addEventListener("keydown", onKey, true);
        $("compare-with").addEventListener("change", (event) => openCompare(event.target.value));
        setInterval(tick, 1000);
        openCase();
    }

    start();
})();
