"use strict";
// Shared by the pages: the access token (from the URL fragment, never sent in a URL), API calls, the clock.
const slidestream = (() => {
    const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";

    class ApiError extends Error {
        constructor(status, detail) {
            super(detail);
            this.status = status;
        }
        get refused() {
            return this.status === 401 || this.status === 403;
        }
    }

    async function api(path, options = {}) {
        const headers = { ...(options.headers || {}), Authorization: `Bearer ${token}` };
        // no-cache: revalidate every time (cheap 304s for unchanged status)
        const response = await fetch(path, { cache: "no-cache", ...options, headers });
        if (!response.ok) {
            let detail = response.statusText;
            try {
                detail = (await response.json()).detail || detail;
            } catch (ignored) {
                // not JSON: keep the status text
            }
            throw new ApiError(response.status, detail);
        }
        return response.json();
    }

    // Frozen-section clock: time since the specimen was registered, stopped by the first signed report.
    // Amber from 20 minutes, red from 30 (the intraoperative turnaround rule).
    function clock(startedAt, stoppedAt, now) {
        if (!startedAt) return { text: "–", level: "" };
        const end = stoppedAt ? Date.parse(stoppedAt) : now;
        const seconds = Math.max(0, Math.floor((end - Date.parse(startedAt)) / 1000));
        const minutes = Math.floor(seconds / 60);
        const text = `${minutes}:${String(seconds % 60).padStart(2, "0")}`;
        const level = minutes >= 30 ? "red" : minutes >= 20 ? "amber" : "ok";
        return { text: stoppedAt ? `${text} ✓` : text, level };
    }

    const refusedText = "Access refused: this link is missing its token, has expired, was revoked, or belongs to another case.";

    return { token, api, ApiError, clock, refusedText };
})();
