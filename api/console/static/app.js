// The operator console: hash routes (#/callers, #/caller/<id>, #/calls, #/call/<id>,
// #/queue, #/health) over the admin API. Every value from the server is escaped before it
// reaches innerHTML: memories and transcripts are caller-controlled text.
import { api, ApiError, enc, metricsText, setToken, token } from "./api.js";
import { drawGraph } from "./graph.js";

const view = document.getElementById("view");
const loginSection = document.getElementById("login");
const nav = document.getElementById("nav");
const logoutButton = document.getElementById("logout");
const toastBox = document.getElementById("toast");
let refreshTimer = null;

export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? esc(iso)
    : `<time datetime="${esc(iso)}">${esc(date.toLocaleString())}</time>`;
}

function ago(secs) {
  if (secs === null || secs === undefined) return "none pending";
  if (secs < 60) return `${Math.round(secs)} s`;
  if (secs < 3600) return `${Math.round(secs / 60)} min`;
  return `${(secs / 3600).toFixed(1)} h`;
}

function toast(message, kind = "ok") {
  toastBox.textContent = message;
  toastBox.className = `show ${kind}`;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { toastBox.className = ""; }, 4000);
}

function setTitle(text) {
  document.title = `${text} · voxmem console`;
}

function focusHeading() {
  const heading = view.querySelector("h1");
  if (heading) {
    heading.setAttribute("tabindex", "-1");
    heading.focus({ preventScroll: false });
  }
}

function sectorBadge(sector) {
  return `<span class="badge sector-${esc(sector)}">${esc(sector)}</span>`;
}

function stateBadge(state) {
  return `<span class="badge state-${esc(state)}">${esc(state)}</span>`;
}

// --- login ----------------------------------------------------------------------------------
function showLogin(message = "") {
  setToken(null);
  nav.hidden = true;
  logoutButton.hidden = true;
  view.replaceChildren();
  loginSection.hidden = false;
  document.getElementById("login-error").textContent = message;
  setTitle("Sign in");
  document.getElementById("token").focus();
}

document.getElementById("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = document.getElementById("token");
  const value = input.value.trim();
  if (!value) return;
  setToken(value);
  try {
    await api("/v1/stats");
  } catch (error) {
    showLogin(error instanceof ApiError && error.status === 401
      ? "That token was refused: it must be an active admin token for this tenant."
      : `Could not sign in: ${error.message}`);
    return;
  }
  input.value = "";
  if (!location.hash || location.hash === "#/") location.hash = "#/callers";
  else route();
});

logoutButton.addEventListener("click", () => {
  showLogin("Signed out.");
  history.replaceState(null, "", location.pathname);
});

// --- callers --------------------------------------------------------------------------------
function callerRows(callers) {
  if (!callers.length) return `<p class="empty">No callers found.</p>`;
  return `<table class="list"><caption class="sr-only">Callers</caption>
    <thead><tr><th scope="col">Caller</th><th scope="col">Numbers</th>
      <th scope="col" class="num">Memories</th><th scope="col" class="num">Calls</th>
      <th scope="col">Last call</th></tr></thead>
    <tbody>${callers.map((c) => `<tr>
      <td><a href="#/caller/${enc(c.user_id)}">${esc(c.name || c.spoken_name || "Unnamed caller")}</a>
        ${!c.name && c.spoken_name ? `<span class="muted">(said on a call)</span>` : ""}
        <div class="muted mono">${esc(c.user_id)}${c.is_guest ? " · guest" : ""} · ${esc(c.tier)}</div></td>
      <td class="mono">${c.numbers.map(esc).join("<br>") || "—"}</td>
      <td class="num">${c.memories}</td><td class="num">${c.calls}</td>
      <td>${when(c.last_interaction)}</td></tr>`).join("")}</tbody></table>`;
}

function callRows(calls) {
  if (!calls.length) return `<p class="empty">No calls yet.</p>`;
  return `<table class="list"><caption class="sr-only">Calls</caption>
    <thead><tr><th scope="col">Call</th><th scope="col">Started</th>
      <th scope="col" class="num">Duration</th><th scope="col">Outcome</th>
      <th scope="col">Caller</th></tr></thead>
    <tbody>${calls.map((c) => `<tr>
      <td><a class="mono" href="#/call/${enc(c.conversation_id)}">${esc(c.conversation_id)}</a></td>
      <td>${when(c.start_time)}</td>
      <td class="num">${c.duration_secs ?? "—"} s</td>
      <td>${esc(c.call_successful || c.status)}</td>
      <td><a class="mono" href="#/caller/${enc(c.user_id)}">${esc(c.user_id)}</a></td></tr>`).join("")}
    </tbody></table>`;
}

