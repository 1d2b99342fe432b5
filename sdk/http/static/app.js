// Tether dashboard: inbox of pending approvals, runs list, run page. Plain JS, no build step.
// Data comes from the HTTP API with the bearer token kept in localStorage; live updates come
// from /api/stream (server-sent events read with fetch, so the token travels in a header),
// with polling every second while the stream is down. Buttons follow the caller's rights
// from /api/me (the server refuses what they would not allow anyway). Data is only ever put
// in the page as text (textContent, attributes), never as HTML.
"use strict";

const TOKEN_KEY = "tether.token";
const page = document.body.dataset.page;
const $ = (id) => document.getElementById(id);

// -- token ---------------------------------------------------------------------------------

// Where the token in use came from, to say what to do when the API refuses it.
let tokenSource = null; // "link", "saved" or "typed"

(function takeTokenFromFragment() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    let value = match[1];
    try { value = decodeURIComponent(value); } catch (_) { /* keep it as it is */ }
    localStorage.setItem(TOKEN_KEY, value);
    tokenSource = "link";
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

function token() { return localStorage.getItem(TOKEN_KEY) || ""; }

if (!tokenSource && token()) tokenSource = "saved";

const REFUSED = {
  link: "This link's token is not valid any more: ask for a new link or paste a token.",
  saved: "The saved token is not valid any more: ask for a new link or paste a token.",
  typed: "That token is not valid: check it, ask for a new one or a new link.",
};

// The API answered 401 to `sent`: forget that token (unless another one replaced it in the
// meantime) and show the sign-in form with the reason.
function tokenRefused(sent, message) {
  if (sent !== token()) return;
  const reason = REFUSED[tokenSource] || REFUSED.saved;
  localStorage.removeItem(TOKEN_KEY);
  showSignIn(`${reason} (${message || "token refused"})`);
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, options = {}) {
  const sent = token();
  const headers = { Authorization: `Bearer ${sent}` };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (!response.ok) {
    const message = data && data.error ? data.error.message : `HTTP ${response.status}`;
    if (response.status === 401) tokenRefused(sent, message);
    throw new ApiError(response.status, message);
  }
  return data;
}

function showSignIn(message) {
  stopLive();
  setLive("signed out");
  $("content").hidden = true;
  $("signin").hidden = false;
  $("sign-out").hidden = true;
  $("who").textContent = "";
  $("signin-error").textContent = message || "";
  $("token").focus();
}

$("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem(TOKEN_KEY, $("token").value.trim());
  tokenSource = "typed";
  $("token").value = "";
  $("signin-error").textContent = "";
  start();
});

$("sign-out").addEventListener("click", () => {
  localStorage.removeItem(TOKEN_KEY);
  showSignIn("");
});

// -- rights: what the caller's token allows (from /api/me) ----------------------------------

let me = null;

// A glob pattern of event keys as the server matches it (Python's fnmatchcase): * any
// characters, ? one, [seq] and [!seq] one of (not of) seq.
function globRegExp(pattern) {
  let out = "";
  let i = 0;
  while (i < pattern.length) {
    const c = pattern[i++];
    if (c === "*") out += "[\\s\\S]*";
    else if (c === "?") out += "[\\s\\S]";
    else if (c === "[") {
      let j = i;
      if (pattern[j] === "!") j++;
      if (pattern[j] === "]") j++;
      while (j < pattern.length && pattern[j] !== "]") j++;
      if (j >= pattern.length) { out += "\\["; continue; }
      let set = pattern.slice(i, j).replace(/\\/g, "\\\\");
      i = j + 1;
      if (!set) { out += "(?!)"; continue; }
      if (set === "!") { out += "[\\s\\S]"; continue; }
      if (set[0] === "!") set = `^${set.slice(1)}`;
      else if (set[0] === "^") set = `\\${set}`;
      out += `[${set}]`;
    } else out += c.replace(/[.*+?^${}()|[\]\\/-]/g, "\\$&");
  }
  return new RegExp(`^(?:${out})$`);
}

