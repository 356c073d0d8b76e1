// Shepherd console: a small single-page app over the console's JSON API.
// Everything that reaches the page is inserted as text (textContent, never
// innerHTML), so names, labels, log lines and task fields can never become
// markup. Live updates arrive as Server-Sent Events; the browser resumes
// them from the last event id after a reconnect.
"use strict";

let csrf = "";
let agentFeed = null;
let taskFeed = null;
let refreshTimer = null;

// ---- DOM helpers (text only) ----

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "onclick") node.addEventListener("click", value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(...nodes) {
  const main = document.getElementById("main");
  main.replaceChildren(...nodes);
}

function flash(text) {
  document.getElementById("flash").textContent = text;
}

function ago(millis) {
  if (!millis) return "";
  const s = Math.max(0, Math.round((Date.now() - millis) / 1000));
  if (s < 90) return s + "s";
  if (s < 5400) return Math.round(s / 60) + "m";
  return Math.round(s / 3600) + "h";
}

function bytes(n) {
  if (n === null || n === undefined) return "-";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return n.toFixed(i ? 1 : 0) + units[i];
}

function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, headers.map(h => el("th", {}, h)))),
    el("tbody", {}, rows));
}

// ---- API ----

async function api(method, path, body) {
  const options = { method, headers: {} };
  if (method === "POST") {
    options.headers["x-csrf-token"] = csrf;
    options.headers["content-type"] = "application/json";
    options.body = JSON.stringify(body || {});
  }
  const response = await fetch("/api" + path, options);
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) { await signIn(); throw new Error("signed out"); }
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

async function act(method, path, body) {
  try {
    const result = await api(method, path, body);
    flash("");
    scheduleRefresh();
    return result;
  } catch (err) {
    flash("Failed: " + err.message);
    return null;
  }
}

// ---- sign-in ----

async function signIn() {
  const state = await (await fetch("/api/session")).json();
  if (state.authenticated) { csrf = state.csrf; return true; }
  const input = el("input", { type: "password", id: "token", placeholder: "API token", autocomplete: "off" });
  const form = el("form", { class: "login" }, el("h1", {}, "Sign in"),
    el("label", { for: "token" }, "The Shepherd API token"), input, el("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const response = await fetch("/api/login", {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ token: input.value }),
    });
    if (!response.ok) { flash("Wrong token"); return; }
    csrf = (await response.json()).csrf;
    startAgentFeed();
    route();
  });
  show(form);
  return false;
}

// ---- live feeds ----

function setConnected(connected) {
  document.getElementById("disconnected").hidden = connected;
  document.getElementById("live").hidden = !connected;
}

function startAgentFeed() {
  if (agentFeed) return;
  agentFeed = new EventSource("/api/live/agents");
  agentFeed.onopen = () => setConnected(true);
  agentFeed.onerror = () => setConnected(false);
  agentFeed.addEventListener("agent", (event) => {
    const data = JSON.parse(event.data);
    if (data.kind !== "hello") scheduleRefresh();
  });
}

function watchTasks(query) {
  if (taskFeed) { taskFeed.close(); taskFeed = null; }
  if (!query) return;
  taskFeed = new EventSource("/api/live/tasks?" + query);
  taskFeed.addEventListener("task", () => scheduleRefresh());
}

// Many events in a burst (twenty agents restarting) cost one refresh.
function scheduleRefresh() {
  if (refreshTimer) return;
  refreshTimer = setTimeout(() => { refreshTimer = null; route(true); }, 150);
}

// ---- views ----

function agentRow(agent) {
  return el("tr", { "data-agent": agent.id },
    el("td", {}, el("a", { href: "#/agents/" + agent.id }, agent.name)),
    el("td", { class: "status-" + agent.status }, agent.status),
    el("td", { class: "generation" }, agent.generation),
    el("td", {}, ago(agent.since)),
    el("td", {}, agent.restarts),
    el("td", {}, agent.pid || "-"),
    el("td", {}, agent.cpu_cores === null ? "-" : agent.cpu_cores.toFixed(2)),
    el("td", {}, bytes(agent.memory_bytes)),
    el("td", {}, Object.entries(agent.labels || {}).map(([k, v]) => k + "=" + v).join(", ")),
    el("td", {}, agent.status_message));
}

