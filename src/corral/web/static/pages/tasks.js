// Tasks page: every task newest first, filtered by state; cancel open ones, retry failed or
// cancelled ones.
"use strict";
(() => {
  const { el, call, table, badge, ago, action } = corral;
  const STATES = ["queued", "assigned", "running", "done", "failed", "cancelled"];
  const OPEN = ["queued", "assigned", "running"];
  let filter = "";

  function summary(params) {
    const entries = Object.entries(params || {});
    if (!entries.length) return "-";
    const text = entries.map(([k, v]) => k + "=" + (typeof v === "string" ? v : JSON.stringify(v))).join(", ");
    return text.length > 80 ? el("span", { title: text }, text.slice(0, 79) + "…") : text;
  }

  function controls() {
    const select = el("select", { id: "task-state", name: "state" },
      el("option", { value: "" }, "any state"),
      STATES.map((s) => el("option", { value: s, selected: s === filter }, s)));
    select.addEventListener("change", () => { filter = select.value; corral.refresh(false); });
    return el("form", { class: "inline", role: "search", id: "task-filter" },
      el("label", { for: "task-state" }, "State", select));
  }

  async function act(id, verb) {
    await call("/tasks/" + id + "/" + verb, { method: "POST" });
    corral.refresh(false);
  }

  corral.page("tasks", {
    title: "Tasks",
    kinds: ["task."],
    async render(root) {
      const tasks = await call("/tasks?limit=500" + (filter ? "&state=" + encodeURIComponent(filter) : ""));
      tasks.sort((a, b) => b.id - a.id);
      const form = controls();
      form.addEventListener("submit", (ev) => ev.preventDefault());
      root.append(form, table(
        ["ID", "Kind", "Target", "State", "Params", "Priority", "Created", "Reason", ""],
        tasks.map((t) => ({
          attrs: { dataset: { task: String(t.id), state: t.state } },
          cells: [
            String(t.id), t.kind, t.target,
            el("span", {}, badge(t.state), t.attempts > 1 ? " (attempt " + t.attempts + ")" : ""),
            summary(t.params), String(t.priority),
            el("time", { datetime: t.created_at, title: new Date(t.created_at).toLocaleString() }, ago(t.created_at)),
            [t.reason || (t.source ? "" : "-"), t.source ? el("div", { class: "source" }, "from " + t.source) : null],
            el("span", { class: "row" },
              OPEN.includes(t.state)
                ? action("Cancel", () => act(t.id, "cancel"), { id: "task-cancel:" + t.id, dataset: { task: String(t.id), action: "cancel" }, "aria-label": "Cancel task " + t.id })
                : null,
              t.state === "failed" || t.state === "cancelled"
                ? action("Retry", () => act(t.id, "retry"), { id: "task-retry:" + t.id, dataset: { task: String(t.id), action: "retry" }, "aria-label": "Retry task " + t.id })
                : null),
          ],
        })),
        filter
          ? "No " + filter + " tasks. (corral task ls --state " + filter + ")"
          : "No tasks yet: corral task new KIND --target robot_arm (the farm and fleet make them too).",
        { id: "tasks-table" },
      ));
    },
  });
})();
