// Concord console. Plain JavaScript, served by the node: no framework, no
// build step, nothing fetched from elsewhere. Every value from the server
// goes into the page as text (never as HTML).
"use strict";

const main = document.getElementById("main");
const live = document.getElementById("live");
const mode = document.getElementById("mode");
let token = sessionStorage.getItem("concord-token") || "";
let operator = false;
// What the current page opened (feeds, timers), closed when it changes.
let cleanups = [];

// ---- helpers -------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function pill(state, extra) {
  return el("span", { class: `pill state-${state} ${extra || ""}` }, state || "new");
}

function when(ms) {
  if (!ms) return "—";
  return new Date(ms).toISOString().replace("T", " ").replace("Z", " UTC");
}

function ago(ms) {
  if (!ms) return "";
  const s = Math.max(0, (Date.now() - ms) / 1000);
  if (s < 60) return `${s.toFixed(0)} s ago`;
  if (s < 3600) return `${(s / 60).toFixed(0)} min ago`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h ago`;
  return `${(s / 86400).toFixed(1)} d ago`;
}

function short(id) {
  return id.slice(0, 8) + "…" + id.slice(-4);
}

// When the node stops answering, say so over the whole page, and mark
// what it shows as possibly out of date, until it answers again.
let downSince = null;
function nodeDown() {
  if (downSince) return;
  downSince = new Date();
  const banner = document.getElementById("banner");
  banner.textContent = `The node does not answer (since ${downSince.toLocaleTimeString()}): ` +
    "what this page shows may be out of date. It reconnects by itself.";
  banner.hidden = false;
  main.classList.add("stale");
}
function nodeUp() {
  if (!downSince) return;
  downSince = null;
  document.getElementById("banner").hidden = true;
  main.classList.remove("stale");
}

async function api(path, options) {
  const headers = Object.assign({}, (options && options.headers) || {});
  if (token) headers["Authorization"] = `Bearer ${token}`;
  // The server takes operator actions only with this header, which no
  // other site's page can send.
  headers["X-Concord-Console"] = "1";
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers }));
  } catch (error) {
    nodeDown();
    throw new Error("the node does not answer");
  }
  nodeUp();
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.message || `${response.status} ${response.statusText}`);
    error.code = body.code;
    throw error;
  }
  return body;
}

function message(kind, text) {
  return el("div", { class: `message ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

// A confirmation that says what the action will do before it is done.
function confirmAction(title, text, ok) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  document.getElementById("confirm-ok").textContent = ok;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

// The live feed of the log's changes: server-sent events, read with
// fetch rather than EventSource so that it carries the token (a node with
// client tokens shows nothing without one). After a drop it asks again,
// with backoff and jitter, from the last change it saw (Last-Event-ID), so
// nothing is missed.
function feed(query, onChange) {
  const stop = new AbortController();
  cleanups.push(() => stop.abort());
  const url = `/api/changes${query ? "?" + query : ""}`;
  let lastId = "";
  let delay = 500;
  const reconnecting = () => {
    live.textContent = "reconnecting…";
    live.className = "pill muted";
  };
  const lost = () => { if (!stop.signal.aborted) nodeDown(); };
  const follow = async () => {
    const headers = { "Accept": "text/event-stream", "X-Concord-Console": "1" };
    if (token) headers["Authorization"] = `Bearer ${token}`;
    if (lastId) headers["Last-Event-ID"] = lastId;
    let response;
    try {
      response = await fetch(url, { headers, signal: stop.signal });
    } catch (error) {
      lost();
      throw error;
    }
    if (response.status === 401 || response.status === 403) {
      // Asking again will not help: the page says why.
      stop.abort();
      live.textContent = "not following";
      return;
    }
    if (!response.ok || !response.body) throw new Error(`${response.status}`);
    nodeUp();
    live.textContent = "live";
    live.className = "pill live";
    delay = 500;
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (error) {
        lost();
        throw error;
      }
      const { value, done } = chunk;
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (!line || line.startsWith(":")) continue;
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let text = colon < 0 ? "" : line.slice(colon + 1);
          if (text.startsWith(" ")) text = text.slice(1);
          if (field === "event") event = text;
          else if (field === "data") data.push(text);
          else if (field === "id") lastId = text;
        }
        if (event === "change" && data.length) onChange(JSON.parse(data.join("\n")));
      }
    }
  };
  (async () => {
    while (!stop.signal.aborted) {
      try {
        await follow();
      } catch (error) {
        if (stop.signal.aborted) return;
      }
      reconnecting();
      await new Promise((resolve) => setTimeout(resolve, delay * (0.5 + Math.random())));
      delay = Math.min(delay * 2, 10000);
    }
  })();
}

