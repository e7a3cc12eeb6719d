"use strict";
// Plain fetch calls against the public API, as any front end would make them; nothing else.
const COLOURS = { quoted: "#f0ad4e", selling: "#3b7dd8", sold: "#3c9d5d" };
const WIDTH = 900, LEFT = 10, RIGHT = 890, BAND_TOP = 20, BAND_HEIGHT = 50;
const $ = (id) => document.getElementById(id);
const SVG_NS = "http://www.w3.org/2000/svg";
let shown = null; // { id, start, end } of the timeline on screen
let live = null; // the EventSource of the vehicle on screen

async function problemText(response) {
  try {
    const problem = await response.json();
    return problem.detail || problem.title || response.statusText;
  } catch {
    return response.status + " " + response.statusText;
  }
}

// Every page of the vehicle's history (a page holds up to 1000 changes). `fresh`: after a
// change, ask past the browser's own cache (its copy may be up to max-age old), revalidating.
async function history(id, fresh = false) {
  let changes = [], after = null, vehicle = null;
  for (let page = 0; page < 20; page++) {
    const query = new URLSearchParams({ limit: "1000" });
    if (after) query.set("after", after);
    const response = await fetch(`/vehicles/${encodeURIComponent(id)}/history?${query}`, fresh ? { cache: "no-cache" } : {});
    if (!response.ok) throw new Error(await problemText(response));
    const body = await response.json();
    vehicle = body.vehicle;
    changes = changes.concat(body.changes);
    if (!body.next) break;
    after = body.next;
  }
  return { vehicle, changes };
}

function svgElement(name, attributes, text) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (text !== undefined) element.textContent = text;
  return element;
}

function draw(id, vehicle, changes) {
  const svg = $("timeline");
  svg.replaceChildren();
  $("vehicle").textContent = `Vehicle ${vehicle.id}: ${vehicle.make} ${vehicle.model}, ${changes.length} state change${changes.length === 1 ? "" : "s"}`;
  const legend = $("legend");
  legend.replaceChildren();
  for (const state of new Set(changes.map((c) => c.state))) {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = COLOURS[state] || "#999";
    item.append(swatch, state);
    legend.append(item);
  }
  if (changes.length === 0) {
    svg.append(svgElement("text", { x: LEFT, y: 60 }, "No state recorded yet."));
    shown = null;
    return;
  }
  const first = Date.parse(changes[0].at);
  const last = Date.parse(changes[changes.length - 1].at);
  // The current state has no end: it is drawn a fifth of the span (at least an hour) past its start.
  const end = last + Math.max((last - first) / 5, 3600 * 1000);
  const x = (t) => LEFT + ((t - first) / (end - first)) * (RIGHT - LEFT);
  changes.forEach((change, i) => {
    const from = Date.parse(change.at);
    const until = change.until ? Date.parse(change.until) : end;
    const band = svgElement("rect", {
      x: x(from), y: BAND_TOP, width: Math.max(x(until) - x(from), 1), height: BAND_HEIGHT,
      fill: COLOURS[change.state] || "#999", "data-state": change.state, "data-at": change.at,
    });
    band.append(svgElement("title", {}, `${change.state} from ${change.at} until ${change.until || "now"}`));
    svg.append(band);
    if (x(until) - x(from) > 40) {
      svg.append(svgElement("text", { x: x(from) + 4, y: BAND_TOP + 30, fill: "#fff", "font-weight": "600" }, change.state));
    }
    // The instant of each change under the band, staggered so neighbours stay readable.
    svg.append(svgElement("line", { x1: x(from), x2: x(from), y1: BAND_TOP, y2: BAND_TOP + BAND_HEIGHT + 8 + (i % 2) * 14, stroke: "#333" }));
    svg.append(svgElement("text", { x: x(from) + 2, y: BAND_TOP + BAND_HEIGHT + 18 + (i % 2) * 14 }, change.at));
  });
  shown = { id, start: first, end, x };
}

