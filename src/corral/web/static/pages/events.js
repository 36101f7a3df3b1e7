// Events page: the newest events, then every new one as it happens, filtered by kind.
"use strict";
(() => {
  const { el, call } = corral;
  let filter = "";
  let list = null;

  function line(e) {
    return el("li", { dataset: { kind: e.kind } },
      el("time", { datetime: e.time }, new Date(e.time).toLocaleTimeString()), "  ",
      el("strong", {}, e.kind), "  ", e.resource, "  ", e.message);
  }

  corral.page("events", {
    title: "Events",
    kinds: [""],
    live(event) {
      if (!list || !list.isConnected || !event.kind.startsWith(filter)) return;
      list.prepend(line(event));
      while (list.children.length > 300) list.lastChild.remove();
    },
    async render(root) {
      const query = "/events?limit=100&newest_first=true" + (filter ? "&kind=" + encodeURIComponent(filter + "*") : "");
      const events = await call(query);
      const input = el("input", { id: "event-filter", type: "search", value: filter, placeholder: "kind prefix, e.g. mission.", "aria-label": "filter by kind prefix" });
      const form = el("form", { class: "inline", role: "search" }, el("label", {}, "Kind", input), el("button", { type: "submit" }, "Filter"));
      form.addEventListener("submit", (ev) => { ev.preventDefault(); filter = input.value.trim(); corral.refresh(true); });
      list = el("ol", { class: "events", id: "events-list", reversed: true }, events.map(line));
      root.append(form, events.length ? list : el("p", { class: "empty" }, "No events" + (filter ? " of kind " + filter + "…" : "") + " yet."));
      if (!events.length) root.append(list);
    },
  });
})();