async function fleetView() {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const label = params.get("label") || "";
  const agents = await api("GET", "/agents" + (label ? "?label=" + encodeURIComponent(label) : ""));
  const filter = el("input", { id: "label-filter", placeholder: "label key=value", value: label });
  filter.addEventListener("change", () => { location.hash = "#/?label=" + encodeURIComponent(filter.value); });
  show(el("h1", {}, "Fleet"), filter,
    table(["agent", "status", "gen", "since", "restarts", "pid", "cpu", "memory", "labels", "message"],
      agents.map(agentRow)));
}

// Exits and restarts as dots on a line over the timeline's span.
function restartTimeline(events) {
  const marks = events.filter(e => e.kind === "restarted" || e.kind === "exited");
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark restarts");
  svg.setAttribute("width", "400");
  svg.setAttribute("height", "24");
  if (events.length) {
    const start = events[0].time, end = Math.max(Date.now(), start + 1);
    for (const mark of marks) {
      const dot = document.createElementNS("http://www.w3.org/2000/svg", "circle");
      dot.setAttribute("cx", String(4 + 392 * (mark.time - start) / (end - start)));
      dot.setAttribute("cy", "12");
      dot.setAttribute("r", "4");
      dot.setAttribute("fill", mark.kind === "restarted" ? "#b26a00" : "#c62828");
      svg.append(dot);
    }
  }
  return svg;
}

function workflowRows(workflows) {
  return workflows.map(w => el("tr", { "data-workflow": w.id },
    el("td", {}, el("a", { href: "#/workflows/" + w.id }, w.name)),
    el("td", {}, w.enabled ? "enabled" : "disabled"),
    el("td", { class: "runner state-" + (w.runner_state || "none") }, w.runner_state || "-"),
    el("td", {}, w.runner_reason || w.disabled_reason || "")));
}

async function agentView(id) {
  const [agent, events, workflows, logs] = await Promise.all([
    api("GET", "/agents/" + id), api("GET", "/agents/" + id + "/events"),
    api("GET", "/workflows?agent=" + id), api("GET", "/agents/" + id + "/logs?lines=200")]);
  const buttons = ["start", "stop", "restart"].map(action =>
    el("button", { id: action, onclick: () => act("POST", "/agents/" + id + "/" + action) },
      action[0].toUpperCase() + action.slice(1)));
  show(el("h1", {}, agent.name),
    el("dl", {},
      el("dt", {}, "status"), el("dd", { id: "status", class: "status-" + agent.status }, agent.status),
      el("dt", {}, "generation"), el("dd", { id: "generation" }, agent.generation),
      el("dt", {}, "restarts"), el("dd", {}, agent.restarts),
      el("dt", {}, "node"), el("dd", {}, agent.node),
      el("dt", {}, "pid"), el("dd", {}, agent.pid || "-"),
      el("dt", {}, "memory"), el("dd", {}, bytes(agent.memory_bytes)),
      el("dt", {}, "message"), el("dd", {}, agent.status_message)),
    el("div", {}, buttons),
    el("h2", {}, "Workflows"), table(["workflow", "enabled", "runner", "reason"], workflowRows(workflows)),
    el("h2", {}, "Restarts"), restartTimeline(events),
    el("h2", {}, "Events"),
    table(["seq", "time", "gen", "event", "detail"], events.slice().reverse().slice(0, 50).map(e =>
      el("tr", {}, el("td", {}, e.sequence), el("td", {}, new Date(e.time).toLocaleTimeString()),
        el("td", {}, e.generation), el("td", {}, e.kind), el("td", {}, e.detail)))),
    el("h2", {}, "Log (stdout)"), el("pre", { class: "logs", id: "logs" }, logs.join("\n")));
}

