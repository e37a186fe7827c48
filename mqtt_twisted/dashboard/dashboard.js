// The mqtt-twisted dashboard: plain JavaScript, no build step, nothing from a CDN.
// Data from the admin API (../admin/stats, ../admin/clients, ../admin/client) and its
// Server-Sent Events (../admin/events: one "stats" event a second).  Everything a
// client chose (client ids, topics, peers) goes into the page as text, never as HTML.
"use strict";

// The admin API beside /dashboard/, without any user:password@ the page's URL carries
// (fetch refuses such URLs; the browser sends the credentials it was given by itself).
const API = (() => {
  const url = new URL("../admin/", window.location.href);
  url.username = "";
  url.password = "";
  return url.href;
})();
const HISTORY = 600;  // points, one a second
let history = [];
let search = "";
let clientsTimer = null;

const $ = (id) => document.getElementById(id);
const text = (id, value) => { $(id).textContent = value; };
const number = (n) => (n >= 100 ? Math.round(n) : Math.round(n * 10) / 10).toLocaleString("en");

function status(state, detail) {
  const el = $("status");
  el.textContent = detail || state;
  el.className = "status " + state;
}

function message(note) { text("message", note); }

async function api(path, options) {
  const answer = await fetch(API + path, { credentials: "same-origin", ...options });
  if (!answer.ok) {
    let error = answer.statusText;
    try { error = (await answer.json()).error || error; } catch (e) { /* not JSON */ }
    throw new Error(answer.status + " " + error);
  }
  return answer.status === 204 ? null : answer.json();
}

function duration(seconds) {
  seconds = Math.floor(seconds);
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
  const m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : m ? `${m}m ${s}s` : `${s}s`;
}

function showStats(stats) {
  text("version", "version " + stats.version);
  text("connections", stats.connections.toLocaleString("en"));
  text("subscriptions", stats.subscriptions.toLocaleString("en"));
  text("queued", `${stats.queued.toLocaleString("en")} / ${stats.inflight.toLocaleString("en")}`);
  text("uptime", duration(stats.uptime_seconds));
  const last = history[history.length - 1];
  text("rate-in", last ? number(last.in) : "0");
  text("rate-out", last ? number(last.out) : "0");
  showTopTopics(stats.top_topics);
  drawChart();
}

function showTopTopics(topics) {
  const body = $("top-topics");
  body.replaceChildren(...topics.map((t) => {
    const row = document.createElement("tr");
    const topic = document.createElement("td");
    topic.textContent = t.topic;
    const count = document.createElement("td");
    count.className = "num";
    count.textContent = t.messages.toLocaleString("en");
    row.append(topic, count);
    return row;
  }));
}

function drawChart() {
  const width = 600, height = 160, top = 16;
  const points = history.slice(-HISTORY);
  const max = Math.max(1, ...points.map((p) => Math.max(p.in, p.out)));
  const first = points.length ? points[0].time : 0;
  const span = Math.max(60, points.length ? points[points.length - 1].time - first : 0);
  const line = (key) => points.map((p) =>
    `${((p.time - first) / span * width).toFixed(1)},` +
    `${(height - p[key] / max * (height - top)).toFixed(1)}`).join(" ");
  $("line-in").setAttribute("points", line("in"));
  $("line-out").setAttribute("points", line("out"));
  text("chart-max", `(top of the chart: ${number(max)}/s)`);
  text("chart-span", `the last ${Math.max(1, Math.round(span / 60))} min`);
}

async function loadClients() {
  try {
    const page = await api("clients?limit=200&search=" + encodeURIComponent(search));
    showClients(page.clients);
    $("clients-more").hidden = !page.next;
  } catch (e) {
    message("Clients: " + e.message);
  }
}

function cell(value, className) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "–" : String(value);
  if (className) td.className = className;
  return td;
}

function showClients(clients) {
  $("clients").replaceChildren(...clients.map((c) => {
    const row = document.createElement("tr");
    row.dataset.client = c.client_id;
    if (!c.online) row.className = "offline";
    const kick = document.createElement("button");
    kick.className = "kick";
    kick.textContent = c.online ? "Kick" : "Remove";
    kick.title = c.online ? "Disconnect this client" : "Delete this offline session";
    kick.addEventListener("click", () => kickClient(c.client_id, !c.online));
    const action = document.createElement("td");
    action.append(kick);
    row.append(cell(c.client_id, "client-id"), cell(c.adapter), cell(c.protocol),
               cell(c.peer), cell(c.subscriptions, "num"), cell(c.queued, "num"),
               cell(c.inflight, "num"), action);
    return row;
  }));
}

async function kickClient(clientId, remove) {
  try {
    await api("client?client=" + encodeURIComponent(clientId) + (remove ? "&remove=1" : ""),
              { method: "DELETE" });
    message(`${remove ? "Removed" : "Kicked"} ${clientId}`);
  } catch (e) {
    message(`Could not kick ${clientId}: ${e.message}`);
  }
  loadClients();
}

function listen() {
  const events = new EventSource(API + "events");
  events.addEventListener("open", () => status("live"));
  events.addEventListener("stats", (event) => {
    const stats = JSON.parse(event.data);
    if (stats.point && (!history.length || stats.point.time > history[history.length - 1].time)) {
      history.push(stats.point);
      if (history.length > HISTORY) history = history.slice(-HISTORY);
    }
    showStats(stats);
  });
  events.addEventListener("error", () => status("error", "reconnecting"));
}

async function start() {
  $("search").addEventListener("input", (event) => {
    search = event.target.value;
    clearTimeout(clientsTimer);
    clientsTimer = setTimeout(loadClients, 150);
  });
  try {
    const stats = await api("stats");
    history = stats.history;
    showStats(stats);
  } catch (e) {
    status("error", e.message);
    return;
  }
  await loadClients();
  setInterval(loadClients, 2000);
  listen();
}

start();