function mayDecide(eventKey) {
  if (!me) return false;
  return me.keys.some((pattern) => {
    try { return globRegExp(pattern).test(eventKey); } catch (_) { return false; }
  });
}

// Why the caller may not approve or reject a wait on `eventKey`.
function noRightsReason(eventKey) {
  const who = me ? me.name : "this token";
  if (!me || me.keys.length === 0) return `Read-only: your token (${who}) may not approve or reject.`;
  return `Your token (${who}) may decide only keys ${me.keys.join(", ")}, not ${eventKey}.`;
}

// -- small helpers -------------------------------------------------------------------------

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function relative(epochSeconds) {
  if (epochSeconds === null || epochSeconds === undefined) return "";
  const delta = epochSeconds - Date.now() / 1000;
  const abs = Math.abs(delta);
  if (abs < 5) return "just now";
  let text;
  if (abs < 45) text = `${Math.round(abs)} s`;
  else if (abs < 2700) text = `${Math.round(abs / 60)} min`;
  else if (abs < 129600) text = `${Math.round(abs / 3600)} h`;
  else text = `${Math.round(abs / 86400)} d`;
  return delta < 0 ? `${text} ago` : `in ${text}`;
}

function timeEl(epochSeconds, mode = "relative") {
  if (epochSeconds === null || epochSeconds === undefined) return el("span", { class: "muted", text: "—" });
  const date = new Date(epochSeconds * 1000);
  const node = el("time", { datetime: date.toISOString(), title: date.toLocaleString() });
  node.dataset.epoch = String(epochSeconds);
  node.dataset.mode = mode;
  node.textContent = mode === "absolute" ? date.toLocaleString() : relative(epochSeconds);
  return node;
}

function refreshTimes() {
  for (const node of document.querySelectorAll("time[data-mode='relative']")) {
    node.textContent = relative(Number(node.dataset.epoch));
  }
}

function pretty(value) { return JSON.stringify(value, null, 2); }

function badge(status) { return el("span", { class: `badge ${status}`, text: status }); }

function say(message, kind = "") {
  const node = $("status");
  node.className = kind;
  node.textContent = message;
}

function shortId(runId) { return runId.length > 12 ? `${runId.slice(0, 12)}…` : runId; }

function runLink(runId) { return el("a", { href: `/runs/${encodeURIComponent(runId)}`, text: runId }); }

async function fillTaskFilter(select) {
  const overview = await api("/api/overview");
  const current = select.value;
  const have = new Set([...select.options].map((o) => o.value));
  for (const task of overview.tasks) {
    if (!have.has(task)) select.append(el("option", { value: task, text: task }));
  }
  select.value = current;
  return overview;
}

// -- the decision form, shared by the inbox and the run page ---------------------------------

function proposedAction(wait) {
  const action = wait.proposed_action;
  const box = el("div", { class: "action" }, el("h3", { text: "Proposed action" }));
  if (!action) {
    box.append(el("p", { class: "muted", text: "The task recorded no step or description before this wait." }));
    return box;
  }
  if (action.source === "wait") {
    if (action.description) box.append(el("p", { class: "description", text: action.description }));
    if (action.details) box.append(el("pre", { class: "details", text: pretty(action.details) }));
  } else {
    box.append(el("p", { class: "muted" }, "Output of step ", el("code", { text: action.step }), ":"));
    box.append(el("pre", { class: "details", text: pretty(action.output) }));
  }
  return box;
}

function conventionWarning(wait) {
  if (wait.conventional) return null;
  const expected = `input.runId == '${wait.run_id}'`;
  const extra = wait.other_conditions > 0
    ? ` It also needs ${wait.other_conditions} more condition(s) before the run resumes.` : "";
  return el("p", { class: "warn", role: "note" },
    "This wait's condition is ", el("code", { text: wait.expression || "(none: any event on the key)" }),
    ", not ", el("code", { text: expected }),
    ". Approve and Reject push that convention's payload and may not match it; if they are " +
    "refused, push a matching event to ", el("code", { text: wait.event_key }),
    " (POST /api/events/… or tether events push)." + extra);
}

