// hachat agent desktop: plain JavaScript, no build step. It talks to the
// agent API (/agent/v1/...) and listens on its push channel (Server-Sent
// Events). Every chat event carries its index: the transcript is rendered in
// index order and an event seen twice (after a reconnect) is shown once.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

const S = {
  token: sessionStorage.getItem("hachat.token") || "",
  me: null,          // agent JSON
  es: null,          // EventSource
  chats: new Map(),  // chatId -> {info, panel, participantId, ended}
  active: "",
  liveTimer: 0,
};

function setStatus(text, kind) {
  const el = $("#status");
  el.textContent = text;
  el.className = "status" + (kind ? " " + kind : "");
}

// api calls the agent API; it throws {status, message} on errors.
async function api(method, path, body) {
  const opts = { method, headers: {} };
  if (S.token) opts.headers["Authorization"] = "Bearer " + S.token;
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch("/agent/v1" + path, opts);
  } catch (e) {
    throw { status: 0, message: "network error: " + e.message };
  }
  let data = {};
  try { data = await resp.json(); } catch (e) { /* empty body */ }
  if (!resp.ok) throw { status: resp.status, message: data.error || resp.statusText };
  return data;
}

function newId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Date.now().toString(36) + Math.random().toString(36).slice(2);
}

// ---- login ----

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("#login-error").hidden = true;
  try {
    const out = await api("POST", "/login", {
      agentId: $("#agentId").value.trim(),
      password: $("#password").value,
      nickname: $("#nickname").value.trim(),
    });
    $("#password").value = "";
    S.token = out.token;
    sessionStorage.setItem("hachat.token", S.token);
    enterDesk(out);
  } catch (e) {
    $("#login-error").textContent = "Login failed: " + e.message;
    $("#login-error").hidden = false;
  }
});

$("#logout").addEventListener("click", async () => {
  try {
    await api("POST", "/logout");
    leaveDesk("Logged out");
  } catch (e) {
    setStatus("Logout refused: " + e.message, "warn");
  }
});

function leaveDesk(msg) {
  if (S.es) S.es.close();
  S.es = null;
  S.token = "";
  sessionStorage.removeItem("hachat.token");
  clearInterval(S.liveTimer);
  S.chats.clear();
  $("#chats").textContent = "";
  $("#tabs").textContent = "";
  $("#offers").textContent = "";
  $("#desk").hidden = true;
  $("#login-view").hidden = false;
  setStatus(msg || "Not logged in");
}

function enterDesk(state) {
  $("#login-view").hidden = true;
  $("#desk").hidden = false;
  applyState(state);
  connectPush();
  if (S.me && S.me.role === "supervisor") {
    $("#live-view").hidden = false;
    $("#ready").hidden = true;
    refreshLive();
    S.liveTimer = setInterval(refreshLive, 5000);
  }
}

// ---- push channel ----

function connectPush() {
  if (S.es) S.es.close();
  const es = new EventSource("/agent/v1/events?token=" + encodeURIComponent(S.token));
  S.es = es;
  es.onopen = () => setStatus("Connected", "ok");
  es.onerror = () => {
    if (es.readyState === EventSource.CLOSED) {
      // Refused: back to the login form only when the token is gone (401);
      // anything else (an Interaction Server taking over, 503) is retried.
      setStatus("Connection to the Interaction Server lost, reconnecting…", "warn");
      api("GET", "/state").then(() => setTimeout(connectPush, 1000), (e) => {
        if (e.status === 401) leaveDesk("Session expired, please log in");
        else setTimeout(connectPush, 1000);
      });
      return;
    }
    setStatus("Connection to the Interaction Server lost, reconnecting…", "warn");
  };
  const on = (name, fn) => es.addEventListener(name, (e) => fn(JSON.parse(e.data)));
  on("state", applyState);
  on("offer", (o) => addOffer(o));
  on("offerWithdrawn", (o) => removeOffer(o.chatId, o.reason));
  on("chatAdded", (c) => ensureChat(c));
  on("chatRemoved", (c) => chatRemoved(c.chatId, c.reason));
  on("chat", (ev) => addEvent(ev));
  on("queue", (q) => { $("#queue").textContent = q.size; });
  on("reconnecting", (n) => setStatus(n.message + (n.chatId ? " (" + n.chatId + ")" : ""), "warn"));
  on("reconnected", (n) => setStatus(n.message, "ok"));
  on("loggedOut", () => leaveDesk("Logged out"));
}