async function lookup(id, instant) {
  const answer = $("answer");
  answer.className = "";
  answer.textContent = "…";
  const response = await fetch(`/vehicles/${encodeURIComponent(id)}/timestamp/${encodeURIComponent(instant)}`);
  const cache = response.headers.get("X-Cache") || "-";
  if (response.ok) {
    const body = await response.json();
    answer.dataset.state = body.state;
    answer.textContent = `At ${body.timestamp} vehicle ${body.vehicle.id} was ${body.state} (since ${body.stateSince}, ${body.until ? `until ${body.until}` : "still now"}). X-Cache: ${cache}`;
  } else {
    answer.className = "error";
    answer.dataset.state = "";
    answer.textContent = `${response.status}: ${await problemText(response)} (X-Cache: ${cache})`;
  }
  answer.dataset.cache = cache;
  const marker = $("marker");
  if (marker) marker.remove();
  if (shown && shown.id === id) {
    const t = Date.parse(instant);
    if (!Number.isNaN(t) && t >= shown.start && t <= shown.end) {
      $("timeline").append(svgElement("line", { id: "marker", x1: shown.x(t), x2: shown.x(t), y1: 8, y2: BAND_TOP + BAND_HEIGHT + 6, stroke: "#c0392b", "stroke-width": 2 }));
    }
  }
}

// Live: the vehicle's changes as the service streams them (Server-Sent Events). Each change
// redraws the timeline; the EventSource reconnects by itself (to another replica when this one
// stops) with the last event's id, and the service replays what was missed.
function follow(id) {
  if (live) live.close();
  const status = $("live");
  status.dataset.ids = "";
  status.textContent = "";
  live = new EventSource(`/vehicles/${encodeURIComponent(id)}/changes`);
  live.addEventListener("snapshot", async (event) => {
    status.textContent = `Live: watching vehicle ${id}.`;
    // Back after longer than the feed keeps: what changed meanwhile is in the history.
    if (JSON.parse(event.data).reason === "expired" && shown && String(shown.id) === String(id)) {
      const { vehicle, changes } = await history(id, true);
      draw(id, vehicle, changes);
    }
  });
  live.addEventListener("change", async (event) => {
    const change = JSON.parse(event.data);
    status.dataset.ids = status.dataset.ids ? `${status.dataset.ids},${event.lastEventId}` : event.lastEventId;
    const what = change.change.kind === "state_changed" ? `${change.change.state} at ${change.change.timestamp}` : "registered";
    status.textContent = `Live: vehicle ${id} changed (${what}); it is now ${change.state || "without a state"}.`;
    if (shown && String(shown.id) === String(id)) {
      const { vehicle, changes } = await history(id, true);
      draw(id, vehicle, changes);
    }
  });
  live.addEventListener("error", () => {
    // A replica without the change feed answers 503: stop asking. Otherwise the browser
    // reconnects by itself.
    if (live && live.readyState === EventSource.CLOSED) status.textContent = "Live updates unavailable.";
  });
}

// A vehicle's timeline drawn, and followed live.
async function openVehicle(id) {
  try {
    const { vehicle, changes } = await history(id);
    draw(id, vehicle, changes);
    $("answer").textContent = "";
    follow(id);
  } catch (error) {
    $("timeline").replaceChildren();
    $("vehicle").textContent = "";
    $("legend").replaceChildren();
    shown = null;
    $("answer").className = "error";
    $("answer").textContent = error.message;
    return false;
  }
  return true;
}

$("pick").addEventListener("submit", (event) => {
  event.preventDefault();
  openVehicle($("id").value.trim());
});

$("timeline").addEventListener("click", (event) => {
  if (!shown) return;
  const box = event.currentTarget.getBoundingClientRect();
  const fraction = (((event.clientX - box.left) / box.width) * WIDTH - LEFT) / (RIGHT - LEFT);
  const t = shown.start + Math.min(Math.max(fraction, 0), 1) * (shown.end - shown.start);
  // Whole seconds, as a person would type it.
  const instant = new Date(Math.round(t / 1000) * 1000).toISOString().replace(".000Z", "Z");
  $("instant").value = instant;
  lookup(shown.id, instant);
});

$("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  const instant = $("instant").value.trim();
  if (instant) lookup($("id").value.trim(), instant);
});

// The state now, by the server's clock: no clock of the browser's is needed.
$("now").addEventListener("click", () => {
  $("instant").value = "now";
  lookup($("id").value.trim(), "now");
});

// The fleet: stacked counts per state at each step of a window (one request for the series).
const FLEET_TOP = 10, FLEET_HEIGHT = 170;

function fleetText(point) {
  const states = Object.entries(point.states).map(([state, n]) => `${n} ${state}`).join(", ");
  return `At ${point.at}: ${states}; ${point.total} in all.`;
}

