// Devices page: Wasm devices and their health, the module package manager (with an upload
// form), and deployments (a create form, and a run form per deployment).
// The forms are built once and kept across re-renders, so what someone types survives the
// events that re-draw the page.
"use strict";
(() => {
  const { el, call, table, badge, ago } = corral;
  const enc = encodeURIComponent;
  let forms = null; // the upload and create forms, built on the first render
  const runForms = new Map(); // deployment id -> {key, form}
  let lastRun = null; // the run result element (id="run-result")

  const percent = (v) => (typeof v === "number" && isFinite(v) ? Math.round(v <= 1 ? v * 100 : v) + "%" : "-");
  const code = (text) => el("code", {}, text);

  // Run `work` when the form is submitted; errors go to the banner (and `shown`, if given).
  function onSubmit(form, work, shown) {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const buttons = form.querySelectorAll("button");
      buttons.forEach((b) => { b.disabled = true; });
      try {
        await work();
        corral.fail(null);
      } catch (err) {
        corral.fail(err);
        if (shown) shown.replaceChildren(el("span", { class: "error" }, String(err.message || err)));
      } finally {
        buttons.forEach((b) => { b.disabled = false; });
      }
      corral.refresh(false);
    });
  }

  // Replace a select's options only when they changed; keep the chosen value if still there.
  function fill(select, options) {
    const key = JSON.stringify(options);
    if (select.dataset.key === key) return;
    const keep = select.value;
    select.replaceChildren(...options.map(([value, label]) => el("option", { value }, label)));
    select.dataset.key = key;
    if (options.some(([value]) => value === keep)) select.value = keep;
  }

  // ------------------------------------------------------------------------- devices

  function devicesTable(devices) {
    return table(
      ["Name", "URL", "Status", "Found by", "CPU / memory", "Interfaces", "Status changes", "Blacklisted"],
      devices.map((d) => {
        const report = (d.health && d.health.report) || {};
        const interfaces = (d.description && d.description.supervisorInterfaces) || [];
        const log = (d.statusLog || []).slice(0, 3);
        const toggle = d.blacklisted
          ? corral.action("Unblacklist", async () => {
            await call("/file/device/" + enc(d.name) + "/unblacklist", { method: "POST" });
            await corral.refresh(false);
          }, { "data-action": "unblacklist", "aria-label": "Unblacklist " + d.name })
          : corral.action("Blacklist", async () => {
            await call("/file/device/" + enc(d.name) + "/blacklist", { method: "POST" });
            await corral.refresh(false);
          }, { "data-action": "blacklist", "aria-label": "Blacklist " + d.name });
        return {
          attrs: { dataset: { device: d.name } },
          cells: [
            el("strong", {}, d.name),
            d.url || "-",
            el("span", {}, badge(d.status), d.lastError && d.status !== "active" ? el("small", { class: "error" }, " " + d.lastError) : null),
            d.source || "-",
            "CPU " + percent(report.cpuUsage) + " · mem " + percent(report.memoryUsage),
            interfaces.length ? interfaces.join(", ") : "-",
            log.length ? log.map((s, i) => el("span", {}, i ? "; " : "", s.status + " " + ago(s.time))) : "-",
            el("span", {}, d.blacklisted ? el("span", { class: "badge down" }, "yes") : "no", toggle ? " " : null, toggle),
          ],
        };
      }),
      "No devices yet: start `corral agent --name NAME --token …` on a device (mDNS finds it), or corral device add NAME HOST:PORT.",
    );
  }

  // ------------------------------------------------------------------------- modules

  function uploadForm() {
    const name = el("input", { id: "module-upload-name", name: "name", required: true, autocomplete: "off", placeholder: "e.g. double" });
    const file = el("input", { id: "module-upload-file", name: "module", type: "file", accept: ".wasm,application/wasm", required: true });
    const result = el("div", { id: "module-upload-result", "aria-live": "polite" });
    const form = el("form", { id: "module-upload", class: "inline", "aria-label": "Upload a module" },
      el("label", {}, "Module name", name),
      el("label", {}, "WebAssembly file (.wasm)", file),
      el("button", { type: "submit", id: "module-upload-submit" }, "Upload"));
    onSubmit(form, async () => {
      if (!file.files.length) throw new Error("choose a .wasm file to upload");
      const data = new FormData();
      data.append("name", name.value.trim());
      data.append("module", file.files[0], file.files[0].name);
      result.replaceChildren("Uploading…");
      const answer = await call("/file/module", { method: "POST", body: data });
      let doc = null;
      try { [doc] = await call("/file/module/" + enc(answer.id)); } catch (_) { /* shown without details */ }
      result.replaceChildren(
        el("span", { dataset: { module: doc ? doc.name : name.value.trim() } },
          answer.created ? "Uploaded " : "Already there (same bytes): ",
          el("strong", {}, doc ? doc.name : name.value.trim()), " ", code(answer.id),
          doc ? " — exports " + (doc.exports.map((e) => e.name).join(", ") || "nothing") : ""));
      file.value = "";
    }, result);
    return { form, result };
  }

  function modulesTable(modules) {
    return table(
      ["Name", "Id", "SHA-256", "Exports", "Imports", "Uploaded"],
      modules.map((m) => ({
        attrs: { dataset: { module: m.name, moduleId: m._id } },
        cells: [
          el("strong", {}, m.name),
          code(m._id),
          el("code", { title: (m.wasm && m.wasm.sha256) || "" }, ((m.wasm && m.wasm.sha256) || "").slice(0, 12)),
          m.exports.map((e) => e.name + "(" + e.parameterCount + ")").join(", ") || "-",
          (m.requirements || []).map((r) => r.module + "." + r.name).join(", ") || "-",
          ago(m.createdAt),
        ],
      })),
      "No modules yet: " + (corral.can("write") ? "upload a .wasm file above, or " : "") + "corral module push FILE.wasm.",
    );
  }

  // ------------------------------------------------------------------------- deployments

  function createForm() {
    const name = el("input", { id: "deployment-name", name: "name", required: true, autocomplete: "off", placeholder: "e.g. chain" });
    const steps = [1, 2].map((n) => {
      const module = el("select", { id: "step" + n + "-module", name: "step" + n + "-module" });
      const func = el("select", { id: "step" + n + "-func", name: "step" + n + "-func" });
      const device = el("select", { id: "step" + n + "-device", name: "step" + n + "-device" });
      return { n, module, func, device };
    });
    const result = el("div", { id: "deployment-create-result", "aria-live": "polite" });
    const form = el("form", { id: "deployment-create", class: "inline", "aria-label": "Create a deployment" },
      el("label", {}, "Deployment name", name),
      steps.map((s) => el("fieldset", { class: "row" },
        el("legend", {}, s.n === 1 ? "Step 1" : "Step 2 (optional)"),
        el("label", {}, "Module", s.module),
        el("label", {}, "Function", s.func),
        el("label", {}, "Device", s.device))),
      el("button", { type: "submit", id: "deployment-create-submit" }, "Create and deploy"));
    let modules = [];
    const sync = (mods, devices) => {
      modules = mods;
      const options = mods.map((m) => [m._id, m.name + " (" + m._id.slice(0, 8) + ")"]);
      const places = [["", "any"]].concat(devices.map((d) => [d.name, d.name + " (" + d.status + (d.blacklisted ? ", blacklisted" : "") + ")"]));
      for (const s of steps) {
        fill(s.module, (s.n === 1 ? [] : [["", "(no second step)"]]).concat(options));
        fill(s.device, places);
        syncFunctions(s);
      }
    };
    const syncFunctions = (s) => {
      const m = modules.find((x) => x._id === s.module.value);
      fill(s.func, m ? Object.keys(m.functions || {}).map((f) => [f, f]) : []);
      s.func.disabled = !m;
      s.device.disabled = !m;
    };
    for (const s of steps) s.module.addEventListener("change", () => syncFunctions(s));
    onSubmit(form, async () => {
      const sequence = [];
      for (const s of steps) {
        if (!s.module.value) {
          if (s.n === 1) throw new Error("step 1 needs a module: upload one first");
          continue;
        }
        if (!s.func.value) throw new Error("step " + s.n + ": the module exports no function");
        sequence.push({ device: s.device.value || null, module: s.module.value, func: s.func.value });
      }
      result.replaceChildren("Creating…");
      const id = String(await call("/file/manifest", { method: "POST", json: { name: name.value.trim(), sequence } })).trim();
      result.replaceChildren("Created ", code(id), "; deploying…");
      const answer = await call("/file/manifest/" + enc(id), { method: "POST" });
      result.replaceChildren(el("span", { dataset: { deployment: id } }, "Deployment ", el("strong", {}, name.value.trim()), " ", code(id), " is ", badge(answer.state)));
    }, result);
    return { form, result, sync };
  }

  function chain(d) {
    const steps = d.steps || [];
    if (!steps.length) return "-";
    return steps.map((s) => s.module_name + "." + s.func + "@" + (s.device || "any")).join(" > ");
  }

  function firstFunction(d, modules) {
    const first = (d.steps || [])[0];
    if (!first) return null;
    const m = modules.find((x) => x._id === first.module_id) || modules.find((x) => x.name === first.module_name);
    return (m && m.functions && m.functions[first.func]) || null;
  }

  function parametersOf(d, modules) {
    const f = firstFunction(d, modules);
    return (f && f.parameters) || [];
  }

  // The files a run sends: the first function's execution mounts.
  function inputFilesOf(d, modules) {
    const f = firstFunction(d, modules);
    return ((f && f.mounts) || []).filter((m) => m.stage === "execution").map((m) => m.name);
  }

  function showRun(d, answer, devices) {
    const from = String(answer.fetched_from_device || "");
    const device = devices.find((x) => x.url && from.startsWith(x.url.replace(/\/$/, "")));
    let value = answer.result;
    if (Array.isArray(value) && value.length && value.slice(1).every((v) => v === null)) value = value[0];
    let outputs = [];
    if (Array.isArray(value) && value.length === 2 && Array.isArray(value[1])) {
      outputs = value[1];
      value = value[0];
    }
    const text = typeof value === "string" ? value : JSON.stringify(value);
    lastRun.dataset.deployment = d._id;
    lastRun.replaceChildren(
      el("span", {}, "Run of ", el("strong", {}, d.name), ": "),
      el("output", { class: "value", "data-field": "result" }, text),
      outputs.length ? el("span", {}, " files: ", outputs.map((url) => el("a", { href: url, "data-field": "output-file" }, url.split("/").pop() + " "))) : "",
      el("span", {}, " from ", el("strong", { "data-field": "device" }, device ? device.name : "?"), from ? " (" + from + ")" : ""),
      answer.isInFailover ? el("span", {}, " ", el("span", { class: "badge mid", "data-field": "failover" }, "failover")) : "",
    );
  }

  // A run form per deployment: one input per parameter of the first step's function.
  function runForm(d, modules, devices) {
    const params = parametersOf(d, modules);
    const wanted = inputFilesOf(d, modules);
    const key = JSON.stringify([d.name, params, wanted]);
    const kept = runForms.get(d._id);
    if (kept && kept.key === key) { kept.d = d; kept.devices = devices; return kept.form; }
    const inputs = params.map((p) => {
      const numeric = p.type === "integer" || p.type === "number";
      const input = el("input", {
        id: "run-" + d._id + "-" + p.name, name: p.name, autocomplete: "off",
        type: numeric ? "number" : "text", step: p.type === "integer" ? "1" : numeric ? "any" : null,
        class: "param", size: 6,
      });
      return { p, input };
    });
    const files = wanted.map((name) => ({
      name, input: el("input", { id: "run-" + d._id + "-file-" + name, type: "file", name, required: true }),
    }));
    const entry = { key, d, devices, form: null };
    const form = el("form", { class: "inline run", style: "margin: 0; padding: .3rem", "aria-label": "Run deployment " + d.name, dataset: { deployment: d._id } },
      inputs.map(({ p, input }) => el("label", {}, p.name + " (" + p.type + ")", input)),
      files.map(({ name, input }) => el("label", {}, name + " (file)", input)),
      el("button", { type: "submit", id: "run-" + d._id + "-submit" }, "Run"));
    onSubmit(form, async () => {
      const args = {};
      for (const { p, input } of inputs) {
        const raw = input.value.trim();
        if (raw === "") continue; // the API names what is missing
        args[p.name] = (p.type === "integer" || p.type === "number") && raw !== "" && isFinite(Number(raw)) ? Number(raw) : raw;
      }
      lastRun.dataset.deployment = entry.d._id;
      lastRun.replaceChildren("Running " + entry.d.name + "…");
      let options = { method: "POST", json: args };
      if (files.length) { // multipart: the parameters as fields, each file under its mount
        const body = new FormData();
        for (const [k, v] of Object.entries(args)) body.append(k, String(v));
        for (const { name, input } of files) if (input.files[0]) body.append(name, input.files[0], name);
        options = { method: "POST", body };
      }
      const answer = await call("/execute/" + enc(entry.d._id), options);
      showRun(entry.d, answer, entry.devices);
    }, lastRun);
    entry.form = form;
    runForms.set(d._id, entry);
    return form;
  }

  function deploymentsTable(deployments, modules, devices) {
    for (const id of runForms.keys()) if (!deployments.some((d) => d._id === id)) runForms.delete(id);
    const write = corral.can("write");
    return table(
      ["Name", "State", "Chain", "Reason", write ? "Run" : null].filter((h) => h !== null),
      deployments.map((d) => ({
        attrs: { dataset: { deployment: d._id } },
        cells: [
          el("span", {}, el("strong", {}, d.name), el("br"), el("small", {}, code(d._id))),
          badge(d.state),
          chain(d),
          d.reason || "-",
          write ? el("div", { class: "row" }, runForm(d, modules, devices), corral.action("Delete", async () => {
            await call("/file/manifest/" + enc(d._id), { method: "DELETE" });
            await corral.refresh(false);
          }, { "data-action": "delete", "aria-label": "Delete deployment " + d.name, id: "delete-" + d._id })) : null,
        ].filter((c) => c !== null),
      })),
      "No deployments yet: " + (write ? "create one above, or " : "") + "corral deployment create FILE.yml.",
    );
  }

  // ------------------------------------------------------------------------- page

  corral.page("devices", {
    title: "Devices and deployments",
    kinds: ["device.", "module.", "deployment."],
    async render(root) {
      const [devices, modules, deployments] = await Promise.all([
        call("/file/device"), call("/file/module"), call("/file/manifest"),
      ]);
      const write = corral.can("write");
      if (!lastRun) lastRun = el("div", { id: "run-result", class: "run-result", "aria-live": "polite" });
      if (write && !forms) forms = { upload: uploadForm(), create: createForm() };
      if (forms) forms.create.sync(modules, devices);

      root.append(...[
        el("h3", {}, "Devices (" + devices.length + ")"),
        devicesTable(devices),
        el("h3", {}, "Modules (" + modules.length + ")"),
        forms ? [forms.upload.form, forms.upload.result] : null,
        modulesTable(modules),
        el("h3", {}, "Deployments (" + deployments.length + ")"),
        forms ? [forms.create.form, forms.create.result] : null,
        deploymentsTable(deployments, modules, devices),
        write ? el("h3", {}, "Last run") : null,
        write ? lastRun : null,
      ].flat().filter(Boolean));
      if (write && !lastRun.childNodes.length) lastRun.append(el("span", { class: "empty" }, "Nothing run yet: fill in a deployment's parameters and press Run (or corral deployment run NAME -p x=1)."));
    },
  });
})();