function decisionForm(wait, onDone) {
  const id = wait.run_id;
  const allowed = mayDecide(wait.event_key);
  const why = allowed ? null : noRightsReason(wait.event_key);
  const describedBy = allowed ? `title-${id}` : `title-${id} rights-${id}`;
  const reason = el("input", { id: `reason-${id}`, type: "text", maxlength: "2000", name: "reason",
    disabled: !allowed });
  const result = el("p", { class: "result", role: "status", "aria-live": "polite" });
  const approve = el("button", { type: "button", class: "approve", text: "Approve",
    "aria-describedby": describedBy, disabled: !allowed, title: why });
  const reject = el("button", { type: "button", class: "reject", text: "Reject",
    "aria-describedby": describedBy, disabled: !allowed, title: why });
  async function send(decision) {
    approve.disabled = true;
    reject.disabled = true;
    result.className = "result";
    result.textContent = decision === "approve" ? "Approving…" : "Rejecting…";
    try {
      const body = reason.value.trim() ? { reason: reason.value.trim() } : {};
      const done = await api(`/api/runs/${encodeURIComponent(id)}/${decision}`, { method: "POST", body });
      result.className = "result ok";
      result.textContent = `${decision === "approve" ? "Approved" : "Rejected"} by ${done.approver}; the run resumes.`;
      if (onDone) onDone(decision, done);
    } catch (error) {
      result.className = "result error";
      result.textContent = `Not sent: ${error.message}`;
      approve.disabled = false;
      reject.disabled = false;
    }
  }
  approve.addEventListener("click", () => send("approve"));
  reject.addEventListener("click", () => send("reject"));
  reason.addEventListener("keydown", (event) => { if (event.key === "Enter") event.preventDefault(); });
  const group = el("div", { class: "decide", role: "group", "aria-label": `Decision for run ${id}` },
    el("div", { class: "field" }, el("label", { for: `reason-${id}`, text: "Reason (optional)" }), reason),
    approve, reject);
  const rights = allowed ? null : el("p", { class: "no-rights", id: `rights-${id}`, text: why });
  return el("div", {}, group, rights, result);
}

// "approved by alice", "rejected", "expired"
function decisionText(decision) {
  if (!decision) return "";
  return decision.outcome + (decision.by ? ` by ${decision.by}` : "");
}

function decisionEl(decision, withTime = false) {
  if (!decision) return el("span", { class: "muted", text: "—" });
  const when = new Date(decision.at * 1000).toLocaleString();
  const node = el("span", { class: "outcome" },
    el("span", { class: `verdict ${decision.outcome}`, text: decisionText(decision) }));
  if (decision.reason) {
    node.append(el("span", { class: "reason", title: decision.reason, text: `“${decision.reason}”` }));
  }
  if (withTime) node.append(el("span", { class: "when" }, timeEl(decision.at, "absolute")));
  else node.title = when;
  return node;
}

function waitMeta(wait) {
  return el("dl", { class: "meta" },
    el("dt", { text: "Run" }), el("dd", {}, runLink(wait.run_id)),
    el("dt", { text: "Task" }), el("dd", { text: wait.task }),
    el("dt", { text: "Event key" }), el("dd", {}, el("code", { text: wait.event_key })),
    el("dt", { text: "Waiting since" }), el("dd", {}, timeEl(wait.since)),
    el("dt", { text: "Wait deadline" }), el("dd", {}, timeEl(wait.deadline)),
    el("dt", { text: "Run deadline" }), el("dd", {}, timeEl(wait.run_deadline)));
}

// -- inbox ---------------------------------------------------------------------------------