function applyState(st) {
  S.me = st.agent;
  $("#me").textContent = st.agent.nickname + " (" + st.agent.agentId + ", " + st.agent.role + ")";
  const ready = st.agent.state === "ready";
  const rb = $("#ready");
  rb.setAttribute("aria-pressed", String(ready));
  rb.textContent = ready ? "Ready (click for not ready)" : "Go ready";
  rb.dataset.ready = String(ready);
  $("#queue").textContent = st.queue.size;
  $("#offers").textContent = "";
  for (const o of st.offers) addOffer(o);
  const keep = new Set(st.chats.map((c) => c.chatId));
  for (const [id, c] of S.chats) if (!keep.has(id) && !c.ended) dropChat(id);
  for (const c of st.chats) ensureChat(c);
  if (!st.coreConnected) setStatus("Chat core not connected, reconnecting…", "warn");
}

$("#ready").addEventListener("click", async () => {
  const ready = $("#ready").dataset.ready === "true";
  try {
    applyState(await api("POST", ready ? "/notready" : "/ready"));
  } catch (e) {
    setStatus("Could not change readiness: " + e.message, "warn");
  }
});

// ---- offers ----

function addOffer(o) {
  removeOffer(o.chatId);
  const li = document.createElement("li");
  li.dataset.chat = o.chatId;
  const label = document.createElement("span");
  label.textContent = (o.customer || "customer") + (o.subject ? " — " + o.subject : "") + " (" + o.chatId + ")";
  const acc = document.createElement("button");
  acc.className = "accept";
  acc.dataset.chat = o.chatId;
  acc.textContent = "Accept";
  acc.addEventListener("click", async () => {
    acc.disabled = true;
    try {
      ensureChat(await api("POST", "/offers/" + encodeURIComponent(o.chatId) + "/accept"));
      removeOffer(o.chatId);
    } catch (e) {
      setStatus("Accept failed: " + e.message, "warn");
      if (e.status === 404 || e.status === 409) removeOffer(o.chatId);
      else acc.disabled = false;
    }
  });
  const rej = document.createElement("button");
  rej.className = "reject";
  rej.dataset.chat = o.chatId;
  rej.textContent = "Reject";
  rej.addEventListener("click", async () => {
    try { await api("POST", "/offers/" + encodeURIComponent(o.chatId) + "/reject"); } catch (e) { /* withdrawn already */ }
    removeOffer(o.chatId);
  });
  const timer = document.createElement("span");
  timer.className = "expires";
  li.append(label, acc, rej, timer);
  $("#offers").append(li);
  const until = Date.parse(o.expiresAt);
  const tick = () => {
    if (!li.isConnected) return;
    timer.textContent = Math.max(0, Math.round((until - Date.now()) / 1000)) + " s";
    setTimeout(tick, 500);
  };
  tick();
}

function removeOffer(chatId) {
  for (const li of $$("#offers li")) if (li.dataset.chat === chatId) li.remove();
}

// ---- chats ----

function ensureChat(c) {
  let ch = S.chats.get(c.chatId);
  if (!ch) {
    const panel = $("#chat-template").content.firstElementChild.cloneNode(true);
    panel.dataset.chat = c.chatId;
    ch = { info: c, panel, participantId: c.participantId, ended: false, typingTimer: 0, typingSent: false };
    S.chats.set(c.chatId, ch);
    wireChat(ch);
    $("#chats").append(panel);
    const tab = document.createElement("button");
    tab.type = "button";
    tab.dataset.chat = c.chatId;
    tab.addEventListener("click", () => activate(c.chatId));
    $("#tabs").append(tab);
    ch.tab = tab;
  }
  ch.info = c;
  ch.participantId = c.participantId;
  ch.ended = false;
  ch.panel.classList.remove("ended");
  $(".chat-title", ch.panel).textContent = (c.customer || "customer") + (c.subject ? " — " + c.subject : "");
  $(".chat-mode", ch.panel).textContent = c.mode === "agent" ? "" : "(" + c.mode + ")";
  showUserData($(".chat-userdata", ch.panel), c.userData);
  ch.tab.textContent = c.customer || c.chatId;
  const agentMode = c.mode === "agent";
  $(".transfer", ch.panel).hidden = !agentMode;
  $(".transfer-to", ch.panel).hidden = !agentMode;
  $(".reply", ch.panel).hidden = c.mode === "monitor";
  if (!S.active || !S.chats.has(S.active)) activate(c.chatId);
  return ch;
}

// showUserData lists what the customer's page attached at chat start
// (userData[...] of the GMS request chat: email, order, language...), one
// dt/dd pair per key in key order; each dd carries data-key for tests.
function showUserData(dl, ud) {
  dl.replaceChildren();
  const keys = Object.keys(ud || {}).sort();
  for (const k of keys) {
    const dt = document.createElement("dt");
    dt.textContent = k;
    const dd = document.createElement("dd");
    dd.dataset.key = k;
    dd.textContent = ud[k];
    dl.append(dt, dd);
  }
  dl.hidden = keys.length === 0;
}

