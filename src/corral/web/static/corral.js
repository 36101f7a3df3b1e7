// corral dashboard core: sign-in with a token, the API helper, the live event stream, and
// the page router. Pages (pages/*.js) register with corral.page(...). No external assets.
"use strict";
const corral = (() => {
  const api = new URL("..", document.baseURI).pathname.replace(/\/$/, "");
  const $ = (id) => document.getElementById(id);
  const pages = {};
  const listeners = [];
  let token = sessionStorage.getItem("corral-token") || "";
  let who = null;
  let current = null;
  let turns = 0; // show() calls so far: a slow one gives way to a later one
  let stream = null;
  let timer = null;
  let pending = null;
  let retry = null;
  let renderFailed = false; // the last render failed: the next good one clears its banner
  const READ_SECONDS = 15;
  const RETRY_MS = 2000;

  async function call(path, options = {}) {
    const headers = Object.assign({ Authorization: "Bearer " + token }, options.headers || {});
    let body = options.body;
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.json);
    }
    const method = options.method || "GET";
    // A read that gets no answer fails (and its page tries again) instead of hanging.
    const signal = method === "GET" ? AbortSignal.timeout(READ_SECONDS * 1000) : undefined;
    let res;
    try {
      res = await fetch(api + path, { method, headers, body, signal });
    } catch (err) {
      if (err.name !== "TimeoutError") throw err;
      throw new Error(path + ": no answer in " + READ_SECONDS + " s");
    }
    const text = await res.text();
    let data = text;
    try { data = text ? JSON.parse(text) : null; } catch (_) { /* plain text */ }
    if (!res.ok) {
      const message = (data && data.error && data.error.message) || (data && data.err) || res.statusText;
      throw Object.assign(new Error(message + " (HTTP " + res.status + ")"), { status: res.status });
    }
    return data;
  }

  // el("tr", {class: "x", onclick: f}, "text", child, ...)
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  // svg("circle", {cx: 1}, child, ...): the same for SVG elements (maps and charts), in the
  // namespace the browser's own parser gives an <svg> (no URL written in this file).
  const SVG_NS = (() => { const box = document.createElement("div"); box.innerHTML = "<svg></svg>"; return box.firstChild.namespaceURI; })();
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null) node.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child !== undefined && child !== null) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  // A table, or the empty text when there are no rows. rows: arrays of cells (text or nodes).
  function table(headers, rows, empty, attrs) {
    if (!rows.length) return el("p", { class: "empty" }, empty);
    return el("div", { class: "scroll" },
      el("table", attrs || {},
        el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, rows.map((r) => el("tr", r.attrs || {}, (r.cells || r).map((c) => el("td", {}, c)))))));
  }

  function badge(state) {
    const good = ["running", "active", "online", "done", "deployed", "completed", "reachable", "up", "idle", "available"];
    const bad = ["failed", "exited", "dead", "inactive", "offline", "unreachable", "down", "error", "gone", "expired"];
    const cls = good.includes(state) ? "up" : bad.includes(state) ? "down" : "mid";
    return el("span", { class: "badge " + cls }, state);
  }

  function ago(iso) {
    if (!iso) return "-";
    const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
    if (s < 60) return s + "s ago";
    if (s < 3600) return Math.round(s / 60) + "m ago";
    if (s < 86400) return Math.round(s / 3600) + "h ago";
    return Math.round(s / 86400) + "d ago";
  }

  function can(action) {
    if (!who) return false;
    const grants = { admin: ["read", "write", "admin"], operator: ["read", "write"], viewer: ["read"] };
    return (grants[who.role] || []).includes(action);
  }

  // A button that runs `work` and shows its error in the page's banner.
  function action(label, work, attrs) {
    if (!can("write")) return null;
    const button = el("button", Object.assign({ type: "button" }, attrs || {}), label);
    button.addEventListener("click", async () => {
      button.disabled = true;
      try { await work(); fail(null); } catch (err) { fail(err); } finally { button.disabled = false; }
    });
    return button;
  }

  function fail(err) {
    $("failure").hidden = !err;
    $("failure").textContent = err ? String(err.message || err) : "";
  }

  // page(name, {title, render(section) -> Promise, kinds: ["stack."], poll: ms})
  function page(name, spec) { pages[name] = spec; }

  // A page whose script did not load (a flaky link as the dashboard loaded) is fetched
  // again when it is asked for, instead of staying missing until a reload.
  function load(name) {
    return new Promise((resolve) => {
      const script = el("script", { src: "pages/" + name + ".js?again=" + Date.now() });
      script.onload = script.onerror = resolve;
      document.body.append(script);
    });
  }

  async function show(name) {
    const turn = ++turns;
    if (name && !pages[name] && document.querySelector('#nav a[href="#' + CSS.escape(name) + '"]')) {
      await load(name);
      if (turn !== turns) return; // asked for another page meanwhile
    }
    const spec = pages[name] || pages.hosts;
    current = spec;
    if (name && !pages[name]) fail(new Error("no page " + JSON.stringify(name) + " here (reload if it should be)"));
    clearInterval(timer);
    clearTimeout(retry);
    for (const a of document.querySelectorAll("#nav a")) {
      if (a.getAttribute("href") === "#" + name) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    document.title = "corral: " + spec.title;
    $("page").dataset.ready = "false"; // until this page has rendered
    await refresh(!name || Boolean(pages[name]));
    if (spec.poll) timer = setInterval(() => refresh(false), spec.poll);
  }

  async function refresh(first) {
    const spec = current;
    if (!spec) return;
    const section = $("page");
    try {
      const body = el("div", { class: "page" });
      await spec.render(body);
      if (spec !== current) return;
      const focused = document.activeElement && document.activeElement.id;
      section.replaceChildren(el("h2", {}, spec.title), body);
      if (focused && $(focused)) $(focused).focus();
      section.dataset.ready = "true";
      if (first || renderFailed) fail(null);
      renderFailed = false;
    } catch (err) {
      if (spec !== current) return;
      renderFailed = true;
      if (first) {
        section.replaceChildren(el("h2", {}, spec.title));
        // Nothing shown yet: try again soon rather than wait for an event or a poll.
        clearTimeout(retry);
        retry = setTimeout(() => { if (spec === current) refresh(true); }, RETRY_MS);
      }
      fail(err);
    }
  }

  // The last lines of a container's output, fetched into `kept` (a Map: key -> {loading} or
  // {text} or {error}) for the page to show; the page re-renders as it goes.
  async function tail(kept, key, path) {
    kept.set(key, { loading: true });
    refresh(false);
    try {
      const text = await call(path);
      kept.set(key, { text: typeof text === "string" ? text : JSON.stringify(text, null, 2) });
    } catch (err) {
      kept.set(key, { error: err.message });
      fail(err);
    }
    refresh(false);
  }

  // Re-render the page soon when an event it cares about arrives (many events: one render).
  function touched(event) {
    for (const fn of listeners) fn(event);
    const spec = current;
    if (!spec || !spec.kinds || !spec.kinds.some((k) => event.kind.startsWith(k))) return;
    if (spec.live) { spec.live(event); return; }
    if (pending) return;
    pending = setTimeout(() => { pending = null; refresh(false); }, 150);
  }

  function onEvent(fn) { listeners.push(fn); }

  async function follow(lastId) {
    stream = new AbortController();
    const headers = { Authorization: "Bearer " + token };
    if (lastId) headers["Last-Event-ID"] = String(lastId);
    try {
      const res = await fetch(api + "/events/stream", { headers, signal: stream.signal });
      if (!res.ok) throw new Error("stream: HTTP " + res.status);
      $("live").textContent = "live";
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const frame = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const data = frame.split("\n").find((l) => l.startsWith("data: "));
          if (!data) continue;
          const event = JSON.parse(data.slice(6));
          lastId = event.id;
          touched(event);
        }
      }
    } catch (err) {
      if (stream.signal.aborted) return;
    }
    $("live").textContent = "reconnecting";
    setTimeout(() => follow(lastId), 1000);
  }

  async function start() {
    try {
      who = await call("/whoami");
    } catch (err) {
      if (token && err.status !== 401 && err.status !== 403) {
        fail(err); // corral itself did not answer: not a sign-in matter, so try again
        setTimeout(start, RETRY_MS);
        return;
      }
      $("signin").hidden = false;
      $("nav").hidden = true;
      $("signin-error").textContent = token ? err.message : "";
      if (!token) $("token").focus();
      return;
    }
    $("who").textContent = who.name + " (" + who.role + ")";
    $("signin").hidden = true;
    $("signout").hidden = false;
    $("nav").hidden = false;
    document.body.dataset.role = who.role;
    const last = await call("/events?limit=1&newest_first=true").catch(() => []);
    follow(last.length ? last[0].id : 0);
    window.addEventListener("hashchange", () => show(location.hash.slice(1)));
    await show(location.hash.slice(1) || "hosts");
  }

  $("signin").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem("corral-token", token);
    start();
  });
  $("signout").addEventListener("click", () => {
    sessionStorage.removeItem("corral-token");
    if (stream) stream.abort();
    location.hash = "";
    location.reload();
  });

  return { api, call, el, svg, tail, table, badge, ago, can, action, fail, page, refresh, onEvent, start, $ };
})();