const inbox = {
  cards: new Map(), // run id -> {wait_id, node}

  async refresh() {
    const select = $("filter-task");
    await fillTaskFilter(select);
    const query = select.value ? `?task=${encodeURIComponent(select.value)}` : "";
    const data = await api(`/api/waits${query}`);
    const list = $("waits");
    const seen = new Set();
    for (const wait of data.waits) {
      seen.add(wait.run_id);
      const known = this.cards.get(wait.run_id);
      if (known && known.wait_id === wait.wait_id && known.started_seq === wait.started_seq) continue;
      const node = this.card(wait);
      if (known) known.node.replaceWith(node); else list.append(node);
      this.cards.set(wait.run_id, { wait_id: wait.wait_id, started_seq: wait.started_seq, node });
    }
    for (const [runId, known] of [...this.cards]) {
      if (!seen.has(runId)) { known.node.remove(); this.cards.delete(runId); }
    }
    // keep the order of the API (longest waiting first), moving only the cards out of
    // place: a moved card loses the focus, and a reason being typed into it its keys
    let next = list.firstElementChild;
    for (const wait of data.waits) {
      const node = this.cards.get(wait.run_id).node;
      if (node === next) next = next.nextElementSibling;
      else list.insertBefore(node, next);
    }
    $("empty").hidden = data.waits.length > 0;
    setCount(data.total);
    if (data.total > data.waits.length) say(`Showing the ${data.waits.length} longest waiting of ${data.total}.`);
  },

  card(wait) {
    const title = `${wait.task} · run ${shortId(wait.run_id)}`;
    const heading = el("h2", { id: `title-${wait.run_id}` },
      el("a", { href: `/runs/${encodeURIComponent(wait.run_id)}`, text: title }));
    const item = el("li", { "data-run-id": wait.run_id });
    item.append(el("article", { class: "card", "aria-labelledby": `title-${wait.run_id}` },
      heading, waitMeta(wait), proposedAction(wait), conventionWarning(wait),
      decisionForm(wait, (decision) => say(`Run ${wait.run_id} ${decision === "approve" ? "approved" : "rejected"}.`, "ok"))));
    return item;
  },

  init() { $("filter-task").addEventListener("change", () => schedule()); },
};

function setCount(n) { $("inbox-count").textContent = n ? `(${n})` : ""; }

// -- runs list -----------------------------------------------------------------------------

const runs = {
  rows: new Map(), // run id -> {sig, node}: a row is rebuilt only when its run changed

  row(run) {
    return el("tr", { "data-run-id": run.run_id },
      el("td", {}, el("a", { href: `/runs/${encodeURIComponent(run.run_id)}`, text: shortId(run.run_id),
        "aria-label": `run ${run.run_id}` })),
      el("td", { text: run.task }),
      el("td", {}, badge(run.status)),
      el("td", { "data-col": "decision" }, run.decision ? decisionEl(run.decision) : ""),
      el("td", {}, run.waiting_on ? el("code", { text: run.waiting_on }) : ""),
      el("td", {}, timeEl(run.created_at)),
      el("td", {}, timeEl(run.updated_at)));
  },

  async refresh() {
    const status = $("filter-status");
    const task = $("filter-task");
    const overview = await fillTaskFilter(task);
    for (const option of status.options) {
      if (!option.value) continue;
      const n = overview.statuses[option.value] || 0;
      option.textContent = `${option.value} (${n})`;
    }
    const params = new URLSearchParams();
    if (status.value) params.set("status", status.value);
    if (task.value) params.set("task", task.value);
    params.set("limit", "200");
    const data = await api(`/api/runs?${params}`);
    const body = $("runs").querySelector("tbody");
    // Keep the rows of unchanged runs (a live update must not swap a row under the pointer).
    const rows = new Map();
    const nodes = data.runs.map((run) => {
      const sig = JSON.stringify([run.task, run.status, run.decision, run.waiting_on,
        run.created_at, run.updated_at]);
      const known = this.rows.get(run.run_id);
      const node = known && known.sig === sig ? known.node : this.row(run);
      rows.set(run.run_id, { sig, node });
      return node;
    });
    this.rows = rows;
    nodes.forEach((node, i) => {
      if (body.children[i] !== node) body.insertBefore(node, body.children[i] || null);
    });
    while (body.children.length > nodes.length) body.lastElementChild.remove();
    $("empty").hidden = data.runs.length > 0;
    setCount(overview.statuses.waiting || 0);
  },

  init() {
    const params = new URLSearchParams(location.search);
    const status = $("filter-status");
    const task = $("filter-task");
    status.value = params.get("status") || "";
    if (params.get("task")) task.append(el("option", { value: params.get("task"), text: params.get("task") }));
    task.value = params.get("task") || "";
    const onChange = () => {
      const next = new URLSearchParams();
      if (status.value) next.set("status", status.value);
      if (task.value) next.set("task", task.value);
      history.replaceState(null, "", next.toString() ? `?${next}` : location.pathname);
      schedule();
    };
    status.addEventListener("change", onChange);
    task.addEventListener("change", onChange);
  },
};