function activate(chatId) {
  S.active = chatId;
  for (const [id, c] of S.chats) {
    c.panel.hidden = id !== chatId;
    c.tab.classList.toggle("active", id === chatId);
    if (id === chatId) c.tab.classList.remove("unread");
  }
}

function dropChat(chatId) {
  const ch = S.chats.get(chatId);
  if (!ch) return;
  ch.panel.remove();
  ch.tab.remove();
  S.chats.delete(chatId);
  if (S.active === chatId) {
    S.active = "";
    const next = S.chats.keys().next();
    if (!next.done) activate(next.value);
  }
}

function chatRemoved(chatId, reason) {
  const ch = S.chats.get(chatId);
  if (!ch) return;
  if (reason === "ended" || reason === "removed") {
    // Keep the transcript on screen until the agent dismisses it.
    ch.ended = true;
    ch.panel.classList.add("ended");
    $(".chat-conn", ch.panel).textContent = reason === "ended" ? "chat ended" : "removed from chat";
    $(".reply", ch.panel).hidden = true;
    $$(".chat-actions button:not(.dismiss), .chat-actions input", ch.panel).forEach((b) => { b.hidden = true; });
    $(".dismiss", ch.panel).hidden = false;
    return;
  }
  dropChat(chatId);
}

function label(ev) {
  const who = ev.from ? ev.from.nickname || ev.from.type : "";
  switch (ev.kind) {
    case "Message": return [who, ev.text];
    case "PushUrl": return [who, "pushed " + ev.text];
    case "ParticipantJoined": return ["", who + " joined"];
    case "ParticipantLeft": return ["", who + " left"];
    case "ParticipantDisconnected": return ["", who + " disconnected" + (ev.attrs && ev.attrs.reason ? " (" + ev.attrs.reason + ")" : "")];
    case "ParticipantReconnected": return ["", who + " reconnected"];
    case "Notice": return ["", (who ? who + ": " : "") + (ev.text || (ev.attrs && ev.attrs.noticeType) || "notice")];
    case "TranscriptSaved": return ["", "transcript saved"];
    case "TranscriptSaveFailed": return ["", "transcript save failed"];
    case "SessionStarted": return ["", "chat started"];
    case "SessionEnded": return ["", "chat ended"];
    default: return null;
  }
}

function addEvent(ev) {
  const ch = S.chats.get(ev.chatId);
  if (!ch) return;
  const fromCustomer = ev.from && ev.from.type === "Customer";
  if (ev.kind === "TypingStarted" || ev.kind === "TypingStopped") {
    if (fromCustomer) $(".typing", ch.panel).hidden = ev.kind === "TypingStopped";
    return;
  }
  if (ev.kind === "Message" && fromCustomer) $(".typing", ch.panel).hidden = true;
  const tr = $(".transcript", ch.panel);
  if (tr.querySelector('.msg[data-index="' + ev.index + '"]')) return; // already shown
  const parts = label(ev);
  if (!parts) return;
  const div = document.createElement("div");
  div.className = "msg";
  div.dataset.index = ev.index;
  div.dataset.kind = ev.kind;
  if (!ev.from || ev.kind !== "Message" && ev.kind !== "PushUrl") div.classList.add("system");
  if (ev.visibility === "internal") div.classList.add("internal");
  if (ev.from && ev.from.participantId === ch.participantId) div.classList.add("mine");
  if (parts[0]) {
    const w = document.createElement("span");
    w.className = "who";
    w.textContent = parts[0] + ":";
    div.append(w);
  }
  const t = document.createElement("span");
  t.className = "text";
  t.textContent = parts[1];
  div.append(t);
  // Insert in index order.
  let before = null;
  for (const m of $$(".msg", tr)) if (Number(m.dataset.index) > ev.index) { before = m; break; }
  tr.insertBefore(div, before);
  tr.scrollTop = tr.scrollHeight;
  if (ev.clientMessageId) {
    for (const p of $$(".pending", ch.panel)) if (p.dataset.id === ev.clientMessageId) p.remove();
  }
  if (ev.kind === "SessionEnded") chatRemoved(ev.chatId, "ended");
  if (S.active !== ev.chatId) ch.tab.classList.add("unread");
}