function later(fn, ms) {
  let timer = null;
  return () => {
    if (timer) return;
    timer = setTimeout(() => { timer = null; fn(); }, ms);
  };
}

// ---- the admin token -----------------------------------------------------

// Whether this browser may read at all: false on a node with client
// tokens until one is given.
let reader = true;

async function checkToken() {
  try {
    const info = await api("/api/info");
    operator = info.operator;
    reader = info.reader;
    if (!reader) {
      mode.textContent = token ? "token refused" : "token required";
    } else if (!info.token_required) {
      mode.textContent = "read-only (this node has no admin token)";
    } else if (operator) {
      mode.textContent = "operator";
    } else {
      // A client token reads; only the admin token steers.
      const refused = token && !info.client_token_required;
      mode.textContent = refused ? "token refused: read-only" : "read-only";
    }
    mode.className = operator ? "pill operator" : "pill muted";
    document.getElementById("token-form").hidden =
      !info.token_required && !info.client_token_required;
  } catch (error) {
    mode.textContent = "offline";
  }
}

document.getElementById("token-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  token = document.getElementById("token").value.trim();
  sessionStorage.setItem("concord-token", token);
  await checkToken();
  route();
});

// ---- the list page -------------------------------------------------------

function txnRow(txn) {
  const one = txn.branch_count === 1;
  const parts = txn.kind === "saga" ? (one ? "step" : "steps")
    : txn.kind === "message" ? (one ? "destination" : "destinations")
    : (one ? "branch" : "branches");
  return el("tr", { "data-id": txn.id },
    el("td", {}, el("a", { href: `#/txn/${txn.id}`, class: "mono" }, short(txn.id)),
      txn.group ? [" ", el("span", { class: "muted small", title: `shard ${txn.shard}` }, txn.group)] : null),
    el("td", {}, txn.kind),
    el("td", { class: "state" }, pill(txn.state), txn.needs_attention ? [" ", el("span", { class: "pill flag" }, "needs attention")] : null),
    el("td", { class: "muted" }, ago(txn.created_at_ms)),
    el("td", {}, `${txn.branch_count} ${parts}`),
    txn.reason ? el("td", { class: informative(txn) ? "muted" : "error" }, txn.reason) : el("td", { class: "muted" }, txn.description || ""),
  );
}

// A reason that says how things went well (a message's "submitted by the
// producer"), not what went wrong.
function informative(txn) {
  return txn.kind === "message" && ["delivering", "delivered"].includes(txn.state);
}

// A listing of several groups (DESIGN §11) that lacks a group that did not
// answer says so above the table: its transactions are missing, not gone.
function skipped(page) {
  return (page.skipped_groups || []).map((g) => message("error",
    `Group ${g.group} did not answer (${g.reason}): its transactions are missing from this list.`));
}