async function workflowsView() {
  const [workflows, limits] = await Promise.all([api("GET", "/workflows"), api("GET", "/limits")]);
  const keys = limits.keys.map(k => el("tr", { "data-key": k.name },
    el("td", {}, k.name), el("td", {}, k.running + "/" + k.max_running), el("td", {}, String(k.waiting)), el("td", {}, k.rate)));
  const budgets = limits.budgets.map(b => el("tr", { "data-budget": b.subject },
    el("td", {}, b.subject), el("td", {}, b.per), el("td", {}, b.used), el("td", {}, b.tokens),
    el("td", {}, b.resets || ""), el("td", {}, b.spent)));
  show(el("h1", {}, "Workflows"), table(["workflow", "enabled", "runner", "reason"], workflowRows(workflows)),
    el("h2", {}, "Concurrency keys"), el("div", { id: "keys" }, table(["key", "running", "waiting", "rate"], keys)),
    el("h2", {}, "Budgets"), el("div", { id: "budgets" }, table(["whose", "per", "used", "tokens", "resets", "spent"], budgets)));
}

// Tasks finished per 10 s over the last 5 minutes.
function sparkline(tasks) {
  const buckets = new Array(30).fill(0);
  const now = Date.now();
  for (const task of tasks) {
    if (!["succeeded", "failed", "cancelled"].includes(task.state)) continue;
    const age = Math.floor((now - task.updated) / 10000);
    if (age >= 0 && age < 30) buckets[29 - age]++;
  }
  const peak = Math.max(1, ...buckets);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark rate");
  svg.setAttribute("width", "300");
  svg.setAttribute("height", "40");
  const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
  line.setAttribute("fill", "none");
  line.setAttribute("stroke", "#2e7d32");
  line.setAttribute("points", buckets.map((n, i) => (i * 10 + 5) + "," + (36 - 32 * n / peak)).join(" "));
  svg.append(line);
  const title = document.createElementNS("http://www.w3.org/2000/svg", "title");
  title.textContent = "tasks finished per 10 s, last 5 minutes (peak " + peak / 10 + "/s)";
  svg.append(title);
  return svg;
}

async function workflowView(id) {
  const [workflow, tasks] = await Promise.all([api("GET", "/workflows/" + id), api("GET", "/workflows/" + id + "/tasks")]);
  const title = el("input", { id: "trigger-title", placeholder: "task title" });
  const trigger = el("button", { id: "trigger", onclick: () => act("POST", "/workflows/" + id + "/trigger", { title: title.value }) }, "Trigger");
  const toggle = el("button", { id: "toggle", onclick: () => act("POST", "/workflows/" + id + "/" + (workflow.enabled ? "disable" : "enable")) },
    workflow.enabled ? "Disable" : "Enable");
  show(el("h1", {}, workflow.name),
    el("dl", {},
      el("dt", {}, "runner"), el("dd", { id: "runner", class: "state-" + workflow.runner_state }, workflow.runner_state || "-"),
      el("dt", {}, "reason"), el("dd", {}, workflow.runner_reason || workflow.disabled_reason || ""),
      el("dt", {}, "why"), el("dd", { id: "verdict" }, workflow.verdict),
      el("dt", {}, "lease"), el("dd", { id: "lease" }, workflow.lease_holder ? workflow.lease_holder + " (term " + workflow.lease_term + ")" : "-"),
      el("dt", {}, "queue"), el("dd", { id: "queue" }, workflow.queue_depth),
      el("dt", {}, "last outcome"), el("dd", {}, tasks.length ? tasks[0].state : "-"),
      el("dt", {}, "tasks/s"), el("dd", {}, sparkline(tasks))),
    el("div", {}, title, trigger, toggle),
    el("h2", {}, "Tasks"),
    table(["task", "title", "state", "updated"], tasks.map(t => el("tr", { "data-task": t.id },
      el("td", {}, el("a", { href: "#/tasks/" + t.id }, t.id.slice(0, 8))),
      el("td", { class: "title" }, t.title),
      el("td", { class: "state state-" + t.state }, t.state),
      el("td", {}, ago(t.updated))))));
}

