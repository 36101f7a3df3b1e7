// Fleet page: a live map (lanes, markers, what the traffic table holds, each robot where its
// telemetry puts it), the robots, the missions, and fleet-wide stop / resume / estop.
// Re-rendered every 500 ms: the nodes are kept and only what changed is touched.
"use strict";
(() => {
  const { el, svg, call, table, badge, ago } = corral;
  const enc = encodeURIComponent;
  const MAPS_EVERY = 15000; // re-read the maps at least this often (map. events re-read at once)

  let maps = null;
  let mapsAt = 0;
  let mapsStale = true;
  let selected = null; // the map shown
  let inflight = null; // one fetch shared by renders that overlap
  let ui = null; // the kept nodes

  corral.onEvent((event) => { if (event.kind.startsWith("map.")) mapsStale = true; });

  const laneKey = (a, b) => (a <= b ? a + "|" + b : b + "|" + a);
  const laneEnds = (lane) => (Array.isArray(lane) ? { from: lane[0], to: lane[1], oneway: false } : { from: lane.from, to: lane.to, oneway: !!lane.oneway });
  const round = (v) => String(Math.round(v * 1000) / 1000);

  // ------------------------------------------------------------------------- kept nodes

  function build() {
    const select = el("select", { id: "map-select", name: "map" });
    select.addEventListener("change", () => { selected = select.value; corral.refresh(false); });
    const result = el("span", { id: "broadcast-result", "aria-live": "polite" });
    const send = (kind, label) => async () => {
      const answer = await call("/fleet/broadcast", { method: "POST", json: { kind } });
      const names = (answer && answer.robots) || [];
      result.textContent = label + " sent to " + names.length + " robot" + (names.length === 1 ? "" : "s") + " at " + new Date().toLocaleTimeString() + ".";
    };
    const buttons = [
      corral.action("Stop all", send("stop", "Stop"), { "data-action": "broadcast-stop", id: "broadcast-stop" }),
      corral.action("Resume all", send("resume", "Resume"), { "data-action": "broadcast-resume", id: "broadcast-resume" }),
      corral.action("Emergency stop (all robots)", send("estop", "Emergency stop"), {
        "data-action": "broadcast-estop", id: "broadcast-estop",
        style: "border: 2px solid #b3261e; color: #b3261e; font-weight: 700",
      }),
    ].filter(Boolean);
    const mapLabel = el("label", { for: "map-select" }, "Map ");
    const picker = el("span", {}, mapLabel, select);
    const controls = el("div", { class: "row" }, picker, buttons.length ? el("span", { class: "row", role: "group", "aria-label": "Every robot" }, buttons) : null, result);
    const mapBox = el("div", { class: "map-box" });
    const waits = el("p", { id: "traffic-waits" });
    const robotsBox = el("div", { id: "robots" });
    const missionsBox = el("div", { id: "missions" });
    const root = el("div", { class: "fleet" }, controls, mapBox, waits, robotsBox, missionsBox);
    return {
      root, select, picker, mapBox, waits, robotsBox, missionsBox,
      mapKey: null, svg: null, coords: new Map(), lanes: new Map(), markers: new Map(), robots: new Map(), robotLayer: null,
      robotsKey: null, missionsKey: null, waitsKey: null,
    };
  }

  // ------------------------------------------------------------------------- the map

  // Build the SVG of a map once: lanes, markers with their ids, a layer for the robots.
  // Coordinates are divided by the typical lane length so the stylesheet's sizes fit any scale.
  function drawMap(fmap) {
    const markers = fmap.markers || [];
    const lanes = (fmap.lanes || []).map(laneEnds);
    const raw = new Map(markers.map((m) => [m.id, [Number(m.x), Number(m.y)]]));
    const lengths = lanes
      .filter((l) => raw.has(l.from) && raw.has(l.to))
      .map((l) => Math.hypot(raw.get(l.from)[0] - raw.get(l.to)[0], raw.get(l.from)[1] - raw.get(l.to)[1]))
      .filter((d) => d > 0)
      .sort((a, b) => a - b);
    let unit = lengths.length ? lengths[Math.floor(lengths.length / 2)] : 0;
    const xs = markers.map((m) => Number(m.x));
    const ys = markers.map((m) => Number(m.y));
    if (!unit) {
      const span = Math.max(Math.max(...xs) - Math.min(...xs), Math.max(...ys) - Math.min(...ys));
      unit = span > 0 ? span / Math.max(1, Math.sqrt(markers.length)) : 1;
    }
    const coords = new Map([...raw].map(([id, [x, y]]) => [id, [x / unit, y / unit]]));
    // A margin around the markers' bounding box; more on the right and top for the ids.
    const longest = Math.max(...markers.map((m) => String(m.id).length));
    const [left, right, top, bottom] = [0.5, Math.max(0.5, 0.2 + longest * 0.18), 0.6, 0.5];
    const minX = Math.min(...xs) / unit - left;
    const minY = Math.min(...ys) / unit - top;
    const width = (Math.max(...xs) - Math.min(...xs)) / unit + left + right;
    const height = (Math.max(...ys) - Math.min(...ys)) / unit + top + bottom;

    const laneEls = new Map();
    const laneLayer = svg("g", { class: "lanes" });
    for (const l of lanes) {
      const a = coords.get(l.from);
      const b = coords.get(l.to);
      if (!a || !b) continue;
      const key = laneKey(l.from, l.to);
      const line = svg("line", {
        class: "lane", x1: round(a[0]), y1: round(a[1]), x2: round(b[0]), y2: round(b[1]),
        "data-lane": key, "stroke-dasharray": l.oneway ? ".16 .08" : null,
      }, svg("title", {}, "lane " + l.from + (l.oneway ? " → " : " – ") + l.to));
      laneEls.set(key, line);
      laneLayer.append(line);
    }
    const markerEls = new Map();
    const markerLayer = svg("g", { class: "markers" });
    for (const m of markers) {
      const [x, y] = coords.get(m.id);
      const dot = svg("circle", { class: "marker", cx: round(x), cy: round(y), r: "0.1", "data-marker": m.id },
        svg("title", {}, "marker " + m.id));
      markerEls.set(m.id, dot);
      markerLayer.append(dot, svg("text", { x: round(x + 0.12), y: round(y - 0.12) }, m.id));
    }
    const robotLayer = svg("g", { class: "robots" });
    const image = svg("svg", {
      class: "map", viewBox: [minX, minY, width, height].map(round).join(" "),
      role: "img", "aria-label": "Map " + fmap.name + ": " + markers.length + " markers, " + lanes.length + " lanes; robots as blue dots",
      "data-map": fmap.name,
    }, laneLayer, markerLayer, robotLayer);
    Object.assign(ui, { svg: image, coords, lanes: laneEls, markers: markerEls, robots: new Map(), robotLayer });
    ui.mapBox.replaceChildren(image);
  }

  // Where a robot is on the map: at a marker, along a lane by progress, else at its marker.
  function position(robot) {
    const t = robot.telemetry || {};
    if (t.marker && ui.coords.has(t.marker)) return ui.coords.get(t.marker);
    if (Array.isArray(t.lane) && ui.coords.has(t.lane[0]) && ui.coords.has(t.lane[1])) {
      const [a, b] = [ui.coords.get(t.lane[0]), ui.coords.get(t.lane[1])];
      const p = Math.min(1, Math.max(0, Number(t.progress) || 0));
      return [a[0] + (b[0] - a[0]) * p, a[1] + (b[1] - a[1]) * p];
    }
    if (robot.marker && ui.coords.has(robot.marker)) return ui.coords.get(robot.marker);
    return null;
  }

  function where(robot) {
    const t = robot.telemetry || {};
    if (t.marker) return t.marker;
    if (Array.isArray(t.lane)) return t.lane[0] + " → " + t.lane[1] + (typeof t.progress === "number" ? " (" + Math.round(t.progress * 100) + "%)" : "");
    return robot.marker || "-";
  }

  function setClass(node, cls) { if (node.getAttribute("class") !== cls) node.setAttribute("class", cls); }

  // Touch only what changed: held lanes and markers, and the robots' dots.
  function updateMap(traffic, robots) {
    const holds = (traffic && traffic.holds) || {};
    for (const [key, line] of ui.lanes) {
      const holder = holds["lane:" + key];
      setClass(line, holder ? "lane held" : "lane");
      if (holder) line.setAttribute("data-holder", holder); else line.removeAttribute("data-holder");
    }
    for (const [id, dot] of ui.markers) {
      const holder = holds["marker:" + id];
      setClass(dot, holder ? "marker held" : "marker");
      if (holder) dot.setAttribute("data-holder", holder); else dot.removeAttribute("data-holder");
    }
    const seen = new Set();
    for (const r of robots) {
      if (r.map !== selected) continue;
      const at = position(r);
      if (!at) continue;
      seen.add(r.name);
      let dot = ui.robots.get(r.name);
      if (!dot) {
        dot = svg("circle", { class: "robot", r: "0.2", "data-robot": r.name }, svg("title", {}, r.name));
        ui.robots.set(r.name, dot);
        ui.robotLayer.append(dot);
      }
      const [cx, cy] = [round(at[0]), round(at[1])];
      if (dot.getAttribute("cx") !== cx) dot.setAttribute("cx", cx);
      if (dot.getAttribute("cy") !== cy) dot.setAttribute("cy", cy);
      setClass(dot, r.state === "online" ? "robot" : "robot offline");
      const battery = typeof (r.telemetry || {}).battery === "number" ? ", battery " + Math.round(r.telemetry.battery) + "%" : "";
      const title = r.name + " (" + r.state + ") at " + where(r) + battery;
      if (dot.firstChild.textContent !== title) dot.firstChild.textContent = title;
    }
    for (const [name, dot] of ui.robots) {
      if (!seen.has(name)) { dot.remove(); ui.robots.delete(name); }
    }
    const waits = Object.entries((traffic && traffic.waits) || {});
    const key = JSON.stringify(waits);
    if (key !== ui.waitsKey) {
      ui.waitsKey = key;
      ui.waits.replaceChildren(...(waits.length
        ? ["Waiting: ", waits.map(([robot, w], i) => el("span", { dataset: { waiting: robot } }, i ? "; " : "", robot + " for " + w.resource + (w.holder ? " (held by " + w.holder + ")" : "")))]
        : []));
    }
  }

  // ------------------------------------------------------------------------- tables

  function robotsTable(robots, missions) {
    const active = new Map(missions.filter((m) => m.state === "active").map((m) => [m.robot, m]));
    const rows = robots.map((r) => {
      const t = r.telemetry || {};
      const m = active.get(r.name);
      const v = t.vda5050 ? { mode: t.vda5050.operating_mode, errors: t.vda5050.errors || [] } : null;
      return [r.name, r.state, t.status || "", r.map || "-", where(r), typeof t.battery === "number" ? Math.round(t.battery) + "%" : "-", m ? "#" + m.id + " → " + m.goal + (m.objective ? ": " + m.objective : "") : "-", v];
    });
    const key = JSON.stringify(rows);
    if (key === ui.robotsKey) return;
    ui.robotsKey = key;
    ui.robotsBox.replaceChildren(
      el("h3", {}, "Robots (" + robots.length + ")"),
      table(["Name", "State", "Map", "Where", "Battery", "Mission", "VDA 5050"],
        rows.map(([name, state, status, map, at, battery, mission, vda]) => ({
          attrs: { dataset: { robot: name } },
          cells: [el("strong", {}, name), el("span", {}, badge(state), status ? el("small", {}, " " + status) : null), map, at, battery, mission, vehicle(vda)],
        })),
        "No robots yet: corral robot add NAME --map MAP --marker MARKER (or corral sim robots --n 5 --map FILE.yml)."));
  }

  // A VDA 5050 vehicle's operating mode and the errors it reports (its last state).
  function vehicle(vda) {
    if (!vda) return "-";
    const errors = vda.errors.map((e) => el("li", { class: "vda-error", dataset: { errorType: e.errorType, errorLevel: e.errorLevel } },
      e.errorLevel + " " + e.errorType + (e.errorDescription ? ": " + e.errorDescription : "")));
    return el("div", { class: "vda" },
      el("span", { class: "vda-mode", dataset: { mode: vda.mode || "" } }, "mode " + (vda.mode || "?")),
      errors.length ? el("ul", { class: "vda-errors", "aria-label": errors.length + " error" + (errors.length === 1 ? "" : "s") }, errors) : el("small", {}, " no errors"));
  }

  function missionsTable(missions) {
    const rows = missions.map((m) => [m.id, m.robot, m.goal, m.objective || "", m.state, m.progress, (m.route || []).length, m.reason || "", m.created_at, (m.route || []).join(" → "), (m.actions || []).map((a) => [a.type, a.status || "not sent"])]);
    const key = JSON.stringify(rows);
    if (key === ui.missionsKey) return;
    ui.missionsKey = key;
    ui.missionsBox.replaceChildren(
      el("h3", {}, "Missions (" + missions.length + (missions.length >= 50 ? ", newest" : "") + ")"),
      table(["Id", "Robot", "Goal", "Objective", "State", "Progress", "Started"],
        rows.map(([id, robot, goal, objective, state, progress, length, reason, created, route, actions]) => ({
          attrs: { dataset: { mission: String(id), robot } },
          cells: [
            "#" + id, robot, goal, objective || "-",
            el("span", {}, badge(state), reason ? el("small", {}, " " + reason) : null,
              actions.map(([type, status]) => el("small", { class: "mission-action", dataset: { action: type, status } }, " " + type + " " + status))),
            el("span", { title: route ? "route " + route : "" }, length ? progress + "/" + Math.max(0, length - 1) : "-"),
            ago(created),
          ],
        })),
        "No missions yet: corral mission new ROBOT MARKER --objective \"…\"."));
  }

  // ------------------------------------------------------------------------- page

  async function load() {
    if (mapsStale || !maps || Date.now() - mapsAt > MAPS_EVERY) {
      mapsStale = false;
      try {
        maps = await call("/fleet/maps");
      } catch (err) {
        mapsStale = true;
        throw err;
      }
      mapsAt = Date.now();
    }
    if (!maps.some((m) => m.name === selected)) selected = maps.length ? maps[0].name : null;
    const fmap = maps.find((m) => m.name === selected) || null;
    const [robots, missions, traffic] = await Promise.all([
      call("/fleet/robots"),
      call("/fleet/missions?limit=50"),
      fmap ? call("/fleet/maps/" + enc(fmap.name) + "/traffic") : null,
    ]);
    return { fmap, robots, missions, traffic };
  }

  corral.page("fleet", {
    title: "Fleet",
    kinds: ["robot.", "mission.", "traffic.", "map.", "fleet."],
    poll: 500,
    async render(root) {
      if (!inflight) inflight = load().finally(() => { inflight = null; });
      const data = await inflight;
      if (!ui) ui = build();
      const { fmap, robots, missions, traffic } = data;

      const options = maps.map((m) => m.name);
      if (ui.select.dataset.key !== options.join("\n")) {
        ui.select.replaceChildren(...options.map((n) => el("option", { value: n }, n)));
        ui.select.dataset.key = options.join("\n");
      }
      if (selected !== null && ui.select.value !== selected) ui.select.value = selected;
      ui.picker.hidden = !maps.length;

      if (!fmap) {
        if (ui.mapKey !== "") {
          ui.mapKey = "";
          ui.svg = null;
          ui.waitsKey = null;
          ui.waits.replaceChildren();
          ui.mapBox.replaceChildren(el("p", { class: "empty" }, "No maps yet: corral map push FILE.yml (e.g. examples/fleet/grid.yml)."));
        }
      } else {
        const key = JSON.stringify(fmap);
        if (key !== ui.mapKey) { ui.mapKey = key; drawMap(fmap); }
        updateMap(traffic, robots);
      }
      robotsTable(robots, missions);
      missionsTable(missions);
      root.append(ui.root);
    },
  });
})();
