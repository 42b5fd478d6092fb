// The council's page: ask a question, watch each member's card fill in from POST /v1/council's stream, then the
// council's verdict. Plain DOM, no framework; every text from the server goes in through textContent.
"use strict";

const ROOT = document.documentElement.dataset.root || "";
const KEY_STORE = "council.key";
const $ = (id) => document.getElementById(id);
const state = { authRequired: false, session: null, cards: new Map(), busy: false };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function badge(text, kind) { return el("span", { class: "badge " + kind }, text); }
const fmt = (x, digits = 2) => (typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–");

function key() { return sessionStorage.getItem(KEY_STORE) || ""; }
function headers() {
  const h = { "Content-Type": "application/json" };
  if (key()) h.Authorization = "Bearer " + key();
  return h;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

// An API error body ({"error": {"type", "message", "details"}}) as one line the reader can act on.
async function apiError(response) {
  let text = "";
  try {
    const body = await response.json();
    const e = body.error || {};
    text = e.message || JSON.stringify(body);
    const members = e.details && e.details.members;
    if (members) text += " — " + Object.entries(members).map(([n, why]) => n + ": " + why).join("; ");
  } catch (_) {
    text = response.statusText || "no message";
  }
  const retry = response.headers.get("Retry-After");
  return "Error " + response.status + ": " + text + (retry ? " (retry after " + retry + " s)" : "");
}

// ------------------------------------------------------------------ the key and the session

function needKey(why) {
  $("key-panel").hidden = false;
  $("forget").hidden = true;
  $("who").textContent = why;
  $("key").focus();
}

async function start() {
  let auth;
  try {
    const r = await fetch(ROOT + "/ui/auth");
    if (!r.ok) throw new Error(await apiError(r));
    auth = await r.json();
  } catch (e) {
    showError("The council is not reachable: " + e.message);
    $("who").textContent = "not connected";
    return;
  }
  state.authRequired = !!auth.required;
  if (state.authRequired && !key()) return needKey("this council needs an API key");
  await loadSession();
}

async function loadSession() {
  const r = await fetch(ROOT + "/ui/session", { headers: headers() });
  if (!r.ok) {
    const message = await apiError(r);
    if (r.status === 401) sessionStorage.removeItem(KEY_STORE);
    showError(message);
    if (state.authRequired) needKey("the key was refused");
    return;
  }
  const s = await r.json();
  state.session = s;
  showError("");
  $("key-panel").hidden = true;
  $("forget").hidden = !s.auth;
  $("who").textContent = s.auth ? "key " + s.key + " · tenants: " + s.tenants.join(", ")
    : "open on loopback (no keys configured)";
  fillForm(s);
}

function fillForm(s) {
  const tenant = $("tenant");
  tenant.replaceChildren(...s.tenants.map((t) => el("option", { value: t }, t)));
  if (s.tenant) tenant.value = s.tenant;
  $("k").placeholder = String(s.defaults.k);
  $("k").max = String(s.specialists.length);
  $("orderings").placeholder = String(s.defaults.orderings);
  $("ordering").options[0].textContent = "the council's default (" + s.defaults.ordering + ")";
  $("early-exit").options[0].textContent = "the council's default (" + (s.defaults.early_exit ? "on" : "off") + ")";
  const list = $("examples").querySelector("ul");
  list.replaceChildren(...s.examples.map((q) => {
    const b = el("button", { type: "button" }, q);
    b.addEventListener("click", () => { $("question").value = q; ask(); });
    return el("li", {}, b);
  }));
  $("examples").hidden = s.examples.length === 0;
}

// ------------------------------------------------------------------ the request

function intField(id, name, body) {
  const raw = $(id).value.trim();
  if (raw !== "") body[name] = Number(raw);
}

function requestBody() {
  const body = { question: $("question").value.trim() };
  if ($("tenant").value) body.tenant = $("tenant").value;
  intField("k", "k", body);
  intField("orderings", "orderings", body);
  if ($("ordering").value) body.ordering = $("ordering").value;
  if ($("early-exit").value) body.early_exit = $("early-exit").value === "true";
  if (!$("retrieval").checked) body.use_retrieval = false;
  const docs = $("documents").value.split(/^\s*---\s*$/m).map((d) => d.trim()).filter(Boolean);
  if (docs.length) body.documents = docs.map((text, i) => ({ text, source: "pasted-" + (i + 1) }));
  return body;
}

// A JSON value as a Python literal (JSON's string escapes are Python's too).
function py(v) {
  if (v === null || v === undefined) return "None";
  if (typeof v === "boolean") return v ? "True" : "False";
  if (Array.isArray(v)) return "[" + v.map(py).join(", ") + "]";
  if (typeof v === "object") return "{" + Object.entries(v).map(([k, x]) => JSON.stringify(k) + ": " + py(x)).join(", ") + "}";
  return JSON.stringify(v);
}

function snippets(body) {
  const url = location.origin + ROOT;
  const auth = state.authRequired ? ' -H "Authorization: Bearer $COUNCIL_API_KEY"' : "";
  const json = JSON.stringify(body).replace(/'/g, "'\\''");
  $("curl").textContent = "curl -s " + url + "/v1/council" + auth + " -d '" + json + "'";
  const { question, ...options } = body;
  const args = [py(question)].concat(Object.entries(options).map(([k, v]) => k + "=" + py(v)));
  $("python").textContent = "from council import Client\n\n" +
    (state.authRequired ? "# the key: $COUNCIL_API_KEY, or Client(url, api_key=...)\n" : "") +
    "answer = Client(" + JSON.stringify(url) + ").ask(" + args.join(", ") + ")\n" +
    "print(answer.answer, answer.agreement, answer.abstained)";
  $("snippets").hidden = false;
}

async function ask() {
  if (state.busy) return;
  if (state.authRequired && !key()) {
    showError("This council needs an API key: enter it above before asking.");
    return needKey("this council needs an API key");
  }
  const body = requestBody();
  resetResult();
  snippets(body);
  state.busy = true;
  $("ask").disabled = true;
  $("progress").textContent = "asking the council…";
  try {
    const r = await fetch(ROOT + "/v1/council", {
      method: "POST", headers: headers(), body: JSON.stringify({ ...body, stream: true }),
    });
    if (!r.ok) {
      $("progress").textContent = "";
      return showError(await apiError(r));
    }
    await readStream(r);
  } catch (e) {
    showError("The request failed: " + e.message);
  } finally {
    state.busy = false;
    $("ask").disabled = false;
  }
}

// Server-sent events: "data: {json}" blocks separated by a blank line, "data: [DONE]" last.
async function readStream(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data !== "[DONE]") onEvent(JSON.parse(data));
      }
    }
    if (done) return;
  }
}