async function callersPage(query = "") {
  setTitle("Callers");
  const [stats, found, recent] = await Promise.all([
    api("/v1/stats"),
    api(`/v1/console/callers?q=${enc(query)}`),
    api("/v1/conversations?limit=10"),
  ]);
  const active = stats.memories.by_state.active ?? 0;
  view.innerHTML = `
    <h1>Callers</h1>
    <ul class="cards" aria-label="Counts">
      <li><span class="figure">${stats.users}</span> callers <span class="muted">(${stats.guests} unnamed)</span></li>
      <li><span class="figure">${stats.conversations}</span> calls</li>
      <li><span class="figure">${active}</span> active memories</li>
      <li><span class="figure">${stats.tool_invocations}</span> memory look-ups</li>
    </ul>
    <form id="search" role="search" class="inline-form">
      <label for="q">Search callers by name, number or user id</label>
      <input id="q" name="q" type="search" value="${esc(query)}" placeholder="e.g. Maria or +1 555 010 0142">
      <button type="submit">Search</button>
    </form>
    <section aria-labelledby="results-title">
      <h2 id="results-title">${query ? `Callers matching “${esc(query)}”` : "Recently active callers"}</h2>
      ${callerRows(found.callers)}
    </section>
    <section aria-labelledby="recent-title">
      <h2 id="recent-title">Recent calls</h2>
      ${callRows(recent.conversations)}
    </section>`;
  view.querySelector("#search").addEventListener("submit", (event) => {
    event.preventDefault();
    const q = view.querySelector("#q").value.trim();
    callersPage(q).then(() => view.querySelector("#results-title").focus?.()).catch(fail);
  });
}

// --- one caller -----------------------------------------------------------------------------
function profileList(profile) {
  const entries = Object.entries(profile || {}).filter(([, v]) =>
    v !== null && v !== "" && !(Array.isArray(v) && !v.length) && typeof v !== "object"
      || (Array.isArray(v) && v.length));
  if (!entries.length) return `<p class="empty">No profile yet.</p>`;
  return `<dl class="pairs">${entries.map(([k, v]) =>
    `<dt>${esc(k.replace(/_/g, " "))}</dt><dd>${esc(Array.isArray(v) ? v.join(", ") : v)}</dd>`).join("")}</dl>`;
}

function sessionList(interactions) {
  if (!interactions.length) return `<p class="empty">No recent interactions.</p>`;
  return `<ol class="timeline">${interactions.map((i) => `<li>
    <div>${when(i.occurred_at)} · <strong>${esc(i.topic || i.task_type || "call")}</strong>
      ${i.outcome ? `· ${esc(i.outcome)}` : ""}</div>
    ${i.asked ? `<div><span class="muted">Asked:</span> ${esc(i.asked)}</div>` : ""}
    ${i.done ? `<div><span class="muted">Done:</span> ${esc(i.done)}</div>` : ""}
    ${i.conversation_id ? `<a class="mono" href="#/call/${enc(i.conversation_id)}">${esc(i.conversation_id)}</a>` : ""}
  </li>`).join("")}</ol>`;
}

function memoryCard(m) {
  const paused = m.state === "paused", archived = m.state === "archived";
  const editable = m.state !== "superseded";
  return `<li class="memory" id="memory-${m.id}" data-memory-id="${m.id}" data-state="${esc(m.state)}">
    <article aria-labelledby="memory-${m.id}-text">
      <p id="memory-${m.id}-text" class="content">${esc(m.content)}</p>
      <div class="meta">${sectorBadge(m.sector)} ${stateBadge(m.state)}
        <span class="muted">#${m.id} · ${when(m.created_at)} · ${m.links.length} links</span></div>
      <div class="actions">
        <form class="salience" data-action="salience">
          <label for="sal-${m.id}">Salience</label>
          <input id="sal-${m.id}" type="number" min="0" max="1" step="0.05" value="${m.salience}" ${editable ? "" : "disabled"}>
          <button type="submit" class="secondary" ${editable ? "" : "disabled"}>Save</button>
        </form>
        <button type="button" class="secondary" data-action="sources" aria-expanded="false"
          aria-controls="sources-${m.id}">Show sources</button>
        ${editable ? (paused || archived
          ? `<button type="button" class="secondary" data-action="resume">Make active</button>`
          : `<button type="button" class="secondary" data-action="pause">Pause</button>
             <button type="button" class="secondary" data-action="archive">Archive</button>`) : ""}
        <button type="button" class="danger" data-action="delete">Delete</button>
      </div>
      <div class="sources" id="sources-${m.id}" hidden></div>
    </article>
  </li>`;
}

