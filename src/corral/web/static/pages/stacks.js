// Stacks page: every stack with its services and replicas; start, stop, restart, logs;
// apply a compose file.
"use strict";
(() => {
  const { el, call, table, badge, ago, action } = corral;
  const logs = new Map(); // "stack/service" -> {text, error, loading}: kept across re-renders

  const enc = encodeURIComponent;
  const BOX = "background: #fff; border: 1px solid #dde1e6; padding: .2rem .8rem .6rem; margin: .8rem 0";

  async function operate(stack, service, verb) {
    await call("/stacks/" + enc(stack) + "/" + verb, { method: "POST", json: { services: [service] } });
    corral.refresh(false);
  }

  const fetchLogs = (stack, service) => corral.tail(logs, stack + "/" + service,
    "/stacks/" + enc(stack) + "/services/" + enc(service) + "/logs?tail=100&follow=false");

  function logsButton(stack, service) {
    const key = stack + "/" + service;
    const shown = logs.has(key);
    const b = el("button", {
      type: "button",
      id: "logs:" + key,
      dataset: { stack, service, action: "logs" },
      "aria-expanded": shown ? "true" : "false",
      "aria-controls": "logs-out:" + key,
    }, shown ? "Refresh logs" : "Logs");
    b.addEventListener("click", () => fetchLogs(stack, service));
    const hide = shown ? el("button", {
      type: "button", id: "hide-logs:" + key,
      dataset: { stack, service, action: "hide-logs" },
    }, "Hide logs") : null;
    if (hide) hide.addEventListener("click", () => { logs.delete(key); corral.refresh(false); });
    return [b, hide];
  }

  function logsOutput(stack, service) {
    const entry = logs.get(stack + "/" + service);
    if (!entry) return null;
    const id = "logs-out:" + stack + "/" + service;
    const attrs = { id, class: "logs", dataset: { stack, service }, "aria-label": "logs of " + stack + " " + service };
    if (entry.loading) return el("p", attrs, "Loading the last 100 lines…");
    if (entry.error) return el("p", Object.assign(attrs, { class: "logs error" }), "Logs: " + entry.error);
    return el("pre", Object.assign(attrs, { tabindex: "0" }), entry.text || "(no output)");
  }

  function serviceBlock(stack, service) {
    const slots = stack.slots.filter((s) => s.service === service).sort((a, b) => a.replica - b.replica);
    const stopped = stack.stopped_services.includes(service);
    const running = slots.filter((s) => s.state === "running").length;
    const n = stack.name;
    const buttons = [
      action("Start", () => operate(n, service, "start"), { id: "start:" + n + "/" + service, dataset: { stack: n, service, action: "start" } }),
      action("Stop", () => operate(n, service, "stop"), { id: "stop:" + n + "/" + service, dataset: { stack: n, service, action: "stop" } }),
      action("Restart", () => operate(n, service, "restart"), { id: "restart:" + n + "/" + service, dataset: { stack: n, service, action: "restart" } }),
      ...logsButton(n, service),
    ];
    return el("div", { class: "service", dataset: { stack: n, service } },
      el("h4", { style: "margin: .8rem 0 .2rem" }, "Service ", el("code", {}, service)),
      el("p", { class: "row" },
        el("span", {}, "desired replicas: ", slots.length
          ? el("strong", { dataset: { desired: String(slots.length) } }, String(slots.length))
          : el("strong", {}, "not placed yet")),
        el("span", {}, "running: " + running + "/" + slots.length),
        stopped ? el("span", {}, badge("stopped"), " by request") : null),
      table(
        ["Replica", "Host", "Container", "State", "Reason", "Updated"],
        slots.map((s) => ({
          attrs: { dataset: { stack: n, service, replica: String(s.replica), state: s.state } },
          cells: [
            String(s.replica),
            s.host || "-",
            s.container || "-",
            el("span", {}, badge(s.state), s.health ? " (" + s.health + ")" : "",
              s.state === "exited" || s.exit_code ? " exit " + s.exit_code : ""),
            s.reason || "-",
            ago(s.updated_at),
          ],
        })),
        "No replicas placed yet (the next convergence pass places them).",
      ),
      el("div", { class: "row" }, buttons),
      logsOutput(n, service));
  }

  function stackBlock(stack) {
    return el("section", { class: "stack", style: BOX, dataset: { stack: stack.name }, "aria-labelledby": "stack:" + stack.name },
      el("h3", { id: "stack:" + stack.name }, stack.name + " ", badge(stack.state), stack.mode === "swarm" ? el("small", { class: "mode" }, " swarm services") : null),
      el("p", { class: "row" }, "updated " + ago(stack.updated_at), " · ",
        stack.services.length + (stack.services.length === 1 ? " service" : " services")),
      stack.state === "removing"
        ? Object.entries(stack.pending_removal || {}).map(([host, why]) =>
          el("p", { class: "row", dataset: { pendingHost: host } },
            "Left on " + host + ", removed when it answers: " + why))
        : stack.services.length
          ? stack.services.map((service) => serviceBlock(stack, service))
          : el("p", { class: "empty" }, "This stack declares no services."));
  }

  // The apply form is built once and moved into each render, so what is typed (and the
  // caret, and the undo history) survives the re-renders that events cause.
  let form = null;
  let formMessage = null;

  function applyForm() {
    if (form) return form;
    const name = el("input", { id: "stack-name", name: "name", required: true, maxlength: "63", placeholder: "demo", autocomplete: "off", spellcheck: "false" });
    const file = el("textarea", { id: "stack-file", name: "file", required: true, rows: "10", spellcheck: "false", placeholder: "services:\n  web:\n    image: nginx:alpine" });
    const mode = el("select", { id: "stack-mode", name: "mode" },
      el("option", { value: "" }, "as the file says"),
      el("option", { value: "containers" }, "containers"),
      el("option", { value: "swarm" }, "swarm services"));
    const submit = el("button", { type: "submit", id: "stack-apply", dataset: { action: "apply" } }, "Apply");
    formMessage = el("div", { id: "stack-apply-message", "aria-live": "polite" });
    form = el("form", { id: "stack-apply-form", class: "apply", style: BOX, "aria-labelledby": "stack-apply-title" },
      el("h3", { id: "stack-apply-title" }, "Apply a stack file"),
      el("div", { class: "row" }, el("label", { for: "stack-name" }, "Name"), name),
      el("div", { class: "row" }, el("label", { for: "stack-mode" }, "Mode"), mode),
      el("label", { for: "stack-file" }, "Compose YAML"), file,
      el("div", { class: "row" }, submit),
      formMessage);
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      submit.disabled = true;
      corral.fail(null);
      formMessage.replaceChildren(el("p", { role: "status" }, "Applying…"));
      try {
        const view = await call("/stacks", { method: "POST", json: { name: name.value.trim(), file: file.value, mode: mode.value } });
        formMessage.replaceChildren(el("p", { id: "stack-apply-result", role: "status" }, "Stack " + view.name + " applied: ", badge(view.state)));
        name.value = "";
        file.value = "";
        corral.fail(null);
      } catch (err) {
        formMessage.replaceChildren(el("p", { class: "error", role: "alert", id: "stack-apply-error" }, err.message));
        corral.fail(err);
      } finally {
        submit.disabled = false;
      }
      await corral.refresh(false);
    });
    return form;
  }

  corral.page("stacks", {
    title: "Stacks",
    // stack.created|updated|removed|stopped|started, container.*, and the rest of what a
    // convergence pass reports (images, networks).
    kinds: ["stack.", "container.", "service.", "image.", "network."],
    async render(root) {
      const stacks = await call("/stacks");
      const names = new Set(stacks.flatMap((s) => s.services.map((v) => s.name + "/" + v)));
      for (const key of logs.keys()) if (!names.has(key)) logs.delete(key);
      const active = document.activeElement;
      root.append(stacks.length
        ? el("div", { id: "stacks-list" }, stacks.map(stackBlock))
        : el("p", { class: "empty", id: "stacks-list" }, "No stacks yet: corral up -f compose.yml -n NAME" +
            (corral.can("write") ? " (or apply a file below)." : ".")));
      if (corral.can("write")) {
        const f = applyForm();
        root.append(f); // moving the form drops its focus: give it back once the page is shown
        if (active && f.contains(active)) setTimeout(() => { if (active.isConnected) active.focus(); }, 0);
      }
    },
  });
})();
