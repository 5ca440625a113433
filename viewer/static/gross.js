"use strict";
// The case's gross photographs (issue #30): each photo the station sent, with the pathologist's marks drawn over it
// (SVG, in the photo's pixels); a pathologist marks a photo with a point ("sample here") or a two-click line (a
// margin) and a short text, and the station sees the mark at its next poll. Polled, so a photo sent later shows.
(() => {
    const { api } = slidestream;
    const $ = (id) => document.getElementById(id);
    const SVG = "http://www.w3.org/2000/svg";
    const POLL_MS = 3000;
    const caseId = decodeURIComponent(location.pathname.split("/").pop());
    const base = `/api/cases/${encodeURIComponent(caseId)}/gross`;
    const figures = new Map(); // token -> { figure, image, svg, list }
    let tool = null; // "point" | "line" | null
    let corners = []; // the line's first click, until its second

    function svgElement(name, attributes) {
        const element = document.createElementNS(SVG, name);
        for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
        return element;
    }

    async function addPhoto(token, number) {
        const figure = document.createElement("figure");
        figure.className = "gross-photo";
        figure.dataset.token = token;
        figure.style.margin = "0.3em 0";
        const frame = document.createElement("div");
        frame.style.position = "relative";
        const image = document.createElement("img");
        image.alt = `gross photograph ${number}`;
        image.style.width = "100%";
        image.style.display = "block";
        const svg = svgElement("svg", { "aria-label": `marks on gross photograph ${number}`, role: "img" });
        svg.style.cssText = "position:absolute;inset:0;width:100%;height:100%;cursor:crosshair";
        const caption = document.createElement("figcaption");
        caption.textContent = `Photo ${number}`;
        const list = document.createElement("ol");
        list.className = "gross-marks";
        frame.append(image, svg);
        figure.append(frame, caption, list);
        $("gross-photos").append(figure);
        const entry = { figure, image, svg, list, marks: [] };
        figures.set(token, entry);
        svg.addEventListener("click", (event) => clicked(token, entry, event));
        const response = await fetch(`${base}/${token}.jpg`, { headers: slidestream.authorization() }).catch(() => null);
        if (!response || !response.ok) return;
        image.addEventListener("load", () => draw(entry), { once: true });
        image.src = URL.createObjectURL(await response.blob());
    }

    // the marks of one photo over it, in its pixels, and as a list below it
    function draw(entry) {
        const { image, svg, list, marks } = entry;
        if (!image.naturalWidth) return;
        svg.setAttribute("viewBox", `0 0 ${image.naturalWidth} ${image.naturalHeight}`);
        const stroke = Math.max(2, image.naturalWidth / 150);
        svg.replaceChildren(...marks.flatMap((mark) => {
            const [[x1, y1], [x2, y2] = [x1, y1]] = mark.points;
            const style = { stroke: "#ffd400", "stroke-width": stroke, fill: "none", "data-number": mark.number };
            const shape = mark.kind === "point" ? svgElement("circle", { cx: x1, cy: y1, r: stroke * 4, ...style })
                : svgElement("line", { x1, y1, x2, y2, ...style });
            const label = svgElement("text", { x: x1 + stroke * 5, y: y1, fill: "#ffd400", "font-size": stroke * 8, stroke: "#000", "stroke-width": stroke / 4 });
            label.textContent = `${mark.number}`;
            return [shape, label];
        }));
        list.replaceChildren(...marks.map((mark) => {
            const item = document.createElement("li");
            item.value = mark.number;
            item.textContent = `${mark.text || "(no text)"} (${mark.kind}) · ${mark.author.name}`;
            return item;
        }));
    }

    function choose(kind) {
        tool = tool === kind ? null : kind;
        corners = [];
        $("gross-point").setAttribute("aria-pressed", String(tool === "point"));
        $("gross-line").setAttribute("aria-pressed", String(tool === "line"));
        $("gross-result").textContent = tool === "point" ? "click on a photo where to sample" : tool === "line" ? "click the line's two ends on a photo" : "";
    }

    async function clicked(token, entry, event) {
        if (!tool || !entry.image.naturalWidth) return;
        const box = entry.svg.getBoundingClientRect();
        const scale = entry.image.naturalWidth / box.width;
        const point = [Math.round((event.clientX - box.left) * scale), Math.round((event.clientY - box.top) * scale)];
        corners.push(point);
        if (tool === "line" && corners.length < 2) {
            $("gross-result").textContent = "now the line's other end";
            return;
        }
        const form = { photo: token, kind: tool, points: corners, text: $("gross-note").value.trim() };
        choose(tool); // one mark per choice of the tool
        try {
            const saved = await api(`${base}/marks`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(form) });
            $("gross-result").textContent = `mark ${saved.number} saved; the hospital sees it`;
            $("gross-note").value = "";
            await poll();
        } catch (error) {
            $("gross-result").textContent = `not saved: ${error.message}`;
        }
    }

    async function poll() {
        const { photos, marks } = await api(base);
        $("gross").hidden = !photos.length;
        photos.forEach((token, at) => figures.has(token) || addPhoto(token, at + 1));
        for (const [token, entry] of figures) {
            entry.marks = marks.filter((mark) => mark.photo === token);
            draw(entry);
        }
    }

    async function start() {
        const me = await api("/api/me");
        if (me.user && me.user.role === "pathologist") {
            $("gross-tools").hidden = false;
            $("gross-point").addEventListener("click", () => choose("point"));
            $("gross-line").addEventListener("click", () => choose("line"));
        }
        const again = () => poll().catch(() => {}).finally(() => setTimeout(again, POLL_MS));
        again();
    }

    document.addEventListener("DOMContentLoaded", () => start().catch(() => {}));
})();