function table(id, rows, empty) {
  return el("table", { id },
    el("thead", {}, el("tr", {}, ["id", "kind", "state", "begun", "parts", "reason or description"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.length ? rows : el("tr", { class: "none" }, el("td", { colspan: 6, class: "empty" }, empty))),
  );
}

async function listPage(params) {
  const filters = {
    states: params.get("states") || "",
    kind: params.get("kind") || "",
    needs_attention: params.get("needs_attention") === "true",
    page_token: params.get("page_token") || "",
    search: params.get("search") || "",
    after_ms: params.get("after_ms") || "",
    before_ms: params.get("before_ms") || "",
  };
  const attention = el("section", { class: "card attention", id: "attention-card" },
    el("h2", {}, "Needs attention"),
    el("p", { class: "muted small" }, "Sagas whose compensation or must-complete step is past its retry budget, and messages whose producer or destination keeps failing, all still retrying. They never drop: fix the participant and Retry, or resolve a saga's step by hand."),
    el("div", { id: "attention-body" }, "loading…"));
  const chart = el("section", { class: "card" },
    el("div", { class: "row" }, el("h2", {}, "Ended per second, last 5 minutes"), el("span", { class: "spacer" }), el("span", { class: "muted small", id: "chart-note" }, "")),
    el("div", { class: "chart-wrap" },
      el("canvas", { id: "chart", width: 820, height: 130 }),
      el("div", { class: "legend" },
        el("div", {}, el("span", { class: "key committed" }), "committed / completed / delivered"),
        el("div", {}, el("span", { class: "key aborted" }), "aborted / dropped"),
        el("div", {}, el("span", { class: "key compensated" }), "compensated / failed"),
        el("div", { id: "percentiles" }, ""))));
  const stateSelect = el("select", { id: "filter-state", "aria-label": "State" },
    ["", "active", "committing", "aborting", "committed", "aborted", "running", "compensating", "completed", "compensated", "failed", "prepared", "delivering", "delivered", "dropped"]
      .map((s) => el("option", { value: s, selected: s === filters.states }, s || "any state")));
  const kindSelect = el("select", { id: "filter-kind", "aria-label": "Kind" },
    [["", "every kind"], ["2pc", "2PC"], ["saga", "sagas"], ["message", "messages"]].map(([v, t]) => el("option", { value: v, selected: v === filters.kind }, t)));
  const flagged = el("input", { type: "checkbox", id: "filter-attention", checked: filters.needs_attention });
  // An id (whole: open it; a prefix, or the short form shown in the list:
  // search), or text found in descriptions and participants' endpoints;
  // and a time range, in the browser's time zone.
  const search = el("input", { type: "search", id: "filter-search", value: filters.search,
    placeholder: "id, first digits, or text", "aria-label": "Transaction id, prefix, or text",
    title: "A whole id opens it; its first digits (at least 4) or the list's short form 01a2525d…0dd3 find it; " +
      "other text is looked for in descriptions and participants' addresses (\"in quotes\" to look for digits as text)" });
  const local = (ms) => {
    const at = new Date(Number(ms));
    if (!ms || Number.isNaN(at.getTime())) return "";
    return new Date(at.getTime() - at.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  };
  const after = el("input", { type: "datetime-local", id: "filter-after", value: local(filters.after_ms), "aria-label": "Begun after" });
  const before = el("input", { type: "datetime-local", id: "filter-before", value: local(filters.before_ms), "aria-label": "Begun before" });
  const whole = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
  const apply = () => {
    // Ids in any case; other text as typed (the server folds ASCII case).
    const wanted = search.value.trim();
    if (whole.test(wanted.toLowerCase())) {
      location.hash = `#/txn/${wanted.toLowerCase()}`;
      return;
    }
    const next = new URLSearchParams();
    if (stateSelect.value) next.set("states", stateSelect.value);
    if (kindSelect.value) next.set("kind", kindSelect.value);
    if (flagged.checked) next.set("needs_attention", "true");
    if (wanted) next.set("search", wanted);
    if (after.value) next.set("after_ms", String(new Date(after.value).getTime()));
    if (before.value) next.set("before_ms", String(new Date(before.value).getTime()));
    location.hash = `#/?${next}`;
  };
  [stateSelect, kindSelect, flagged, after, before].forEach((input) => input.addEventListener("change", apply));
  search.addEventListener("keydown", (event) => { if (event.key === "Enter") apply(); });
  const all = el("section", { class: "card" },
    el("div", { class: "row" }, el("h2", {}, "Transactions"), el("span", { class: "spacer" }), el("span", { class: "muted small" }, "newest first, live")),
    el("div", { class: "filters" }, search, stateSelect, kindSelect, el("label", {}, flagged, " needs attention only")),
    el("div", { class: "filters" }, el("label", {}, "begun after ", after), el("label", {}, "before ", before)),
    el("div", { id: "list-body" }, "loading…"),
    el("div", { class: "row", id: "paging" }));
  main.replaceChildren(attention, chart, all);

  const loadAttention = async () => {
    try {
      const page = await api("/api/transactions?needs_attention=true&limit=100");
      document.getElementById("attention-body").replaceChildren(...skipped(page),
        table("attention", page.transactions.map(txnRow), "Nothing needs attention."));
    } catch (error) {
      // While the node is away the banner says so; what was shown stays.
      if (downSince) return;
      document.getElementById("attention-body").replaceChildren(message("error", error.message));
    }
  };
  const query = new URLSearchParams();
  if (filters.states) query.set("states", filters.states);
  if (filters.kind) query.set("kind", filters.kind);
  if (filters.needs_attention) query.set("needs_attention", "true");
  if (filters.page_token) query.set("page_token", filters.page_token);
  if (filters.search) query.set("search", filters.search);
  if (filters.after_ms) query.set("after_ms", filters.after_ms);
  if (filters.before_ms) query.set("before_ms", filters.before_ms);
  query.set("limit", "50");
  const narrowed = filters.search || filters.after_ms || filters.before_ms;
  const loadList = async () => {
    try {
      const page = await api(`/api/transactions?${query}`);
      document.getElementById("list-body").replaceChildren(...skipped(page),
        table("transactions", page.transactions.map(txnRow), "No transaction matches."));
      const paging = document.getElementById("paging");
      paging.replaceChildren();
      if (filters.page_token) {
        const first = new URLSearchParams(query);
        first.delete("page_token"); first.delete("limit");
        paging.append(el("a", { href: `#/?${first}` }, "← newest"));
      }
      if (page.next_page_token) {
        const next = new URLSearchParams(query);
        next.set("page_token", page.next_page_token); next.delete("limit");
        paging.append(el("span", { class: "spacer" }), el("a", { href: `#/?${next}`, id: "older" }, "older →"));
      }
    } catch (error) {
      // While the node is away the banner says so; what was shown stays.
      if (downSince) return;
      document.getElementById("list-body").replaceChildren(message("error", error.message));
    }
  };
  await Promise.all([loadAttention(), loadList()]);

  const refreshAttention = later(loadAttention, 250);
  const refreshList = later(loadList, 400);
  feed("", (change) => {
    if (change.needs_attention || document.querySelector(`#attention tr[data-id="${change.id}"]`)) {
      refreshAttention();
    }
    const row = document.querySelector(`#transactions tr[data-id="${change.id}"]`);
    if (row) {
      row.querySelector("td.state").replaceChildren(pill(change.new_state),
        change.needs_attention ? [" ", el("span", { class: "pill flag" }, "needs attention")] : []);
      row.classList.remove("flash"); void row.offsetWidth; row.classList.add("flash");
    } else if (!change.old_state && !filters.page_token && !narrowed) {
      refreshList();
    }
  });
  const drawChart = async () => {
    try { chartDraw(await api("/api/stats")); } catch (_) { /* next tick */ }
  };
  await drawChart();
  const timer = setInterval(drawChart, 2000);
  cleanups.push(() => clearInterval(timer));
}

function chartDraw(stats) {
  const canvas = document.getElementById("chart");
  if (!canvas) return;
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 22;
  ctx.clearRect(0, 0, w, h);
  const now = Math.floor(Date.now() / 1000) * 1000;
  const span = 300;
  const bySecond = new Map(stats.seconds.map((s) => [s.at_ms, s]));
  const series = { committed: [], aborted: [], compensated: [] };
  let top = 1;
  for (let i = span - 1; i >= 0; i--) {
    const s = bySecond.get(now - i * 1000) || { committed: 0, aborted: 0, compensated: 0 };
    for (const key of Object.keys(series)) { series[key].push(s[key]); top = Math.max(top, s[key]); }
  }
  ctx.strokeStyle = "#dde2e7"; ctx.fillStyle = "#68727d"; ctx.font = "11px system-ui";
  ctx.beginPath(); ctx.moveTo(pad, h - pad); ctx.lineTo(w, h - pad); ctx.stroke();
  ctx.fillText(`${top}/s`, 0, 12); ctx.fillText("0", 8, h - pad);
  ctx.fillText("−5 min", pad, h - 6); ctx.fillText("now", w - 24, h - 6);
  const colors = { committed: "#1f7a4d", aborted: "#8a96a3", compensated: "#e8a317" };
  for (const [key, values] of Object.entries(series)) {
    ctx.strokeStyle = colors[key]; ctx.lineWidth = 1.6; ctx.beginPath();
    values.forEach((v, i) => {
      const x = pad + (i / (span - 1)) * (w - pad);
      const y = h - pad - (v / top) * (h - 2 * pad);
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
  const last = stats.seconds.slice(-10);
  const rate = last.reduce((n, s) => n + s.committed + s.aborted + s.compensated, 0) / 10;
  // Percentiles of nothing are not 0 ms: after a restart, say so.
  const timed = stats.samples > 0;
  document.getElementById("percentiles").replaceChildren(
    el("div", {}, el("b", {}, timed ? `${stats.p50_ms} ms` : "no data"), "p50, begun to ended"),
    el("div", {}, el("b", {}, timed ? `${stats.p99_ms} ms` : "no data"),
      timed ? `p99 (${stats.samples} timed)` : "nothing ended since this node started"));
  document.getElementById("chart-note").textContent = `${rate.toFixed(1)} ended/s over the last 10 s`;
}

// ---- one transaction -----------------------------------------------------

async function txnPage(id) {
  const header = el("div", { class: "row" },
    el("a", { href: "#/" }, "← all transactions"), el("span", { class: "spacer" }));
  const notes = el("div", { id: "notes" });
  const body = el("div", { id: "txn-body" }, "loading…");
  const timeline = el("ol", { class: "timeline", id: "timeline" });
  main.replaceChildren(header, notes, body,
    el("section", { class: "card" }, el("h2", {}, "Timeline"),
      el("p", { class: "muted small" }, "Every change the log recorded, oldest first; live."), timeline));

  // While an operator fills in a Resolve form, live updates do not redraw
  // the page under them: the redraw waits until the form is sent or closed.
  let editing = false;
  let stale = false;
  const load = async () => {
    if (editing) { stale = true; return; }
    try {
      const txn = await api(`/api/transactions/${encodeURIComponent(id)}`);
      body.replaceChildren(...txnView(txn, load, notes, (on) => {
        editing = on;
        if (!on && stale) { stale = false; load(); }
      }));
    } catch (error) {
      // While the node is away the banner says so; what was shown stays.
      if (downSince) return;
      body.replaceChildren(message("error", error.message));
    }
  };
  await load();
  const reload = later(load, 200);
  // Each entry says how long after the one before it came, and after the
  // first: where the time went.
  let first = null;
  const since = (ms) => ms < 1000 ? `${ms} ms` : ms < 60000 ? `${(ms / 1000).toFixed(2)} s` : `${(ms / 60000).toFixed(1)} min`;
  feed(`id_prefix=${encodeURIComponent(id)}&from_oldest=true`, (change) => {
    const what = change.subject
      ? [el("b", {}, change.subject), ": ", change.detail]
      : !change.old_state
        ? ["begun as ", pill(change.new_state)]
        : change.old_state === change.new_state
          ? [el("span", { class: "pill flag" }, change.detail)]
          : [pill(change.old_state), " → ", pill(change.new_state), change.detail ? ` ${change.detail}` : ""];
    const at = new Date(change.at_ms).toISOString();
    if (first === null) first = change.at_ms;
    const elapsed = el("span", { class: "muted small elapsed" });
    const entry = el("li", { "data-cursor": change.cursor, "data-at": String(change.at_ms), "data-part": change.subject ? "1" : "" },
      el("span", { class: "muted mono", title: when(change.at_ms) }, `${at.slice(0, 10)} ${at.slice(11, 23)}`),
      el("span", {}, what, elapsed));
    // Within one millisecond a part's change (a step succeeded) is the
    // cause of the transaction's (completed), though the log may hold
    // them the other way round: shown cause first. "Begun" stays first.
    let before = null;
    for (let prior = timeline.lastElementChild; prior; prior = prior.previousElementSibling) {
      const movable = change.subject && prior.dataset.at === String(change.at_ms) &&
        !prior.dataset.part && prior !== timeline.firstElementChild;
      if (!movable) break;
      before = prior;
    }
    timeline.insertBefore(entry, before);
    for (const shown of [entry, entry.nextElementSibling]) {
      const prior = shown && shown.previousElementSibling;
      if (!prior) continue;
      const ms = Number(shown.dataset.at);
      const total = ms === first ? "" : ` (${since(ms - first)} in)`;
      shown.querySelector(".elapsed").textContent = ` +${since(Math.max(0, ms - Number(prior.dataset.at)))}${total}`;
    }
    reload();
  });
}

function txnView(txn, reload, notes, setEditing) {
  const saga = txn.kind === "saga";
  const msg = txn.kind === "message";
  const facts = el("section", { class: "card" },
    el("div", { class: "row" },
      el("h1", { class: "mono" }, txn.id), pill(txn.state),
      txn.needs_attention ? el("span", { class: "pill flag", id: "flagged" }, "needs attention") : null,
      el("span", { class: "spacer" }),
      operator && !ended(txn) ? el("button", { id: "retry", onclick: () => retry(txn, reload, notes) }, "Retry now") : null),
    el("dl", { class: "facts" },
      el("dt", {}, "kind"), el("dd", {}, saga ? "saga" : msg ? "transactional message" : "two-phase commit"),
      txn.group ? [el("dt", {}, "group"), el("dd", {}, `${txn.group} (shard ${txn.shard})`)] : null,
      el("dt", {}, "begun"), el("dd", {}, `${when(txn.created_at_ms)} (${ago(txn.created_at_ms)})`),
      saga || (msg && txn.decided_at_ms) ? null : [el("dt", {}, msg ? "check-back due" : "deadline"), el("dd", {}, when(txn.deadline_ms))],
      msg ? [el("dt", {}, "producer"), el("dd", { class: "mono" }, txn.producer)] : null,
      txn.ordering_key ? [el("dt", {}, "ordering key"), el("dd", { class: "mono" }, txn.ordering_key)] : null,
      el("dt", {}, "decided"), el("dd", {}, when(txn.decided_at_ms)),
      el("dt", {}, "ended"), el("dd", {}, when(txn.ended_at_ms)),
      txn.reason ? [el("dt", {}, "reason"), el("dd", { class: informative(txn) ? "" : "error" }, txn.reason)] : null,
      txn.description ? [el("dt", {}, "description"), el("dd", {}, txn.description)] : null,
      txn.idempotency_key ? [el("dt", {}, "idempotency key"), el("dd", { class: "mono" }, txn.idempotency_key)] : null));
  // A prepared message's producer is a row too: what its check-back is
  // waiting for, and what an operator resolves when it is gone for good.
  const producer = msg && txn.state === "prepared"
    ? [{ name: "producer", producer: true, state: "prepared", attempts: "—", participant: txn.producer, last_error: txn.reason }]
    : [];
  const parts = saga ? txn.steps : producer.concat(txn.branches);
  const columns = saga || !msg ? 7 : 6;
  const rows = parts.flatMap((part) => {
    const row = el("tr", { "data-name": part.name },
      el("td", {}, el("b", {}, part.name)),
      el("td", {}, pill(part.state)),
      msg ? null : saga ? el("td", {}, part.kind) : el("td", {}, part.vote === "unspecified" ? "—" : part.vote),
      el("td", {}, saga ? `${part.attempts} / ${part.compensation_attempts}` : `${part.attempts}`),
      el("td", { class: "mono small" }, part.participant),
      el("td", { class: "error" }, part.last_error || ""),
      el("td", {}, operator && resolvable(txn, part) ? el("button", { class: "resolve-open", onclick: (e) => openResolve(e.target, txn, part, reload, notes, setEditing) }, "Resolve…") : null));
    // What it was sent, folded: a step's action and compensation, a
    // branch's or destination's payload.
    const sent = saga
      ? [["action", part.action], ["compensation", part.compensation]]
      : [["payload", part.payload]];
    const shown = sent.filter(([, p]) => p && (p.text !== undefined || p.hex !== undefined));
    if (!shown.length) return [row];
    return [row, el("tr", { class: "payloads", "data-name": part.name },
      el("td", { colspan: String(columns) }, shown.map(([what, p]) => payloadView(`${txn.id}/${part.name}/${what}`, what, p))))];
  });
  const heads = saga
    ? ["step", "state", "kind", "attempts / compensations", "participant", "last error", ""]
    : msg ? ["destination", "state", "deliveries", "participant", "last error", ""]
    : ["branch", "state", "vote", "attempts", "participant", "last error", ""];
  const partsCard = el("section", { class: "card" },
    el("h2", {}, saga ? "Steps" : msg ? "Destinations" : "Branches"),
    el("table", { id: "parts" }, el("thead", {}, el("tr", {}, heads.map((h) => el("th", {}, h)))), el("tbody", {}, rows)));
  const actions = el("section", { class: "card", id: "operator-actions" },
    el("h2", {}, "Operator decisions"),
    txn.operator_actions.length
      ? el("ul", {}, txn.operator_actions.map((a) => el("li", {},
        el("b", {}, a.branch), ` recorded ${a.outcome} by `, el("b", {}, a.operator), ` at ${when(a.at_ms)}: `, a.reason)))
      : el("p", { class: "muted" }, "None."));
  return [facts, partsCard, actions];
}

// One payload, folded under its summary: its size, and its first bytes as
// text (UTF-8) or hex, with how much of it that is.
// The page redraws on every change: the payloads left open stay open.
const openPayloads = new Set();

function payloadView(key, what, payload) {
  const hex = payload.text === undefined;
  const cut = payload.shown < payload.bytes ? `, first ${payload.shown} shown` : "";
  const toggled = (event) => {
    if (event.target.open) openPayloads.add(key);
    else openPayloads.delete(key);
  };
  return el("details", { class: "payload", open: openPayloads.has(key), ontoggle: toggled },
    el("summary", {}, `${what} (${payload.bytes} bytes${hex ? ", hex" : ""}${cut})`),
    el("pre", {}, hex ? payload.hex.replace(/(.{64})/g, "$1\n") : payload.text));
}

// Whether an operator may resolve this branch or step now (the server
// checks again and says why not).
function ended(txn) {
  return ["committed", "aborted", "completed", "compensated", "failed", "delivered", "dropped"].includes(txn.state);
}

function resolvable(txn, part) {
  if (ended(txn)) return false;
  // A message's producer while it is prepared (M6), or a destination
  // whose delivery keeps failing (M3).
  if (txn.kind === "message") {
    return part.producer ? txn.state === "prepared" : txn.state === "delivering" && part.state === "delivering";
  }
  // A step whose action (running) or compensation (compensating) is
  // retrying; a 2PC branch not yet acknowledged once decided.
  if (txn.kind === "saga") return ["running", "compensating"].includes(part.state);
  return ["committing", "aborting"].includes(txn.state) && !["committed", "aborted", "read_only"].includes(part.state);
}

function outcomesFor(txn, part) {
  if (txn.kind === "message") return part.producer ? ["committed", "aborted"] : ["committed"];
  if (txn.kind === "saga") return txn.state === "compensating" ? ["compensated"] : ["committed"];
  return txn.state === "committing" ? ["committed"] : ["aborted"];
}

function openResolve(button, txn, part, reload, notes, setEditing) {
  const cell = button.parentElement;
  setEditing(true);
  const outcome = el("select", { id: "resolve-outcome" }, outcomesFor(txn, part).map((o) => el("option", { value: o }, o)));
  const reason = el("textarea", { id: "resolve-reason", placeholder: "What you established happened at the participant, and how" });
  const who = el("input", { type: "text", id: "resolve-operator", placeholder: "your name", value: localStorage.getItem("concord-operator") || "" });
  const submit = el("button", { class: "primary", id: "resolve-submit" }, "Record decision…");
  const cancel = el("button", { type: "button", id: "resolve-cancel", onclick: () => { setEditing(false); reload(); } }, "Cancel");
  const form = el("form", { class: "resolve" }, el("label", {}, "outcome ", outcome), reason, who,
    el("div", { class: "row" }, submit, cancel));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!reason.value.trim() || !who.value.trim()) {
      notes.replaceChildren(message("error", "Say why, and who you are: both are recorded with the decision."));
      return;
    }
    localStorage.setItem("concord-operator", who.value.trim());
    const consequence = txn.kind === "saga"
      ? `Step ${part.name} will be recorded as ${outcome.value} by ${who.value.trim()}: the coordinator stops calling ${part.participant} for it and the saga goes on as if the participant had answered.`
      : part.producer
      ? `The producer's local transaction will be recorded as ${outcome.value} by ${who.value.trim()}: ${outcome.value === "committed" ? "the message is delivered to every destination" : "the message is dropped and never delivered"}. Look for its outbox row in the producer's database first: this stands in for the check-back's answer.`
      : txn.kind === "message"
      ? `Destination ${part.name} will be recorded as having taken the message, by ${who.value.trim()}: the coordinator stops delivering it to ${part.participant}, and the message ends once the other destinations have it.`
      : `Branch ${part.name} will be recorded as ${outcome.value} by ${who.value.trim()}: the coordinator stops delivering the decision to ${part.participant} and the transaction ends.`;
    const ok = await confirmAction(`Resolve ${part.name} by hand?`,
      `${consequence} The decision is written to the log, with your reason, before it takes effect, and stays with the transaction for good. It cannot be undone.`,
      `Record ${outcome.value}`);
    if (!ok) return;
    try {
      await api(`/api/transactions/${encodeURIComponent(txn.id)}/resolve`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ branch: part.name, outcome: outcome.value, reason: reason.value.trim(), operator: who.value.trim() }),
      });
      notes.replaceChildren(message("ok", `${part.name} resolved as ${outcome.value}.`));
      setEditing(false);
      await reload();
    } catch (error) {
      notes.replaceChildren(message("error", error.message));
    }
  });
  cell.replaceChildren(form);
}