async function taskView(id) {
  const task = await api("GET", "/tasks/" + id);
  const cancel = el("button", { id: "cancel", onclick: () => act("POST", "/tasks/" + id + "/cancel") }, "Cancel");
  show(el("h1", {}, task.title || task.id),
    el("dl", {},
      el("dt", {}, "state"), el("dd", { id: "task-state", class: "state-" + task.state }, task.state),
      el("dt", {}, "progress"), el("dd", {}, task.progress ? task.progress.message + " " + Math.round(task.progress.fraction * 100) + "%" : "-"),
      el("dt", {}, "error"), el("dd", {}, task.last_error)),
    cancel,
    el("h2", {}, "Attempts"),
    table(["attempt", "outcome", "error"], task.attempts.map(a =>
      el("tr", {}, el("td", {}, a.attempt), el("td", {}, a.outcome), el("td", {}, a.error)))),
    el("h2", {}, "Output"), el("pre", { class: "logs", id: "output" }, task.output || (task.progress && task.progress.output) || ""));
}

// The agent page's log tail follows the file (logs are not events).
let logTimer = null;

function followLogs(id) {
  if (logTimer) { clearInterval(logTimer); logTimer = null; }
  if (!id) return;
  logTimer = setInterval(async () => {
    const pre = document.getElementById("logs");
    if (!pre) return;
    try {
      const lines = await api("GET", "/agents/" + id + "/logs?lines=200");
      const text = lines.join("\n");
      if (pre.textContent !== text) pre.textContent = text;
    } catch (err) { /* the badge and the next refresh tell */ }
  }, 2000);
}

// ---- audit log ----

async function auditView() {
  const entries = await api("GET", "/audit");
  show(el("h1", {}, "Audit log"),
    el("p", {}, "Every call that changed (or tried to change) something, newest first."),
    table(["when", "service", "who", "role", "call", "target", "outcome", "from"],
      entries.map(e => el("tr", { class: "audit outcome-" + (e.outcome === "OK" ? "ok" : "refused") },
        el("td", { title: e.time ? new Date(e.time).toISOString() : "" }, ago(e.time)),
        el("td", {}, e.service), el("td", {}, e.who), el("td", {}, e.role),
        el("td", {}, e.rpc), el("td", {}, e.target), el("td", {}, e.outcome),
        el("td", {}, e.peer)))));
}

// ---- routing ----

let currentRoute = "";

async function route(refreshOnly) {
  const hash = location.hash.split("?")[0] || "#/";
  const parts = hash.slice(2).split("/");
  if (!refreshOnly || hash !== currentRoute) {
    currentRoute = hash;
    if (parts[0] === "workflows" && parts[1]) watchTasks("workflow=" + encodeURIComponent(parts[1]));
    else if (parts[0] === "tasks" && parts[1]) watchTasks("task=" + encodeURIComponent(parts[1]));
    else watchTasks(null);
    followLogs(parts[0] === "agents" ? parts[1] : null);
  }
  try {
    if (parts[0] === "agents" && parts[1]) await agentView(parts[1]);
    else if (parts[0] === "workflows" && parts[1]) await workflowView(parts[1]);
    else if (parts[0] === "workflows") await workflowsView();
    else if (parts[0] === "tasks" && parts[1]) await taskView(parts[1]);
    else if (parts[0] === "audit") await auditView();
    else await fleetView();
  } catch (err) {
    if (err.message !== "signed out") flash("Failed: " + err.message);
  }
}

window.addEventListener("hashchange", () => route(false));
window.addEventListener("DOMContentLoaded", async () => {
  if (await signIn()) {
    startAgentFeed();
    route(false);
  }
});