function onEvent(ev) {
  if (ev.error) {
    $("progress").textContent = "";
    return showError("Error: " + (ev.error.message || JSON.stringify(ev.error)));
  }
  if (ev.event === "route") {
    for (const name of ev.chosen) addCard(name, ev.scores[name]);
    $("progress").textContent = "asked " + ev.chosen.join(", ") + "; waiting for their answers…";
  } else if (ev.event === "member") {
    fillCard(ev.member);
  } else if (ev.event === "synthesis") {
    $("synthesis").hidden = false;
    $("synthesis-text").textContent += ev.text;
  } else if (ev.event === "answer") {
    showVerdict(ev.answer);
  }
}

// ------------------------------------------------------------------ cards and the verdict

function resetResult() {
  showError("");
  state.cards.clear();
  $("members").replaceChildren();
  $("verdict").hidden = true;
  $("synthesis").hidden = true;
  $("synthesis-text").textContent = "";
  $("result").hidden = false;
}

function addCard(name, score) {
  const card = el("article", { class: "card waiting", "data-member": name, "aria-label": "member " + name },
    el("h3", {}, el("span", { class: "name" }, name), badge("answering…", "waiting")),
    el("p", { class: "facts" }, "route score " + fmt(score, 3)),
    el("p", { class: "answer" }), el("p", { class: "facts detail" }), el("ul", { class: "orderings" }),
    el("p", { class: "trim" }));
  state.cards.set(name, card);
  $("members").append(card);
  return card;
}