// -- workflow graph (run page) -------------------------------------------------------------
// Tasks in columns by depth (a task's layer is 1 + its deepest parent's), an arrow from each
// parent to its child, each node coloured by its status. Drawn as inline SVG.

const SVG_NS = "http://www.w3.org/2000/svg";
const NODE = { width: 184, height: 56, gapX: 56, gapY: 18, pad: 4 };
const MAX_NAME = 22; // characters shown in a node; the node's title has the whole name

function svgEl(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) if (child) node.append(child);
  return node;
}

// Each task's layer: 0 without parents, else 1 + its deepest parent's.
function taskLayers(tasks) {
  const parents = new Map(tasks.map((task) => [task.name, task.parents]));
  const layers = new Map();
  function layerOf(name) {
    if (!layers.has(name)) {
      layers.set(name, 0); // a guard against a cycle, which a workflow never has
      const known = parents.get(name).filter((parent) => parents.has(parent));
      layers.set(name, 1 + Math.max(-1, ...known.map(layerOf)));
    }
    return layers.get(name);
  }
  for (const task of tasks) layerOf(task.name);
  return layers;
}

// Where each node goes: one column per layer, in the workflow's order, centred vertically.
function graphLayout(tasks) {
  const layers = taskLayers(tasks);
  const columns = [];
  for (const task of tasks) {
    const layer = layers.get(task.name);
    (columns[layer] = columns[layer] || []).push(task.name);
  }
  const stepX = NODE.width + NODE.gapX;
  const stepY = NODE.height + NODE.gapY;
  const tallest = Math.max(...columns.map((column) => column.length));
  const positions = new Map();
  columns.forEach((column, layer) => {
    const top = NODE.pad + ((tallest - column.length) * stepY) / 2;
    column.forEach((name, row) => positions.set(name, { x: NODE.pad + layer * stepX, y: top + row * stepY }));
  });
  return {
    positions,
    width: columns.length * stepX - NODE.gapX + 2 * NODE.pad,
    height: tallest * stepY - NODE.gapY + 2 * NODE.pad,
  };
}

// The task is a gate whose open wait a person decides (its wait is labelled task:<name>, or
// task:<a>|<b> when gates ready together wait as one).
function awaitsDecision(task, wait) {
  if (task.status !== "waiting" || !wait || !wait.label || !wait.label.startsWith("task:")) return false;
  return wait.label.slice("task:".length).split("|").includes(task.name);
}

// What a node says under the task's name.
function taskLabel(task, wait) { return awaitsDecision(task, wait) ? "waiting for a decision" : task.status; }

