// Sessions page: the templates sessions are made from, and every session (newest first)
// with its endpoints; end an active one; details: its containers and their kept history.
"use strict";
(() => {
  const { el, call, table, badge, ago, action } = corral;
  // "unknown": an active session whose host does not answer; it can be ended all the same.
  const ACTIVE = ["pending", "starting", "running", "unknown"];
  const open = new Set(); // session ids whose details are shown
  const logs = new Map(); // "id/service" -> {text | error | loading}

  const enc = encodeURIComponent;
  // "3m ago", or "in 3m" for a time still to come (an expiry).
  function relative(iso) {
    const s = Math.round((new Date(iso).getTime() - Date.now()) / 1000);
    if (s <= 0) return ago(iso);
    if (s < 60) return "in " + s + "s";
    if (s < 3600) return "in " + Math.round(s / 60) + "m";
    if (s < 86400) return "in " + Math.round(s / 3600) + "h";
    return "in " + Math.round(s / 86400) + "d";
  }
  const when = (iso) => (iso ? el("time", { datetime: iso, title: new Date(iso).toLocaleString() }, relative(iso)) : "-");

  function parameter(p) {
    let text = p.name + ": " + p.type;
    if (p.choices && p.choices.length) text += " (" + p.choices.join(" | ") + ")";
    if (p.min !== null && p.min !== undefined) text += " ≥ " + p.min;
    if (p.max !== null && p.max !== undefined) text += " ≤ " + p.max;
    text += p.default === null || p.default === undefined ? ", required" : " = " + JSON.stringify(p.default);
    return el("li", { title: p.description || null }, text, p.description ? " — " + p.description : "");
  }

  function templates(list) {
    return table(
      ["Name", "Description", "Parameters", "Services", "Reserves", "TTL"],
      list.map((t) => ({
        attrs: { dataset: { template: t.name } },
        cells: [
          t.name,
          t.description || "-",
          t.parameters.length ? el("ul", { class: "params", style: "margin: 0; padding-left: 1.1rem" }, t.parameters.map(parameter)) : "none",
          t.services.join(", ") || "-",
          (t.cpus ? t.cpus + " CPU" : "") + (t.cpus && t.memory ? ", " : "") + (t.memory ? Math.round(t.memory / 2 ** 20) + " MiB" : "") || "-",
          duration(t.ttl_s),
        ],
      })),
      "No templates yet: corral template add FILE (or templates_dir in corral.yaml).",
      { id: "templates-table" },
    );
  }

  function duration(s) {
    if (!s && s !== 0) return "-";
    if (s < 120) return Math.round(s) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    if (s < 172800) return Math.round(s / 3600) + " h";
    return Math.round(s / 86400) + " d";
  }

  function endpoints(s) {
    if (!s.endpoints.length) return "-";
    return el("ul", { class: "endpoints", style: "list-style: none; margin: 0; padding: 0" }, s.endpoints.map((e) =>
      el("li", { dataset: { service: e.service } },
        el("code", {}, e.address + ":" + e.host_port), " " + e.service + " " + e.port + "/" + e.protocol)));
  }

  const fetchLogs = (id, service) => corral.tail(logs, id + "/" + service,
    "/sessions/" + enc(id) + "/services/" + enc(service) + "/logs?tail=100&follow=false");

  function details(s) {
    const rows = s.containers.map((c) => {
      const key = s.id + "/" + c.service;
      const b = el("button", { type: "button", id: "session-logs:" + key, dataset: { session: s.id, service: c.service, action: "logs" } },
        logs.has(key) ? "Refresh output" : "Output");
      b.addEventListener("click", () => fetchLogs(s.id, c.service));
      return {
        attrs: { dataset: { container: c.name || c.service, service: c.service, containerState: c.state } },
        cells: [c.service, c.name || "-", badge(c.state), c.exit_code === null || c.exit_code === undefined ? "-" : String(c.exit_code),
          when(c.started_at), when(c.finished_at), b],
      };
    });
    const outputs = s.containers.filter((c) => logs.has(s.id + "/" + c.service)).map((c) => {
      const entry = logs.get(s.id + "/" + c.service);
      const attrs = { id: "session-logs-out:" + s.id + "/" + c.service, dataset: { session: s.id, service: c.service }, "aria-label": "output of " + c.service };
      if (entry.loading) return el("p", attrs, "Loading " + c.service + "…");
      if (entry.error) return el("p", Object.assign(attrs, { class: "error" }), c.service + ": " + entry.error);
      return el("div", {}, el("h4", {}, c.service + " (last 100 lines)"), el("pre", Object.assign(attrs, { tabindex: "0" }), entry.text || "(no output)"));
    });
    const times = [
      ["created", s.created_at], ["started", s.started_at], ["running", s.running_at],
      ["ended", s.ended_at], ["expires", s.ended_at ? null : s.expires_at], ["cleaned up", s.cleaned_at],
    ].filter(([, t]) => t).map(([label, t]) => el("span", {}, label + " ", when(t)));
    const params = Object.entries(s.params || {}).map(([k, v]) => k + "=" + JSON.stringify(v)).join(", ");
    return el("div", { class: "details", id: "session-details:" + s.id, dataset: { session: s.id } },
      el("p", { class: "row" }, times, params ? el("span", {}, "params: " + params) : null,
        s.network ? el("span", {}, "network " + s.network) : null),
      table(["Service", "Container", "State", "Exit code", "Started", "Finished", ""], rows,
        "No containers recorded for this session yet."),
      outputs);
  }

  function sessionRows(list) {
    const rows = [];
    for (const s of list) {
      const expanded = open.has(s.id);
      const toggle = el("button", {
        type: "button", id: "session-toggle:" + s.id, dataset: { session: s.id, action: "details" },
        "aria-expanded": expanded ? "true" : "false", "aria-controls": "session-details:" + s.id,
      }, expanded ? "Hide details" : "Details");
      toggle.addEventListener("click", () => {
        if (open.has(s.id)) open.delete(s.id); else open.add(s.id);
        corral.refresh(false);
      });
      const end = ACTIVE.includes(s.state)
        ? action("End", async () => { await call("/sessions/" + enc(s.id), { method: "DELETE" }); corral.refresh(false); },
          { id: "session-end:" + s.id, dataset: { session: s.id, action: "end" }, "aria-label": "End session " + s.id })
        : null;
      rows.push({
        attrs: { dataset: { session: s.id, state: s.state } },
        cells: [
          el("code", {}, s.id), s.template, badge(s.state), s.host || "-", endpoints(s),
          when(s.created_at), when(s.ended_at), s.reason || "-",
          el("span", { class: "row" }, toggle, end),
        ],
      });
      if (expanded) rows.push({ attrs: { class: "details-row", dataset: { details: s.id } }, cells: [details(s)] });
    }
    return rows;
  }

  corral.page("sessions", {
    title: "Sessions",
    kinds: ["session.", "template."],
    async render(root) {
      const [tpl, sessions] = await Promise.all([call("/templates"), call("/sessions?limit=200")]);
      sessions.sort((a, b) => (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0));
      const ids = new Set(sessions.map((s) => s.id));
      for (const id of open) if (!ids.has(id)) open.delete(id);
      const t = table(
        ["ID", "Template", "State", "Host", "Endpoints", "Created", "Ended", "Reason", ""],
        sessionRows(sessions),
        "No sessions yet: corral session new TEMPLATE -p key=value.",
        { id: "sessions-table" },
      );
      // A details row spans the whole table.
      for (const td of t.querySelectorAll("tr.details-row > td")) td.setAttribute("colspan", "9");
      root.append(
        el("h3", { id: "templates-title" }, "Templates"), templates(tpl),
        el("h3", { id: "sessions-title" }, "Sessions"), t);
    },
  });
})();
