"use strict";
// Shared by the pages (a classic script, before theirs): access and API calls.
// Access is a session cookie (HttpOnly: this script never sees it) or a case link's token. A sign-in link
// (/worklist#token=...) is spent once: its token leaves the address at once (so it is in no history entry, bookmark
// or copied address) and is handed to the server, which answers with the session cookie. A case link's token stays
// in its page's fragment (never sent in a URL) and goes with each request as a Bearer header.
const slidestream = (() => {
    const fragment = new URLSearchParams(location.hash.slice(1)).get("token") || "";
    const signingIn = location.pathname === "/worklist" && Boolean(fragment);
    const token = signingIn ? "" : fragment; // a case link's
    if (signingIn) history.replaceState(null, "", `${location.pathname}${location.search}`);

    class ApiError extends Error {
        constructor(status, detail) {
            super(detail);
            this.status = status;
        }
        get refused() {
            return this.status === 401 || this.status === 403;
        }
    }

    async function failure(response) {
        let detail = response.statusText;
        try {
            detail = (await response.json()).detail || detail;
        } catch (ignored) {
            // not JSON: keep the status text
        }
        return new ApiError(response.status, detail);
    }

    async function signIn() {
        const response = await fetch("/api/session", { method: "POST", cache: "no-store", headers: { Authorization: `Bearer ${fragment}` } });
        if (!response.ok) throw await failure(response);
    }

    const ready = signingIn ? signIn() : Promise.resolve();
    ready.catch(() => {}); // the refusal is each call's to show

    // what a request needs besides the cookie: a case link's token
    function authorization() {
        return token ? { Authorization: `Bearer ${token}` } : {};
    }

    async function api(path, options = {}) {
        await ready;
        const headers = { ...(options.headers || {}), ...authorization() };
        // no-cache: revalidate every time (cheap 304s for unchanged status)
        const response = await fetch(path, { cache: "no-cache", ...options, headers });
        if (!response.ok) throw await failure(response);
        return response.json();
    }

    // "Sign out" (a page's #sign-out button), shown to whoever is signed in by a session: it ends here and on the server
    function offerSignOut(me) {
        const button = document.getElementById("sign-out");
        if (!button || !me || !me.session) return;
        button.hidden = false;
        button.addEventListener("click", async () => {
            button.disabled = true;
            await fetch("/api/session/end", { method: "POST", cache: "no-store" });
            location.replace(location.pathname);
        });
    }

    const refusedText = "Access refused: not signed in, or this link is missing its token, has expired, was used or revoked, or belongs to another case.";

    return { api, authorization, ApiError, offerSignOut, refusedText };
})();