function arrowMarker() {
  return svgEl("defs", {}, svgEl("marker", { id: "task-graph-arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
    markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse" }, svgEl("path", { d: "M0,0 L10,5 L0,10 z" })));
}

function graphEdge(from, to, status) {
  const x1 = from.x + NODE.width;
  const x2 = to.x;
  const y1 = from.y + NODE.height / 2;
  const y2 = to.y + NODE.height / 2;
  const mid = (x1 + x2) / 2;
  return svgEl("path", { class: `edge ${status}`, d: `M${x1},${y1} C${mid},${y1} ${mid},${y2} ${x2},${y2}`,
    "marker-end": "url(#task-graph-arrow)" });
}

function graphNode(task, at, wait) {
  const name = task.name.length > MAX_NAME ? `${task.name.slice(0, MAX_NAME - 1)}…` : task.name;
  const label = taskLabel(task, wait);
  const gate = awaitsDecision(task, wait) ? " gate" : "";
  return svgEl("g", { class: `task ${task.status}${gate}`, "data-task": task.name, "data-status": task.status,
    transform: `translate(${at.x},${at.y})` },
    svgEl("title", { text: `${task.name}: ${label}` }),
    svgEl("rect", { width: NODE.width, height: NODE.height, rx: 8 }),
    svgEl("text", { class: "name", x: 12, y: 23, text: name }),
    svgEl("text", { class: "state", x: 12, y: 43, text: label }));
}

function taskGraph(tasks, wait) {
  const { positions, width, height } = graphLayout(tasks);
  const edges = tasks.flatMap((task) => task.parents.filter((parent) => positions.has(parent))
    .map((parent) => graphEdge(positions.get(parent), positions.get(task.name), task.status)));
  const nodes = tasks.map((task) => graphNode(task, positions.get(task.name), wait));
  const summary = tasks.map((task) => `${task.name}: ${taskLabel(task, wait)}`).join("; ");
  return svgEl("svg", { id: "task-graph", class: "task-graph", width, height, viewBox: `0 0 ${width} ${height}`,
    role: "img", "aria-label": `Workflow tasks, parents before children. ${summary}` },
    arrowMarker(), edges, nodes);
}

// -- run page ------------------------------------------------------------------------------

function attemptTitle(previousType, attempt, worker) {
  const resumed = previousType === "run.wait_satisfied.v1" || previousType === "run.wait_timed_out.v1";
  return `${resumed ? "Resumed" : "Started"}: attempt ${attempt} on ${worker}`;
}

function describeEvent(event, previousType) {
  const d = event.data;
  switch (event.type) {
    case "run.requested.v1":
      return { title: `Requested (task ${d.task})`, body: d.input === undefined ? null : pretty(d.input) };
    case "run.started.v1":
      return { title: attemptTitle(previousType, d.attempt, d.worker) };
    case "run.step.v1":
      return { title: `Step ${d.name} recorded`, body: pretty(d.output) };
    case "run.wait_started.v1":
      return { title: `Waiting for ${d.event_key || d.label || "conditions"}${d.description ? `: ${d.description}` : ""}`,
        body: [carriedTasks(d), d.expression ? `expression: ${d.expression}` : ""].filter(Boolean).join("\n") || null };
    case "run.wait_satisfied.v1": {
      const payload = d.payload || {};
      const who = d.metadata && d.metadata.approver;
      const verb = payload.decision === "approve" ? "Approved" : payload.decision === "reject" ? "Rejected" : "Event matched";
      const reason = payload.reason ? `: “${payload.reason}”` : "";
      return { title: `${verb}${who ? ` by ${who}` : ""}${reason}`,
        cls: payload.decision === "reject" ? "decision rejected" : "decision",
        body: `event #${d.event_seq} on ${d.event_key}\n${pretty(payload)}` };
    }
    case "run.wait_timed_out.v1": return { title: "Wait timed out" };
    case "run.task.v1": return describeTask(d);
    case "run.completed.v1":
      return { title: "Completed", body: [carriedTasks(d), pretty(d.output)].filter(Boolean).join("\n") };
    case "run.failed.v1": return { title: `Failed: ${d.error.type}: ${d.error.message}`, cls: "rejected" };
    case "run.timed_out.v1": return { title: `Timed out: ${d.reason}`, cls: "rejected" };
    case "run.cancelled.v1": return { title: `Cancelled: ${d.reason}`, cls: "rejected" };
    default: return { title: event.note || event.type };
  }
}

// The workflow tasks that ended just before a wait or the completion, which carries them.
function carriedTasks(d) {
  return d.tasks && d.tasks.length ? `after ${d.tasks.map((t) => `${t.task} ${t.status}`).join(", ")}` : "";
}

function describeTask(d) {
  const error = d.error ? `: ${d.error.type}: ${d.error.message}` : "";
  const failed = d.status === "failed" || d.status === "cancelled";
  return { title: `Task ${d.task} ${d.status}${error}`, cls: failed ? "rejected" : "",
    body: d.status === "completed" ? pretty(d.output) : d.reason || null };
}

const runPage = {
  runId: decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || ""),
  waitKey: null,
  graphKey: null,

  // A workflow run's graph, drawn again only when a task's status or the open wait changed.
  drawGraph(tasks, wait) {
    const key = JSON.stringify([tasks.map((t) => [t.name, t.status, t.parents]), wait && wait.label]);
    if (key === this.graphKey) return;
    this.graphKey = key;
    $("run-graph").hidden = tasks.length === 0;
    $("run-graph-body").replaceChildren(...(tasks.length ? [taskGraph(tasks, wait)] : []));
  },

  async refresh() {
    const data = await api(`/api/runs/${encodeURIComponent(this.runId)}`);
    const run = data.run;
    document.title = `Run ${shortId(run.run_id)} · Tether`;
    $("run-title").replaceChildren(`Run ${run.run_id} `, badge(run.status));
    $("run-title").dataset.status = run.status;
    $("run-meta").replaceChildren(
      el("dt", { text: "Task" }), el("dd", { text: run.task }),
      el("dt", { text: "Status" }), el("dd", { id: "run-status", text: run.status }),
      el("dt", { text: "Decision" }), el("dd", { id: "run-decision" }, decisionEl(run.decision, true)),
      el("dt", { text: "Attempt" }), el("dd", { text: String(run.attempt) }),
      el("dt", { text: "Created" }), el("dd", {}, timeEl(run.created_at, "absolute")),
      el("dt", { text: "Ended" }), el("dd", {}, timeEl(run.ended_at, "absolute")),
      el("dt", { text: "Deadline" }), el("dd", {}, timeEl(run.deadline)));
    const input = pretty(run.input === undefined ? null : run.input);
    if ($("run-input").textContent !== input) $("run-input").textContent = input;
    const wait = data.wait;
    this.drawGraph(data.tasks || [], wait);
    const key = wait ? `${wait.wait_id}@${wait.started_seq}` : null;
    if (key !== this.waitKey) {
      this.waitKey = key;
      $("run-wait").replaceChildren(wait ? el("section", { class: "panel card", "aria-labelledby": `title-${wait.run_id}` },
        el("h2", { id: `title-${wait.run_id}`, text: "Waiting for a decision" }),
        waitMeta(wait), proposedAction(wait), conventionWarning(wait), decisionForm(wait)) : "");
    }
    const result = [];
    if (run.output !== null && run.output !== undefined) result.push(el("h2", { text: "Output" }), el("pre", { text: pretty(run.output) }));
    if (run.error) result.push(el("h2", { text: "Error" }), el("pre", { class: "error", text: `${run.error.type}: ${run.error.message}` }));
    $("run-result").replaceChildren(...result);
    const terminal = ["completed", "failed", "timed_out", "cancelled"].includes(run.status);
    $("run-cancel").hidden = terminal || !(me && me.cancel);
    let previous = null;
    let attempt = 0;
    $("timeline").replaceChildren(...data.events.flatMap((event) => {
      const info = describeEvent(event, previous);
      const items = [];
      if (event.type === "run.started.v1") attempt = event.data.attempt;
      else if (event.data.worker) {
        // an attempt that recorded no start of its own began with this write, which names it
        attempt += 1;
        items.push(el("li", { "data-type": "attempt" },
          el("strong", { text: attemptTitle(previous, attempt, event.data.worker) }),
          el("span", { class: "when" }, timeEl(event.at, "absolute"))));
      }
      previous = event.type;
      items.push(el("li", { class: info.cls || "", "data-type": event.type },
        el("strong", { text: info.title }), el("span", { class: "when" }, timeEl(event.at, "absolute")),
        el("div", { class: "type", text: `#${event.seq} ${event.type}` }),
        info.body ? el("details", {}, el("summary", { text: "details" }), el("pre", { text: info.body })) : null));
      return items;
    }));
  },

  init() {
    $("cancel-button").addEventListener("click", async () => {
      if (!window.confirm(`Cancel run ${this.runId}?`)) return;
      const reason = $("cancel-reason").value.trim();
      try {
        await api(`/api/runs/${encodeURIComponent(this.runId)}/cancel`, { method: "POST", body: reason ? { reason } : {} });
        say("Run cancelled.", "ok");
      } catch (error) {
        say(`Not cancelled: ${error.message}`, "error");
      }
      schedule();
    });
  },
};

// -- live updates --------------------------------------------------------------------------

const views = { inbox, runs, run: runPage };
const view = views[page];
let timer = null;
let refreshing = false;
let again = false;

function schedule(delay = 150) {
  if (timer) return;
  timer = setTimeout(async () => {
    timer = null;
    if (refreshing) { again = true; return; }
    refreshing = true;
    try {
      await view.refresh();
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) say(`Could not load: ${error.message}`, "error");
    } finally {
      refreshing = false;
      if (again) { again = false; schedule(); }
    }
  }, delay);
}

function setLive(text) { $("live").textContent = text; }

// Stop the live stream and the polling (signed out, or the page goes into the cache).
function stopLive() {
  if (stream) { stream.abort(); stream = null; }
  stopPolling();
}

// The open /api/stream request, aborted on pagehide: a page kept in the back/forward cache
// would otherwise hold its connection, and after a few page changes Chromium's six
// connections per host are all taken by cached pages and nothing loads.
let stream = null;
let poll = null;

function stopPolling() { if (poll) { clearInterval(poll); poll = null; } }

function pause(ms, signal) {
  return new Promise((resolve) => {
    const timeout = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timeout); resolve(); }, { once: true });
  });
}