async function retry(txn, reload, notes) {
  const ok = await confirmAction("Retry now?",
    "Every retry of this transaction that is waiting out its backoff (phase-2 deliveries, saga steps, compensations) runs now. Nothing is decided or undone; use it after fixing the participant a retry was failing against.",
    "Retry now");
  if (!ok) return;
  try {
    const answer = await api(`/api/transactions/${encodeURIComponent(txn.id)}/retry`, { method: "POST" });
    notes.replaceChildren(message("ok", `${answer.retried} waiting retr${answer.retried === 1 ? "y" : "ies"} started; the transaction is ${answer.state}.`));
    await reload();
  } catch (error) {
    notes.replaceChildren(message("error", error.message));
  }
}

// ---- routing -------------------------------------------------------------

async function route() {
  for (const cleanup of cleanups) cleanup();
  cleanups = [];
  const hash = location.hash.slice(1) || "/";
  const [path, query] = hash.split("?");
  if (!reader) {
    live.textContent = "not following";
    live.className = "pill muted";
    main.replaceChildren(message("error",
      "This node shows its transactions only to callers with a token: enter a client " +
      "token (or the admin token) above."));
    return;
  }
  const txn = path.match(/^\/txn\/([0-9a-f-]{36})$/);
  if (txn) await txnPage(txn[1]);
  else await listPage(new URLSearchParams(query || ""));
}

window.addEventListener("hashchange", route);
document.getElementById("token").value = token;
checkToken().then(route);