function sourcesHtml(sources) {
  if (!sources.length) return `<p class="empty">No transcript source (entered by hand or derived).</p>`;
  return sources.map((s) => `<figure class="source">
    <figcaption>From call <a class="mono" href="#/call/${enc(s.conversation_id)}">${esc(s.conversation_id)}</a>
      ${s.start_time ? `· ${when(s.start_time)}` : ""}${s.missing ? " · call no longer stored" : ""}</figcaption>
    ${s.turns.map((t) => `<blockquote class="turn role-${esc(t.role)}">
      <span class="who">turn ${t.index} · ${esc(t.role)}</span> ${esc(t.message || "(no text)")}</blockquote>`).join("")}
  </figure>`).join("");
}

async function callerPage(userId, stateFilter = "active") {
  const uid = enc(userId);
  const [user, found, session, memories, calls, everything] = await Promise.all([
    api(`/v1/users/${uid}`),
    api(`/v1/console/callers?q=${uid}&limit=1`),
    api(`/v1/users/${uid}/session`),
    api(`/v1/users/${uid}/memories?state=${enc(stateFilter)}`),
    api(`/v1/users/${uid}/conversations?limit=20`),
    stateFilter === "active" ? null : api(`/v1/users/${uid}/memories`),
  ]);
  const row = found.callers.find((c) => c.user_id === user.user_id);
  const name = user.name || row?.spoken_name || "Unnamed caller";
  setTitle(name);
  const graphMemories = (everything ?? memories).memories;
  view.innerHTML = `
    <nav aria-label="Breadcrumb" class="crumbs"><a href="#/callers">Callers</a> › <span aria-current="page">${esc(name)}</span></nav>
    <h1>${esc(name)}</h1>
    <p class="muted"><span class="mono">${esc(user.user_id)}</span> · ${esc(user.tier)} tier${user.is_guest ? " · guest" : ""}
      · ${row ? `${row.numbers.map(esc).join(", ") || "no number"} · ${row.calls} calls · ${row.memories} active memories · ` : ""}last call ${when(user.last_interaction)}</p>
    <div class="columns">
      <section aria-labelledby="summary-title" class="panel">
        <h2 id="summary-title">Summary</h2>
        <p>${esc(user.summary || "No summary yet.")}</p>
        <h3>Profile</h3>
        ${profileList(user.profile)}
      </section>
      <section aria-labelledby="session-title" class="panel">
        <h2 id="session-title">Session history</h2>
        ${sessionList(session.interactions)}
      </section>
    </div>
    <section aria-labelledby="graph-title" class="panel">
      <h2 id="graph-title">Memory graph</h2>
      <p class="muted">Active memories, coloured by sector; lines are links, wider for stronger
        weights. Select a node (Tab, then Enter) to jump to the memory.</p>
      <div id="graph"></div>
    </section>
    <section aria-labelledby="memories-title" class="panel">
      <h2 id="memories-title">Memories</h2>
      <form class="inline-form" id="state-filter">
        <label for="state">Show</label>
        <select id="state">
          ${["active", "paused", "archived", "superseded", "all"].map((s) =>
            `<option value="${s}" ${s === stateFilter ? "selected" : ""}>${s}</option>`).join("")}
        </select>
      </form>
      ${memories.memories.length
        ? `<ul class="memories">${memories.memories.map(memoryCard).join("")}</ul>`
        : `<p class="empty">No ${esc(stateFilter)} memories.</p>`}
    </section>
    <section aria-labelledby="calls-title" class="panel">
      <h2 id="calls-title">Calls</h2>
      ${callRows(calls.conversations)}
    </section>`;

  drawGraph(view.querySelector("#graph"), graphMemories, (m) => {
    const card = document.getElementById(`memory-${m.id}`);
    if (card) {
      card.scrollIntoView({ block: "center" });
      card.classList.add("flash");
      setTimeout(() => card.classList.remove("flash"), 1500);
    } else {
      toast(`Memory #${m.id}: ${m.content}`);
    }
  });

  view.querySelector("#state").addEventListener("change", (event) => {
    callerPage(userId, event.target.value).catch(fail);
  });

  view.querySelectorAll("li.memory").forEach((item) => {
    const id = item.dataset.memoryId;
    const base = `/v1/users/${uid}/memories/${id}`;
    const reload = (message) => {
      toast(message);
      return callerPage(userId, stateFilter).then(() => {
        (document.querySelector(`#memory-${id} button`) || view.querySelector("#memories-title"))?.focus();
      });
    };
    item.querySelector("form.salience").addEventListener("submit", async (event) => {
      event.preventDefault();
      const value = Number(item.querySelector("input[type=number]").value);
      if (!(value >= 0 && value <= 1)) { toast("Salience is a number from 0 to 1", "error"); return; }
      await api(base, { method: "PATCH", body: { salience: value } }).catch(fail);
      toast(`Salience of #${id} set to ${value}`);
    });
    item.addEventListener("click", async (event) => {
      const button = event.target.closest("button[data-action]");
      if (!button) return;
      const action = button.dataset.action;
      try {
        if (action === "sources") {
          const box = item.querySelector(".sources");
          const open = button.getAttribute("aria-expanded") === "true";
          if (!open) box.innerHTML = sourcesHtml((await api(`/v1/console/users/${uid}/memories/${id}/sources`)).sources);
          box.hidden = open;
          button.setAttribute("aria-expanded", String(!open));
          button.textContent = open ? "Show sources" : "Hide sources";
        } else if (action === "pause" || action === "archive" || action === "resume") {
          await api(`${base}/${action}`, { method: "POST" });
          await reload(`Memory #${id}: ${action === "resume" ? "active again" : action + "d"}`);
        } else if (action === "delete") {
          if (!confirm(`Delete memory #${id} for good? Archive keeps it for the record.`)) return;
          await api(base, { method: "DELETE" });
          await reload(`Memory #${id} deleted`);
        }
      } catch (error) {
        fail(error);
      }
    });
  });
}