function fillCard(m) {
  const card = state.cards.get(m.name) || addCard(m.name, m.route_score);
  const kind = m.cancelled ? "cancelled" : m.error ? "error" : "answered";
  card.className = "card " + kind;
  card.querySelector(".badge").replaceWith(badge(kind === "error" ? "error" : kind, kind === "answered" ? "ok" : kind));
  const answer = card.querySelector(".answer");
  if (m.error) {
    answer.replaceChildren(el("span", { class: "err" }, m.error));
  } else {
    answer.textContent = m.cancelled ? "(cancelled: the council had already decided)" : m.answer;
  }
  card.querySelector(".detail").textContent = m.prompt_tokens + " prompt + " + m.completion_tokens +
    " answer tokens · " + fmt(m.latency_s * 1000, 0) + " ms" + (m.finish_reason ? " · " + m.finish_reason : "") +
    (m.consistency !== null && m.consistency !== undefined ? " · consistency " + fmt(m.consistency) : "");
  const orderings = card.querySelector(".orderings");
  orderings.replaceChildren(...(m.ordering_answers || []).map((a, i) => el("li", {}, "ordering " + (i + 1) + ": " + a)));
}

function showVerdict(a) {
  $("progress").textContent = "";
  const badges = [a.abstained ? badge("abstained", "abstained") : badge("answered", "ok")];
  if (a.degraded) badges.push(badge("degraded", "degraded"));
  if (a.synthesis_failed) badges.push(badge("chairman failed", "error"));
  $("badges").replaceChildren(...badges);
  $("answer").textContent = a.answer;
  $("agreement").value = typeof a.agreement === "number" ? a.agreement : 0;
  $("agreement-value").textContent = fmt(a.agreement);
  $("entropy").textContent = fmt(a.entropy, 3);
  $("timing").textContent = "total " + fmt(a.timings && a.timings.total, 0) + " ms";
  if (a.synthesis) {
    $("synthesis").hidden = false;
    $("synthesis-text").textContent = a.synthesis.text + " — by " + a.synthesis.chairman;
  }
  for (const m of a.members) fillCard(m);
  const byName = new Map(a.members.map((m) => [m.name, m]));
  $("clusters").replaceChildren(...(a.clusters || []).map((names, i) => el("li", {},
    (i === 0 ? "the answer's cluster: " : "") + names.map((n) => n + " (" + ((byName.get(n) || {}).answer || "") + ")")
      .join(", "))));
  showTrims(a);
  showSources(a);
  $("verdict").hidden = false;
}

function showTrims(a) {
  for (const t of a.trims || []) {
    const card = state.cards.get(t.member);
    if (!card) continue;
    card.querySelector(".trim").textContent = "read " + t.used_tokens + " of " + t.budget_tokens + " tokens (" +
      t.ordering + "): kept " + t.kept.length + ", cut " + t.cut.length + ", dropped " + t.dropped.length;
  }
}

function showSources(a) {
  const sources = a.sources || [];
  const trims = a.trims || [];
  $("no-sources").hidden = sources.length > 0;
  $("sources").hidden = sources.length === 0;
  const head = $("sources").querySelector("thead tr");
  head.replaceChildren(...["source", "score", "passage"].concat(trims.map((t) => t.member))
    .map((h) => el("th", { scope: "col" }, h)));
  $("sources").querySelector("tbody").replaceChildren(...sources.map((c) => {
    const read = trims.map((t) => {
      const how = t.kept.includes(c.id) ? "kept" : t.cut.includes(c.id) ? "cut" : t.dropped.includes(c.id) ? "dropped" : "–";
      return el("td", { class: how }, how);
    });
    const text = c.text.length > 160 ? c.text.slice(0, 160) + "…" : c.text;
    return el("tr", {}, el("td", {}, c.source + (c.ephemeral ? " (this request)" : "")), el("td", {}, fmt(c.score, 3)),
      el("td", {}, text), ...read);
  }));
}

// ------------------------------------------------------------------ wiring

document.addEventListener("DOMContentLoaded", () => {
  $("ask-form").addEventListener("submit", (e) => { e.preventDefault(); ask(); });
  $("question").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); ask(); }  // Shift+Enter: a new line
  });
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const value = $("key").value.trim();
    if (!value) return needKey("enter a key");
    sessionStorage.setItem(KEY_STORE, value);
    $("key").value = "";
    loadSession();
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    state.session = null;
    $("tenant").replaceChildren();
    needKey("key forgotten");
  });
  for (const b of document.querySelectorAll("[data-copy]")) {
    b.addEventListener("click", async () => {
      const text = $(b.dataset.copy).textContent;
      try { await navigator.clipboard.writeText(text); b.textContent = "Copied"; }
      catch (_) { b.textContent = "Select the text to copy"; }
    });
  }
  start();
});
