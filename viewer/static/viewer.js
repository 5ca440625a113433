"use strict";
// The case viewer: OpenSeadragon over the slide's chunks, sharpening as shards arrive, with the AI overlay,
// a scale bar and the case panel (case.js: context, slides, report). State lives in the store; this page only
// polls and draws.
(() => {
    const { api, ApiError, clock, refusedText, token } = slidestream;
    const caseId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
    const base = `/api/cases/${encodeURIComponent(caseId)}`;
    // the slide version shown: the one named in ?slide=, else the case's first slide, at its newest version
    let slideBase = null;
    const $ = (id) => document.getElementById(id);
    const POLL_MS = 2000;
    const ARRIVED = "2";

    let info = null;
    let viewer = null;
    let slideLayer = null;
    let heatLayer = null;
    let shownStates = null;
    let heatVersion = null;
    // the clock: from the specimen's registration (else the send's start) to the first signed report
    const times = { registered: null, started: null, reported: null };

    function showMessage(text) {
        $("message").textContent = text;
        $("message").hidden = !text;
    }

    // OpenSeadragon levels go up in resolution; ours go down (level 0 = full resolution).
    // `tag` goes into tile URLs: the heatmap's version, or the send's start (a rescan must not hit cached tiles)
    function tileSource(kind, states, tag) {
        const maxLevel = info.levels.length - 1;
        const size = info.tile_size;
        const n = info.shard_chunks;
        return {
            width: info.width,
            height: info.height,
            tileSize: size,
            tileOverlap: 0,
            minLevel: 0,
            maxLevel,
            // only tiles that exist and have arrived are requested: the coarser level shows meanwhile
            tileExists(level, x, y) {
                const ours = info.levels[maxLevel - level];
                if (!ours || x < 0 || y < 0 || x * size >= ours.width || y * size >= ours.height) return false;
                if (!states) return true;
                const shard = Math.floor(y / n) * ours.shards_x + Math.floor(x / n);
                return states[maxLevel - level].state[shard] === ARRIVED;
            },
            getTileUrl(level, x, y) {
                const ours = maxLevel - level;
                return kind === "heatmap"
                    ? `${slideBase}/heatmap/${ours}/${y}/${x}.png?v=${encodeURIComponent(tag)}`
                    : `${slideBase}/tiles/${ours}/${y}/${x}${tag ? `?send=${encodeURIComponent(tag)}` : ""}`;
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
                    updateScaleBar();
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
        const micronsPerScreenPixel = info.mpp / item.viewportToImageZoom(viewer.viewport.getZoom(true));
        const wanted = 120 * micronsPerScreenPixel;
        const power = 10 ** Math.floor(Math.log10(wanted));
        const length = [5, 2, 1].map((m) => m * power).find((v) => v <= wanted);
        bar.querySelector(".bar").style.width = `${Math.round(length / micronsPerScreenPixel)}px`;
        bar.querySelector(".label").textContent = length >= 1000 ? `${length / 1000} mm` : `${length} µm`;
        bar.hidden = false;
    }

    function heatOpacity() {
        return $("heat-on").checked ? Number($("heat-opacity").value) / 100 : 0;
    }

    function applyStatus(status) {
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
        if (status.heatmap && status.heatmap.version !== heatVersion) {
            heatVersion = status.heatmap.version;
            const stops = status.heatmap.legend.map(({ at, rgba }) => `rgba(${rgba.join(",")}) ${at * 100}%`);
            $("legend-ramp").style.background = `linear-gradient(to right, ${stops.join(", ")})`;
            $("overlay").hidden = false;
            heatLayer.show(tileSource("heatmap", null, heatVersion));
        }
        const score = $("score");
        score.hidden = !status.triage;
        if (status.triage) score.textContent = `AI triage ${status.triage.score.toFixed(2)}${status.triage.final || !status.triage.stage ? "" : status.triage.stage === "edge" ? " edge (coarse)" : " (partial)"}`;
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
            applyStatus(await api(`${slideBase}/status`));
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

    async function start() {
        $("case").textContent = caseId;
        if (!token) {
            showMessage(refusedText);
            return;
        }
        try {
            const found = await api(base);
            const wanted = new URLSearchParams(location.search).get("slide");
            const shown = found.slides.find((entry) => entry.slide === wanted) || found.slides[0];
            times.registered = found.registered_at;
            times.started = found.registered_at || times.started;
            times.reported = found.signed_at;
            tick();
            await caseView.show(base, found, shown ? shown.slide : null);
            if (!shown) throw new ApiError(404, "no slide yet");
            if (shown.state === "failed") throw new ApiError(404, `case ${caseId}: send failed: ${shown.failed}`);
            slideBase = `${base}/slides/${shown.slide}/${shown.version}`;
            info = await api(`${slideBase}/image`);
        } catch (error) {
            if (error instanceof ApiError && error.refused) {
                showMessage(`${refusedText} (${error.message})`);
            } else {
                const failed = error.status === 404 && error.message.includes(": send failed: ");
                showMessage(failed ? error.message : error.status === 404 ? "Waiting for the slide to arrive…" : `Cannot open the case: ${error.message}`);
                if (!failed) setTimeout(start, POLL_MS);
            }
            return;
        }
        // background chunks are not fetched: the page shows the image's fill value (white glass, dark fluorescence)
        $("slide").style.background = `rgb(${info.fill_value}, ${info.fill_value}, ${info.fill_value})`;
        showMessage("");
        viewer = OpenSeadragon({
            element: $("slide"),
            prefixUrl: "/static/openseadragon/images/",
            loadTilesWithAjax: true,
            ajaxHeaders: { Authorization: `Bearer ${token}` },
            showNavigator: true,
            navigatorPosition: "TOP_RIGHT",
            maxZoomPixelRatio: 2,
            visibilityRatio: 0.5,
            // PNG overlay tiles carry straight (not premultiplied) alpha: without this WebGL adds their colour
            drawerOptions: { webgl: { unpackWithPremultipliedAlpha: true } },
        });
        slideLayer = new Layer(true, 1);
        heatLayer = new Layer(false, heatOpacity());
        viewer.addHandler("animation", updateScaleBar);
        viewer.addHandler("resize", updateScaleBar);
        $("heat-on").addEventListener("change", () => heatLayer.setOpacity(heatOpacity()));
        $("heat-opacity").addEventListener("input", () => heatLayer.setOpacity(heatOpacity()));
        document.addEventListener("report-signed", (event) => {
            times.reported = event.detail.signed_at;
            tick();
        });
        setInterval(tick, 1000);
        poll();
    }

    start();
})();