// --- calls ----------------------------------------------------------------------------------
async function callsPage() {
  setTitle("Calls");
  const recent = await api("/v1/conversations?limit=50");
  view.innerHTML = `<h1>Calls</h1>
    <section aria-labelledby="calls-list"><h2 id="calls-list">Most recent calls</h2>${callRows(recent.conversations)}</section>`;
}

async function callPage(conversationId) {
  const call = await api(`/v1/console/conversations/${enc(conversationId)}`);
  setTitle(`Call ${conversationId}`);
  const extracted = call.turns.reduce((n, t) => n + t.memories.length, 0);
  view.innerHTML = `
    <nav aria-label="Breadcrumb" class="crumbs"><a href="#/calls">Calls</a> › <span aria-current="page" class="mono">${esc(call.conversation_id)}</span></nav>
    <h1>${esc(call.title || "Call")} <span class="muted mono small">${esc(call.conversation_id)}</span></h1>
    <p>${when(call.start_time)} · ${call.duration_secs ?? "—"} s · ${esc(call.call_successful || call.status)} ·
      caller <a href="#/caller/${enc(call.user_id)}">${esc(call.user_name || call.user_id)}</a> · agent <span class="mono">${esc(call.agent_id)}</span></p>
    ${call.summary ? `<p class="panel">${esc(call.summary)}</p>` : ""}
    <section aria-labelledby="transcript-title">
      <h2 id="transcript-title">Transcript <span class="muted small">(${call.turns.length} turns, ${extracted} memories extracted)</span></h2>
      <ol class="transcript">${call.turns.map((t) => `<li class="turn role-${esc(t.role)}" id="turn-${t.index}">
        <div class="line"><span class="who">${esc(t.role)} <span class="muted">#${t.index} · ${t.time_in_call_secs ?? 0} s</span></span>
          <span class="said">${esc(t.message || "(tool turn)")}</span></div>
        ${t.memories.length ? `<ul class="extracted" aria-label="Memories extracted from turn ${t.index}">${t.memories.map((m) => `<li>
          ${sectorBadge(m.sector)} ${m.state !== "active" ? stateBadge(m.state) : ""} ${esc(m.content)}
          <span class="muted">#${m.id} · salience ${m.salience}</span></li>`).join("")}</ul>` : ""}
      </li>`).join("")}</ol>
      ${call.memories_without_turns.length ? `<h3>Memories from this call without a turn</h3><ul>${call.memories_without_turns.map((m) => `<li>${sectorBadge(m.sector)} ${esc(m.content)}</li>`).join("")}</ul>` : ""}
    </section>`;
}

// --- queue ----------------------------------------------------------------------------------
async function queuePage() {
  setTitle("Queue");
  const q = await api("/v1/console/queue");
  const counts = Object.entries(q.counts).map(([k, v]) => `<dt>${esc(k.replace("_", " "))}</dt><dd>${v}</dd>`).join("");
  view.innerHTML = `
    <h1>Queue</h1>
    <ul class="cards" aria-label="Queue figures">
      <li><span class="figure" id="queue-depth">${q.depth}</span> waiting or running</li>
      <li><span class="figure">${ago(q.oldest_pending_age_secs)}</span> oldest pending</li>
      ${q.throughput.map((t) => `<li><span class="figure">${t.completed}</span> done in the last ${t.window_minutes} min
        <span class="muted">(${t.per_minute}/min)</span></li>`).join("")}
      <li><span class="figure" id="dead-count">${q.counts.dead_letter}</span> dead letters</li>
    </ul>
    <section aria-labelledby="counts-title" class="panel"><h2 id="counts-title">Events by status</h2><dl class="pairs">${counts}</dl></section>
    <section aria-labelledby="dead-title" class="panel">
      <h2 id="dead-title">Dead letters</h2>
      ${q.dead_letters.length ? `
        <p><button type="button" id="replay-all" class="secondary">Replay all ${q.dead_letters.length}</button></p>
        <table class="list" id="dead-letters"><caption class="sr-only">Dead-lettered events</caption>
        <thead><tr><th scope="col">Event</th><th scope="col">Call</th><th scope="col">Error</th>
          <th scope="col">Attempts</th><th scope="col">Since</th><th scope="col"><span class="sr-only">Action</span></th></tr></thead>
        <tbody>${q.dead_letters.map((e) => `<tr data-event-id="${e.id}">
          <td class="mono">#${e.id} ${esc(e.event_type)}</td>
          <td>${e.conversation_id ? `<span class="mono">${esc(e.conversation_id)}</span>` : "—"}</td>
          <td><strong>${esc(e.error_class || "error")}</strong><div class="error-text">${esc(e.error_message || "")}</div></td>
          <td class="num">${e.retry_count}</td><td>${when(e.processed_at || e.created_at)}</td>
          <td><button type="button" data-replay="${e.id}" aria-label="Replay event ${e.id}">Replay</button></td>
        </tr>`).join("")}</tbody></table>` : `<p class="empty">No dead letters.</p>`}
    </section>
    <p class="muted">Updated ${when(q.generated_at)}; refreshes every 10 s.</p>`;
  view.querySelectorAll("button[data-replay]").forEach((button) => {
    button.addEventListener("click", async () => {
      try {
        await api(`/v1/queue/events/${button.dataset.replay}/retry`, { method: "POST" });
        toast(`Event #${button.dataset.replay} requeued`);
        await queuePage();
        view.querySelector("#dead-title").focus?.();
      } catch (error) { fail(error); }
    });
  });
  view.querySelector("#replay-all")?.addEventListener("click", async () => {
    try {
      const result = await api("/v1/console/queue/dead-letters/replay", { method: "POST" });
      toast(`${result.replayed} events requeued`);
      await queuePage();
    } catch (error) { fail(error); }
  });
}

// --- health ---------------------------------------------------------------------------------
const KEY_METRICS = [
  ["webhook_queue_depth", "Queue depth"],
  ["webhook_dead_letters", "Dead letters"],
  ["webhook_queue_oldest_pending_age_seconds", "Oldest pending (s)"],
  ["worker_heartbeats_alive", "Workers alive"],
  ["webhook_events_total", "Webhooks received"],
  ["queue_claims_total", "Events claimed"],
  ["queue_dead_letters_total", "Events dead-lettered"],
  ["memory_query_total", "Memory queries"],
  ["memory_query_latency_seconds_count", "Memory queries timed"],
  ["conversation_init_total", "Conversation inits"],
  ["conversation_init_fallbacks_total", "Init fallbacks"],
  ["llm_fallbacks_total", "LLM fallbacks"],
  ["sqlite_db_size_bytes", "SQLite size (bytes)"],
  ["sqlite_wal_size_bytes", "SQLite WAL (bytes)"],
];

export function parseMetrics(text) {
  const sums = new Map();
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/);
    if (!match) continue;
    const value = Number(match[3]);
    if (Number.isFinite(value)) sums.set(match[1], (sums.get(match[1]) ?? 0) + value);
  }
  return sums;
}

