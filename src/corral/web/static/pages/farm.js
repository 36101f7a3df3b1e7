// Farm page: printers, racks and beds, the robot arm and its queue, and each printer's
// utilization over the last hour as a bar chart.
"use strict";
(() => {
  const { el, svg, call, table, badge, ago } = corral;
  const OPEN = ["queued", "assigned", "running"];

  const pct = (f) => Math.round(Math.max(0, Math.min(1, f || 0)) * 100) + "%";
  const secs = (s) => (s >= 120 ? Math.round(s / 60) + " min" : Math.round(s) + " s");
  const where = (b) => (b.printer ? "printer " + b.printer : b.rack ? "rack " + b.rack + " slot " + b.slot : "nowhere");

  function chart(usage) {
    if (!usage.length) return el("p", { class: "empty", id: "farm-chart" }, "No utilization yet: it is measured once printers report their state (PUT /farm/printers/ID/state).");
    const rowH = 26, labelW = 110, barW = 360, pad = 6;
    const width = labelW + barW + 70, height = usage.length * rowH + pad * 2 + 18;
    const rows = usage.map((u, i) => {
      const y = pad + i * rowH;
      const busy = pct(u.utilization);
      const known = (u.busy_s || 0) + (u.idle_s || 0);
      const tip = "printer " + u.printer + ": busy " + busy + " (" + secs(u.busy_s || 0) + " printing of " + secs(known) + " with a known state)";
      return svg("g", { class: "printer", "data-printer": u.printer, "data-utilization": String(u.utilization) },
        svg("text", { x: labelW - 6, y: y + rowH / 2 + 4, "text-anchor": "end" }, u.printer),
        svg("rect", { class: "track", x: labelW, y: y + 4, width: barW, height: rowH - 8, fill: "#e9ecef" }),
        svg("rect", { class: "bar", x: labelW, y: y + 4, width: Math.max(0, Math.min(1, u.utilization || 0)) * barW, height: rowH - 8 },
          svg("title", {}, tip)),
        svg("text", { x: labelW + barW + 6, y: y + rowH / 2 + 4 }, busy));
    });
    const axisY = pad + usage.length * rowH + 12;
    const axis = [0, 0.5, 1].map((f) => svg("text", { x: labelW + f * barW, y: axisY, "text-anchor": f === 0 ? "start" : f === 1 ? "end" : "middle" }, pct(f)));
    return svg("svg", {
      class: "chart", id: "farm-chart", role: "group", viewBox: "0 0 " + width + " " + height,
      width: "100%", style: "max-width: " + width + "px; height: auto; background: #fff",
      "aria-labelledby": "farm-chart-title",
    }, svg("title", { id: "farm-chart-title" }, "Busy fraction of each printer over the last hour"), rows, axis);
  }

  corral.page("farm", {
    title: "Print farm",
    // printer.added|updated|state|finished|removed, bed.*, rack.*, task.*, arm.status, farm.*
    kinds: ["printer.", "bed.", "rack.", "task.", "farm.", "arm."],
    poll: 30000, // utilization moves with time even without events
    async render(root) {
      const to = new Date();
      const from = new Date(to.getTime() - 3600 * 1000);
      const range = "?from=" + encodeURIComponent(from.toISOString()) + "&to=" + encodeURIComponent(to.toISOString());
      const [printers, racks, beds, arm, usage] = await Promise.all([
        call("/farm/printers"), call("/farm/racks"), call("/farm/beds"), call("/farm/arm"), call("/farm/utilization" + range),
      ]);
      const tasks = await call("/tasks?limit=500&target=" + encodeURIComponent(arm.name));
      // The arm's queue in the order it runs: the job in flight, then priority, then age.
      const queue = tasks.filter((t) => OPEN.includes(t.state)).sort((a, b) =>
        (b.id === arm.in_flight) - (a.id === arm.in_flight) || b.priority - a.priority || a.id - b.id);

      root.append(
        el("h3", { id: "printers-title" }, "Printers"),
        table(["Printer", "State", "Bed", "Bed type", "Door", "Position", "Updated"],
          printers.map((p) => ({
            attrs: { dataset: { printer: p.id, state: p.state } },
            cells: [p.id, badge(p.state), p.bed || "-", p.bed_type, p.door || "-", String(p.position), ago(p.updated_at)],
          })),
          "No printers: corral farm printer ID --bed-type TYPE (and farm_enabled: true in corral.yaml).",
          { id: "printers-table" }),

        el("h3", { id: "arm-title" }, "Arm"),
        table(["Arm", "Status", "Job in flight", "Queued"], [{
          attrs: { dataset: { arm: arm.name, status: arm.status } },
          cells: [arm.name, badge(arm.status),
            arm.in_flight === null || arm.in_flight === undefined ? "none" : "task " + arm.in_flight,
            el("span", { dataset: { queued: String(arm.queued) } }, String(arm.queued))],
        }], "", { id: "farm-arm" }),
        // Every wait on the arm is shown: what for and since when.
        arm.blocked ? el("p", { id: "arm-blocked", class: "mid" }, "blocked: " + arm.blocked) : null,
        el("h4", { id: "queue-title", style: "margin: .8rem 0 .3rem" }, "Queue"),
        table(["Task", "Kind", "State", "Printer", "Bed", "Priority", "Created"],
          queue.map((t) => ({
            attrs: { dataset: { task: String(t.id), state: t.state } },
            cells: [String(t.id), t.kind, badge(t.state), t.params.printer_id || "-", t.params.bed_id || "-", String(t.priority), ago(t.created_at)],
          })),
          "The arm's queue is empty (corral farm arm; corral task ls --target " + arm.name + ").",
          { id: "arm-queue" }),

        el("h3", { id: "racks-title" }, "Racks"),
        table(["Rack", "Position", "Slots", "Beds"],
          racks.map((r) => {
            const here = beds.filter((b) => b.rack === r.id);
            return {
              attrs: { dataset: { rack: r.id } },
              cells: [r.id, String(r.position), here.length + "/" + r.slots + " used",
                here.sort((a, b) => a.slot - b.slot).map((b) => b.slot + ": " + b.id + " (" + b.state + ")").join(", ") || "-"],
            };
          }),
          "No racks: corral farm rack ID --slots N.",
          { id: "racks-table" }),

        el("h3", { id: "beds-title" }, "Beds"),
        table(["Bed", "Type", "State", "Where", "Reserved for"],
          beds.map((b) => ({
            attrs: { dataset: { bed: b.id, state: b.state } },
            cells: [b.id, b.type, badge(b.state), where(b), b.reserved_for || "-"],
          })),
          "No beds: corral farm bed ID --type TYPE --rack RACK --slot N.",
          { id: "beds-table" }),

        el("h3", { id: "usage-title" }, "Utilization, last hour"),
        chart(usage));
    },
  });
})();