function wireChat(ch) {
  const p = ch.panel;
  const id = () => encodeURIComponent(ch.info.chatId);
  const input = $(".reply-input", p);
  $(".reply", p).addEventListener("submit", (e) => {
    e.preventDefault();
    const text = input.value;
    if (!text.trim()) return;
    input.value = "";
    sendReliably(ch, text, newId());
    stopTyping(ch);
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) {
      e.preventDefault();
      $(".reply-send", p).click();
    }
  });
  input.addEventListener("input", () => {
    if (ch.info.mode !== "agent") return;
    if (!ch.typingSent) {
      ch.typingSent = true;
      api("POST", "/chats/" + id() + "/typing", { typing: true }).catch(() => {});
    }
    clearTimeout(ch.typingTimer);
    ch.typingTimer = setTimeout(() => stopTyping(ch), 3000);
  });
  $(".transfer", p).addEventListener("click", async () => {
    const to = $(".transfer-to", p).value.trim();
    if (!to) return;
    try {
      await api("POST", "/chats/" + id() + "/transfer", { toAgentId: to });
    } catch (e) {
      setStatus("Transfer failed: " + e.message, "warn");
    }
  });
  $(".leave-chat", p).addEventListener("click", async () => {
    try { await api("POST", "/chats/" + id() + "/leave"); } catch (e) { setStatus("Leave failed: " + e.message, "warn"); }
  });
  $(".close-chat", p).addEventListener("click", async () => {
    try { await api("POST", "/chats/" + id() + "/close"); } catch (e) { setStatus("Close failed: " + e.message, "warn"); }
  });
  $(".dismiss", p).addEventListener("click", () => dropChat(ch.info.chatId));
}

function stopTyping(ch) {
  clearTimeout(ch.typingTimer);
  if (!ch.typingSent) return;
  ch.typingSent = false;
  api("POST", "/chats/" + encodeURIComponent(ch.info.chatId) + "/typing", { typing: false }).catch(() => {});
}

// sendReliably sends a reply and, on a retryable error, resends it with the
// same clientMessageId, so the chat core stores it once.
async function sendReliably(ch, text, clientMessageId) {
  const pending = document.createElement("div");
  pending.className = "pending";
  pending.dataset.id = clientMessageId;
  pending.textContent = "sending: " + text;
  $(".pending-list", ch.panel).append(pending);
  let delay = 250;
  for (let attempt = 1; ; attempt++) {
    try {
      await api("POST", "/chats/" + encodeURIComponent(ch.info.chatId) + "/send", { message: text, clientMessageId });
      pending.textContent = "sent: " + text; // removed when the event arrives
      return;
    } catch (e) {
      const retry = e.status === 0 || e.status === 429 || e.status === 502 || e.status === 503;
      if (!retry || attempt >= 20) {
        pending.classList.add("failed");
        pending.textContent = "not sent (" + e.message + "): " + text + " ";
        const again = document.createElement("button");
        again.type = "button";
        again.textContent = "Resend";
        again.addEventListener("click", () => { pending.remove(); sendReliably(ch, text, clientMessageId); });
        pending.append(again);
        return;
      }
      pending.textContent = "retrying (" + e.message + "): " + text;
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 2000);
    }
  }
}

// ---- supervisor ----

async function refreshLive() {
  let out;
  try { out = await api("GET", "/chats"); } catch (e) { return; }
  const body = $("#live tbody");
  body.textContent = "";
  for (const c of out.chats) {
    const tr = document.createElement("tr");
    tr.dataset.chat = c.chatId;
    for (const v of [c.chatId, c.customer || "", c.state, c.agentId || "", c.supervisors.join(", ")]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.append(td);
    }
    const td = document.createElement("td");
    for (const mode of ["monitor", "coach"]) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = mode;
      b.dataset.chat = c.chatId;
      b.textContent = mode === "monitor" ? "Monitor" : "Coach";
      b.addEventListener("click", async () => {
        try { ensureChat(await api("POST", "/chats/" + encodeURIComponent(c.chatId) + "/" + mode)); refreshLive(); }
        catch (e) { setStatus(mode + " failed: " + e.message, "warn"); }
      });
      td.append(b);
    }
    tr.append(td);
    body.append(tr);
  }
}
$("#refresh-live").addEventListener("click", refreshLive);

// ---- start: resume a session kept in this tab ----

(async () => {
  // Back from the identity provider: the session token is in the fragment,
  // which never reaches a server; keep it in this tab and drop it from the URL.
  const m = /^#session=([0-9a-f]+)$/.exec(location.hash);
  if (m) {
    S.token = m[1];
    sessionStorage.setItem("hachat.token", S.token);
    history.replaceState(null, "", location.pathname);
  }
  try {
    const opts = await api("GET", "/login-options");
    $("#oidc-view").hidden = !opts.oidc;
    $("#login-form").hidden = !opts.password;
  } catch (e) { /* keep the password form */ }
  if (!S.token) return;
  try {
    enterDesk(await api("GET", "/state"));
  } catch (e) {
    leaveDesk();
  }
})();