function quantile(sums, name) {
  const count = sums.get(`${name}_count`), total = sums.get(`${name}_sum`);
  return count ? `${((total / count) * 1000).toFixed(1)} ms mean over ${count}` : "—";
}

async function healthPage() {
  setTitle("Health");
  const [health, text] = await Promise.all([
    api("/health", { auth: false }),
    metricsText().catch(() => ""),
  ]);
  const sums = parseMetrics(text);
  const checkRows = Object.entries(health.checks).map(([name, check]) => {
    const details = Object.entries(check).filter(([k]) => k !== "status")
      .map(([k, v]) => `${esc(k)}: ${esc(typeof v === "object" ? JSON.stringify(v) : v)}`).join("; ");
    return `<tr><th scope="row">${esc(name)}</th><td>${stateBadge(check.status)}</td><td class="wrap">${details}</td></tr>`;
  }).join("");
  view.innerHTML = `
    <h1>Health</h1>
    <p class="overall">Overall: ${stateBadge(health.status)}</p>
    <section aria-labelledby="checks-title" class="panel"><h2 id="checks-title">Checks</h2>
      <table class="list"><thead><tr><th scope="col">Check</th><th scope="col">Status</th><th scope="col">Details</th></tr></thead>
      <tbody>${checkRows}</tbody></table></section>
    <section aria-labelledby="metrics-title" class="panel"><h2 id="metrics-title">Key metrics</h2>
      ${text ? `<dl class="pairs">${KEY_METRICS.filter(([name]) => sums.has(name)).map(([name, label]) =>
        `<dt>${esc(label)} <span class="muted mono">${esc(name)}</span></dt><dd>${sums.get(name)}</dd>`).join("")}
        <dt>Memory query latency</dt><dd>${quantile(sums, "memory_query_latency_seconds")}</dd>
        <dt>Queue job duration</dt><dd>${quantile(sums, "queue_job_duration_seconds")}</dd>
        <dt>Conversation-init latency</dt><dd>${quantile(sums, "conversation_init_latency_seconds")}</dd>
      </dl>` : `<p class="empty">/metrics is not reachable from here.</p>`}
    </section>`;
}

