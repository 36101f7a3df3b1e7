// corral dashboard: sign in with a token, list hosts, follow the event stream live.
// Talks only to the corral API it is served from; no external assets.
"use strict";
const api = new URL("..", document.baseURI).pathname.replace(/\/$/, "");
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem("corral-token") || "";
let stream = null;

async function call(path) {
  const res = await fetch(api + path, { headers: { Authorization: "Bearer " + token } });
  const body = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error((body.error && body.error.message) || res.statusText);
  return body;
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function gib(bytes) { return bytes ? (bytes / 2 ** 30).toFixed(1) + " GiB" : "-"; }

async function loadHosts() {
  const hosts = await call("/hosts");
  const body = $("hosts-body");
  body.replaceChildren();
  $("hosts-empty").hidden = hosts.length > 0;
  for (const h of hosts) {
    const f = h.facts || {};
    const state = h.reachable === null ? "unknown" : h.reachable ? "reachable" : "unreachable";
    const tr = document.createElement("tr");
    tr.dataset.host = h.name;
    tr.append(
      cell(h.name), cell(h.url),
      cell(state + (h.last_error && !h.reachable ? " (" + h.last_error + ")" : ""), h.reachable ? "up" : "down"),
      cell(f.engine_version || "-"), cell(f.cpus ?? "-"), cell(gib(f.memory_bytes)),
      cell(f.containers_total === undefined ? "-" : f.containers_running + "/" + f.containers_total),
      cell(f.swarm_role || "-"),
      cell(Object.entries(h.labels).map(([k, v]) => k + "=" + v).join(", ") || "-"),
    );
    body.append(tr);
  }
}

function showEvent(e) {
  const li = document.createElement("li");
  li.textContent = new Date(e.time).toLocaleTimeString() + "  " + e.kind + "  " + e.resource + "  " + e.message;
  $("events-list").prepend(li);
  while ($("events-list").children.length > 200) $("events-list").lastChild.remove();
}

async function follow(lastId) {
  stream = new AbortController();
  const headers = { Authorization: "Bearer " + token };
  if (lastId) headers["Last-Event-ID"] = String(lastId);
  try {
    const res = await fetch(api + "/events/stream", { headers, signal: stream.signal });
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
        showEvent(event);
        if (event.kind.startsWith("host.")) loadHosts().catch(() => {});
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
    const who = await call("/whoami");
    $("who").textContent = who.name + " (" + who.role + ")";
    $("signin").hidden = true;
    $("signout").hidden = false;
    $("hosts").hidden = $("events").hidden = false;
    await loadHosts();
    const past = await call("/events?limit=50&newest_first=true");
    past.reverse().forEach(showEvent);
    follow(past.length ? past[past.length - 1].id : 0);
  } catch (err) {
    $("signin").hidden = false;
    $("signin-error").textContent = token ? err.message : "";
  }
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
  location.reload();
});
start();