function drawFleet(series) {
  const svg = $("fleet");
  svg.replaceChildren();
  const states = [...new Set(series.points.flatMap((p) => Object.keys(p.states)))];
  const legend = $("fleet-legend");
  legend.replaceChildren();
  for (const state of states) {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = COLOURS[state] || "#999";
    item.append(swatch, state);
    legend.append(item);
  }
  const most = Math.max(1, ...series.points.map((p) => p.total));
  const step = (RIGHT - LEFT) / series.points.length;
  series.points.forEach((point, i) => {
    let y = FLEET_TOP + FLEET_HEIGHT;
    for (const state of states) {
      const n = point.states[state] || 0;
      const height = (n / most) * FLEET_HEIGHT;
      y -= height;
      const bar = svgElement("rect", {
        x: LEFT + i * step + 1, y, width: Math.max(step - 2, 1), height: Math.max(height, 0),
        fill: COLOURS[state] || "#999", "data-point": point.at, "data-fleet-state": state, "data-count": n,
      });
      bar.append(svgElement("title", {}, `${n} ${state} at ${point.at}`));
      bar.addEventListener("click", () => {
        const shown = $("fleet-point");
        shown.className = "";
        shown.dataset.at = point.at;
        shown.textContent = fleetText(point);
        listFleet(state, point.at, null);
      });
      svg.append(bar);
    }
    if (i % Math.ceil(series.points.length / 6) === 0) {
      svg.append(svgElement("text", { x: LEFT + i * step + 1, y: FLEET_TOP + FLEET_HEIGHT + 16 }, point.at));
    }
  });
}

// The vehicles in a state at an instant, a page at a time (the page's `next` asks for more);
// each opens its own timeline at that instant.
const FLEET_PAGE = 50;

async function listFleet(state, at, after) {
  const list = $("fleet-vehicles");
  const more = $("fleet-more");
  const query = new URLSearchParams({ state, at, limit: String(FLEET_PAGE) });
  if (after) query.set("after", after);
  const response = await fetch(`/fleet/vehicles?${query}`);
  if (!after) {
    list.replaceChildren();
    list.dataset.state = state;
    list.dataset.at = at;
  }
  if (!response.ok) {
    list.className = "error";
    list.textContent = `${response.status}: ${await problemText(response)}`;
    more.hidden = true;
    return;
  }
  list.className = "";
  const page = await response.json();
  const caption = $("fleet-list-caption");
  for (const vehicle of page.vehicles) {
    const item = document.createElement("li");
    const open = document.createElement("button");
    open.type = "button";
    open.dataset.vehicleId = vehicle.id;
    const name = vehicle.make ? `${vehicle.make} ${vehicle.model}` : "not registered";
    open.textContent = `${vehicle.id}: ${name}, ${page.state} since ${vehicle.since ?? "the beginning"}`;
    open.addEventListener("click", async () => {
      const id = String(vehicle.id);
      $("id").value = id;
      $("instant").value = page.at;
      if (await openVehicle(id)) await lookup(id, page.at);
    });
    item.append(open);
    list.append(item);
  }
  list.dataset.count = String(list.children.length);
  caption.textContent = `${list.children.length} ${page.state} at ${page.at}${page.next ? ", more to come" : ""}:`;
  more.hidden = !page.next;
  more.onclick = () => listFleet(state, page.at, page.next);
}

$("fleet-pick").addEventListener("submit", async (event) => {
  event.preventDefault();
  const query = new URLSearchParams({ from: $("fleet-from").value.trim(), every: $("fleet-every").value.trim() });
  if ($("fleet-to").value.trim()) query.set("to", $("fleet-to").value.trim());
  const shown = $("fleet-point");
  const response = await fetch(`/fleet/states/series?${query}`);
  if (!response.ok) {
    $("fleet").replaceChildren();
    $("fleet-legend").replaceChildren();
    shown.className = "error";
    shown.dataset.at = "";
    shown.textContent = `${response.status}: ${await problemText(response)}`;
    return;
  }
  const series = await response.json();
  drawFleet(series);
  shown.className = "";
  shown.dataset.at = "";
  shown.textContent = `${series.points.length} points, every ${series.every}.`;
});

// The vehicle filled in is drawn at once, so the page opens on a timeline to click; and the fleet.
$("pick").requestSubmit();
$("fleet-pick").requestSubmit();
