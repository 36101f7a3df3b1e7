// Hosts page: each Docker engine, whether it answers, and its resources.
"use strict";
(() => {
  const { el, call, table, badge, ago } = corral;
  const gib = (bytes) => (bytes ? (bytes / 2 ** 30).toFixed(1) + " GiB" : "-");

  corral.page("hosts", {
    title: "Hosts",
    kinds: ["host."],
    async render(root) {
      const hosts = await call("/hosts");
      root.append(table(
        ["Name", "URL", "State", "Engine", "CPUs", "Memory", "Containers", "Swarm", "Labels", "Checked"],
        hosts.map((h) => {
          const f = h.facts || {};
          const state = h.reachable === null ? "unknown" : h.reachable ? "reachable" : "unreachable";
          return {
            attrs: { dataset: { host: h.name } },
            cells: [
              h.name, h.url,
              el("span", {}, badge(state), h.last_error && !h.reachable ? " " + h.last_error : ""),
              f.engine_version || "-", f.cpus ?? "-", gib(f.memory_bytes),
              f.containers_total === undefined ? "-" : f.containers_running + "/" + f.containers_total,
              f.swarm_role || "-",
              Object.entries(h.labels).map(([k, v]) => k + "=" + v).join(", ") || "-",
              ago(h.last_checked),
            ],
          };
        }),
        "No hosts yet: corral host add NAME URL (the local engine registers itself when it answers).",
      ));
    },
  });
})();