async function follow(controller) {
  // Read /api/stream with fetch so the token goes in a header; poll while it is down.
  const signal = controller.signal;
  while (!signal.aborted) {
    try {
      const sent = token();
      const response = await fetch("/api/stream", { headers: { Authorization: `Bearer ${sent}` }, signal });
      if (response.status === 401) {
        if (stream === controller) stream = null; // a new sign-in opens it again
        tokenRefused(sent, "the live stream refused the token");
        return;
      }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      stopPolling();
      setLive("live");
      schedule(0);
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          if (/^event: change$/m.test(block)) schedule();
        }
      }
    } catch (_) {
      // aborted on pagehide, or the stream broke: fall through to polling and retry
    }
    if (signal.aborted) return;
    setLive("reconnecting… (polling)");
    if (!poll) poll = setInterval(() => schedule(0), 1000);
    await pause(3000, signal);
  }
}

function openStream() {
  if (stream) return;
  stream = new AbortController();
  follow(stream);
}

function closeStream() {
  const wasOpen = stream !== null || poll !== null;
  stopLive();
  if (wasOpen) setLive("connecting…"); // a signed-out page stays "signed out"
}

window.addEventListener("pagehide", closeStream);
window.addEventListener("pageshow", (event) => {
  // Restored from the back/forward cache: reconnect and reload what may have changed.
  if (event.persisted && started && token()) { openStream(); schedule(0); }
});

let started = false;
let retry = null;

async function start() {
  clearTimeout(retry);
  if (!token()) { showSignIn(""); return; }
  let identity;
  try {
    identity = await api("/api/me");
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return; // the sign-in form says why
    // the API is unreachable or failing: say so, and try again
    setLive(`cannot reach the API (${error.message}); retrying…`);
    retry = setTimeout(start, 3000);
    return;
  }
  if (!me || JSON.stringify(me) !== JSON.stringify(identity)) {
    // other rights: build the decision forms again
    inbox.cards.clear();
    runPage.waitKey = null;
    if (page === "inbox") $("waits").replaceChildren();
  }
  me = identity;
  $("signin").hidden = true;
  $("content").hidden = false;
  $("sign-out").hidden = false;
  $("who").textContent = `Signed in as ${me.name}${me.keys.length ? "" : " (read-only)"}`;
  if (!started) {
    started = true;
    view.init();
    setInterval(refreshTimes, 15000);
  }
  setLive("connecting…");
  openStream();
  schedule(0);
}

start();