// --- routing --------------------------------------------------------------------------------
function fail(error) {
  if (error instanceof ApiError && error.status === 401) {
    showLogin("Your token was refused (revoked or expired?). Sign in again.");
    return;
  }
  toast(error.message || String(error), "error");
}

function markNav(section) {
  nav.querySelectorAll("a").forEach((a) => {
    if (a.dataset.section === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
}

async function route() {
  clearInterval(refreshTimer);
  if (!token()) { showLogin(); return; }
  loginSection.hidden = true;
  nav.hidden = false;
  logoutButton.hidden = false;
  const [, section = "callers", arg = ""] = location.hash.split("/");
  const param = decodeURIComponent(arg);
  const pages = {
    callers: () => callersPage(),
    caller: () => callerPage(param),
    calls: () => callsPage(),
    call: () => callPage(param),
    queue: () => queuePage(),
    health: () => healthPage(),
  };
  const page = pages[section] ?? pages.callers;
  markNav({ caller: "callers", call: "calls" }[section] ?? section);
  view.setAttribute("aria-busy", "true");
  try {
    await page();
    focusHeading();
    if (section === "queue") refreshTimer = setInterval(() => queuePage().catch(fail), 10000);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      view.innerHTML = `<h1>Not found</h1><p>${esc(error.message)}</p><p><a href="#/callers">Back to callers</a></p>`;
    } else {
      view.innerHTML = `<h1>Something went wrong</h1><p class="error">${esc(error.message)}</p>`;
      fail(error);
    }
  } finally {
    view.removeAttribute("aria-busy");
  }
}

window.addEventListener("hashchange", route);
route();
