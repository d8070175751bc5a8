// Chat HA web sample: the customer chat of the hachat Web API Server.
// It uses the GMS-style REST API for actions and the Server-Sent Events push
// channel for the live transcript. Sends carry a clientMessageId and are
// resent with the same id on statusCode 1 or a network error, so a failover
// of the chat core never loses or doubles a message.
//
// The same code runs the page webapi serves at / (index.html loads this
// file with data-page) and the widget another site embeds with one script
// tag (widget.js loads this file from webapi and mounts the chat in a
// shadow root): hachatChat.mount(container, {origin, service}).
(function () {
  "use strict";

  // MARKUP is the chat card: a header with the status, the start form,
  // and the chat (transcript, typing line, composer).
  var MARKUP =
    '<header class="top">' +
    '  <div><h1>Chat with us</h1><p class="sub">hachat · Chat HA web sample</p></div>' +
    '  <span id="status" class="status status-idle" role="status" aria-live="polite">Not connected</span>' +
    '</header>' +
    '<div id="banner" class="banner" hidden role="alert">Connection to the chat server lost — reconnecting…</div>' +
    '<form id="start-form" class="start" autocomplete="on">' +
    '  <label for="nickname">Your name</label>' +
    '  <input id="nickname" name="nickname" maxlength="128" required placeholder="e.g. Ada">' +
    '  <label for="subject">What can we help with?</label>' +
    '  <input id="subject" name="subject" maxlength="1024" placeholder="e.g. My order has not arrived">' +
    '  <button id="start" type="submit">Start chat</button>' +
    '  <p id="start-error" class="error" hidden></p>' +
    '</form>' +
    '<section id="chat" class="chat" hidden>' +
    '  <div id="transcript" class="transcript" aria-live="polite"></div>' +
    '  <div id="typing" class="typing" hidden></div>' +
    '  <form id="send-form" class="composer">' +
    '    <textarea id="message" rows="2" maxlength="4096" placeholder="Type a message and press Enter" aria-label="Message"></textarea>' +
    '    <div class="actions">' +
    '      <button id="send" type="submit">Send</button>' +
    '      <button id="end" type="button" class="secondary">End chat</button>' +
    '    </div>' +
    '  </form>' +
    '</section>';

  // The two lines a customer sees for a lost and a regained connection to
  // the chat server, whatever the cause (a failover, a planned switchover,
  // webapi itself restarting): the transcript's own notices of a failover
  // (ParticipantDisconnected / ParticipantReconnected for every participant)
  // stay in the page, hidden, and fold into these two lines.
  var LOST_TEXT = "Disconnected from the chat server — reconnecting…";
  var BACK_TEXT = "Reconnected to the chat server";

  // mount runs one chat in card, an element (or shadow root) that holds
  // MARKUP (it is filled when empty). opts.origin is webapi's origin (""
  // for the page webapi serves itself), opts.service the chat service.
  function mount(card, opts) {
    opts = opts || {};
    var SERVICE = opts.service || "customer-support";
    var BASE = (opts.origin || "") + "/genesys/2/chat/" + encodeURIComponent(SERVICE);
    var STORE = "hachat.chat." + SERVICE;
    var TYPING_IDLE_MS = 3000;

    if (!card.querySelector("#start-form")) { card.innerHTML = MARKUP; }
    var $ = function (id) { return card.querySelector("#" + id); };
    var el = {
      startForm: $("start-form"), nickname: $("nickname"), subject: $("subject"), start: $("start"),
      startError: $("start-error"), chat: $("chat"), transcript: $("transcript"), typing: $("typing"),
      sendForm: $("send-form"), message: $("message"), send: $("send"), end: $("end"),
      status: $("status"), banner: $("banner")
    };

    var chat = null;        // {chatId, userId, secureKey, alias}
    var es = null;          // EventSource
    var seen = {};          // transcript indexes rendered
    var lastIndex = 0;      // highest index received
    var ended = false;
    var agentNames = {};    // participantId -> nickname of agents present
    var typingTimer = null, typingSent = false, agentTypingTimer = null;
    var reopenTimer = null;
    // episode is the current (or last) loss of the chat server: open until
    // the connection is back; noticesBack once the transcript's reconnected
    // notices of it have arrived (they may come after the connection is back).
    var episode = null;

    function setStatus(kind, text) {
      el.status.className = "status status-" + kind;
      el.status.textContent = text;
    }

    function showBanner(text) {
      el.banner.textContent = text;
      el.banner.hidden = false;
    }

    function hideBanner() { el.banner.hidden = true; }

    function sleep(ms) { return new Promise(function (r) { setTimeout(r, ms); }); }

    function newId() {
      if (window.crypto && crypto.randomUUID) { return "web-" + crypto.randomUUID(); }
      return "web-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
    }

    // post calls one API route once. It resolves with {http, body} or rejects
    // on a network error.
    function post(path, params) {
      return fetch(BASE + path, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(params),
        cache: "no-store"
      }).then(function (res) {
        return res.json().catch(function () { return { statusCode: 1 }; }).then(function (body) {
          return { http: res.status, body: body };
        });
      });
    }

    // call posts with retries: statusCode 1 and network errors are retried
    // with the very same parameters (clientMessageId included) until it
    // succeeds, fails for good (statusCode 2) or attempts run out.
    function call(op, params, attempts) {
      attempts = attempts || 30;
      var path = op ? "/" + encodeURIComponent(chat.chatId) + "/" + op : "";
      var full = Object.assign({ userId: chat.userId, secureKey: chat.secureKey, alias: chat.alias }, params || {});
      var delay = 250;
      function attempt(n) {
        return post(path, full).then(function (r) {
          if (r.body.statusCode === 0) { return r.body; }
          if (r.body.statusCode === 2 || n >= attempts) {
            var e = new Error(adviceOf(r.body) || ("HTTP " + r.http));
            e.body = r.body;
            throw e;
          }
          return retry(n);
        }, function (err) {
          if (n >= attempts) { throw err; }
          return retry(n);
        });
      }
      function retry(n) {
        return sleep(delay).then(function () { delay = Math.min(delay * 2, 4000); return attempt(n + 1); });
      }
      return attempt(1);
    }

    function adviceOf(body) {
      return body && body.errors && body.errors.length ? body.errors[0].advice : "";
    }

    function fmtTime(ms) {
      if (!ms) { return ""; }
      var d = new Date(ms);
      return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    }

    // place inserts a transcript element in index order; elements without an
    // index (pending sends, local notices) stay at the end.
    function place(node, index) {
      var kids = el.transcript.children;
      for (var i = 0; i < kids.length; i++) {
        var k = kids[i];
        var ki = k.getAttribute("data-index");
        if (index && ki !== null && Number(ki) > index) { el.transcript.insertBefore(node, k); return; }
        if (index && k.classList.contains("pending")) { el.transcript.insertBefore(node, k); return; }
      }
      el.transcript.appendChild(node);
    }

    function scrollDown() { el.transcript.scrollTop = el.transcript.scrollHeight; }

    function bubble(cls, who, text, time) {
      var d = document.createElement("div");
      d.className = "msg " + cls;
      if (who) {
        var w = document.createElement("span");
        w.className = "who";
        w.textContent = who;
        if (time) {
          var t = document.createElement("span");
          t.className = "time";
          t.textContent = fmtTime(time);
          w.appendChild(t);
        }
        d.appendChild(w);
      }
      d.appendChild(document.createTextNode(text));
      return d;
    }

    function systemLine(text, extra, index, type) {
      var d = document.createElement("div");
      d.className = "msg msg-system" + (extra ? " " + extra : "");
      d.textContent = text;
      if (index) { d.setAttribute("data-index", String(index)); }
      if (type) { d.setAttribute("data-type", type); }
      return d;
    }

    // localNotice shows a notice of this page (not of the transcript).
    function localNotice(text, extra) {
      var d = systemLine(text, (extra || "") + " local");
      place(d, 0);
      scrollDown();
    }

    function whoName(m) {
      var f = m.from || {};
      if (f.participantId === chat.userId) { return "You"; }
      return f.nickname || f.type || "Someone";
    }

    function render(m) {
      if (m.index && seen[m.index]) { return; }
      if (m.index) {
        seen[m.index] = true;
        if (m.index > lastIndex) { lastIndex = m.index; }
      }
      var f = m.from || {};
      var mine = f.participantId === chat.userId;
      var node = null;
      switch (m.type) {
        case "Message":
          if (mine && m.clientMessageId) {
            var p = el.transcript.querySelector('.pending[data-cmid="' + cssEscape(m.clientMessageId) + '"]');
            if (p) { p.remove(); }
          }
          node = bubble(f.type === "Client" ? "msg-client" : "msg-agent", mine ? "You" : (f.nickname || f.type), m.text, m.utcTime);
          if (!mine) { agentStoppedTyping(f.participantId); }
          break;
        case "ParticipantJoined":
          if (f.type === "Agent" || f.type === "Supervisor") {
            agentNames[f.participantId] = f.nickname;
            setStatus("connected", "Connected to " + (f.nickname || "an agent"));
          }
          node = systemLine((mine ? "You" : whoName(m)) + " joined the chat", "");
          break;
        case "ParticipantLeft":
          if (agentNames[f.participantId]) {
            delete agentNames[f.participantId];
            if (!Object.keys(agentNames).length && !ended) { setStatus("waiting", "Waiting for an agent"); }
          }
          agentStoppedTyping(f.participantId);
          node = systemLine(whoName(m) + " left the chat", "");
          break;
        case "TypingStarted":
          if (!mine) { agentTyping(f); }
          return;
        case "TypingStopped":
          if (!mine) { agentStoppedTyping(f.participantId); }
          return;
        case "PushUrl":
          node = systemLine(whoName(m) + " shared a link: ", "");
          var url = String(m.text || "");
          if (/^https?:\/\//i.test(url)) {
            var a = document.createElement("a");
            a.href = url; a.textContent = url; a.target = "_blank"; a.rel = "noopener noreferrer";
            node.appendChild(a);
          } else {
            node.appendChild(document.createTextNode(url));
          }
          break;
        case "Notice":
          node = systemLine(m.text || (whoName(m) + " sent a notice"), "");
          break;
        case "TranscriptSaved":
          node = systemLine("Transcript saved", "");
          break;
        case "TranscriptSaveFailed":
          node = systemLine("The transcript could not be saved", "notice-warn");
          break;
        case "ParticipantDisconnected":
        case "ParticipantReconnected":
          // Kept in the page (hidden) for its index; shown as one line.
          node = systemLine((mine ? "You" : whoName(m)) + (m.type === "ParticipantDisconnected" ? " disconnected" : " reconnected"), "");
          node.hidden = true;
          if (m.type === "ParticipantDisconnected") { connLost("notice"); } else { connBack("notice"); }
          break;
        case "ChatEnded":
          node = systemLine("The chat has ended", "");
          break;
        default:
          node = systemLine(m.text || m.type, "");
      }
      if (m.index) { node.setAttribute("data-index", String(m.index)); }
      node.setAttribute("data-type", m.type);
      place(node, m.index);
      scrollDown();
      if (m.type === "ChatEnded") { finish("The chat has ended"); }
    }

    function cssEscape(s) {
      return window.CSS && CSS.escape ? CSS.escape(s) : String(s).replace(/["\\]/g, "\\$&");
    }

    function agentTyping(f) {
      el.typing.textContent = (f.nickname || "The agent") + " is typing…";
      el.typing.setAttribute("data-participant", f.participantId || "");
      el.typing.hidden = false;
      clearTimeout(agentTypingTimer);
      agentTypingTimer = setTimeout(function () { el.typing.hidden = true; }, 30000);
    }

    function agentStoppedTyping(pid) {
      if (!el.typing.hidden && (!pid || el.typing.getAttribute("data-participant") === pid)) {
        el.typing.hidden = true;
        clearTimeout(agentTypingTimer);
      }
    }

    // ---- push channel ----

    function openEvents(from) {
      closeEvents();
      var q = "?userId=" + encodeURIComponent(chat.userId) + "&secureKey=" + encodeURIComponent(chat.secureKey) +
        "&transcriptPosition=" + from;
      es = new EventSource(BASE + "/" + encodeURIComponent(chat.chatId) + "/events" + q);
      es.onopen = function () {
        hideBanner();
        if (!ended && el.status.classList.contains("status-reconnecting")) { restoreStatus(); }
        connBack("stream");
      };
      es.onmessage = function (e) {
        try { render(JSON.parse(e.data)); } catch (err) { console.error("bad event", err); }
      };
      es.addEventListener("reconnecting", function () {
        agentStoppedTyping("");
        setStatus("reconnecting", "Reconnecting…");
        showBanner("Connection to the chat server lost — reconnecting…");
        connLost("core");
      });
      es.addEventListener("reconnected", function () {
        hideBanner();
        restoreStatus();
        connBack("core");
      });
      es.addEventListener("ended", function () { finish("The chat has ended"); });
      es.addEventListener("chat-error", function (e) {
        var d = {};
        try { d = JSON.parse(e.data); } catch (err) { /* keep empty */ }
        finish(adviceOf(d) || "The chat is no longer available");
      });
      es.onerror = function () {
        if (ended) { return; }
        setStatus("reconnecting", "Reconnecting…");
        showBanner("Connection lost — reconnecting…");
        connLost("stream");
        if (es.readyState === EventSource.CLOSED) { scheduleReopen(); }
      };
    }

    // connLost shows the one "reconnecting" line of a loss of the chat
    // server, told by webapi (kind "core"), by the browser's push channel
    // ("stream") or by the transcript's failover notices ("notice"), whichever
    // comes first. The notices of a loss already shown add nothing.
    function connLost(kind) {
      if (ended || (episode && episode.open)) { return; }
      if (kind === "notice" && episode && !episode.noticesBack) { return; }
      episode = { open: true, noticesBack: false, kind: kind };
      localNotice(LOST_TEXT, "notice-warn conn-lost");
    }

    // connBack shows the one "reconnected" line once the chat server is back:
    // webapi resumed its subscription, or the transcript says so. A push
    // channel reopened after a core loss does not count: webapi says when
    // the core is back.
    function connBack(kind) {
      if (kind === "notice" && episode) { episode.noticesBack = true; }
      if (ended || !episode || !episode.open) { return; }
      if (kind === "stream" && episode.kind !== "stream") { return; }
      episode.open = false;
      localNotice(BACK_TEXT, "notice-ok conn-back");
    }

    function closeEvents() {
      if (es) { es.close(); es = null; }
      clearTimeout(reopenTimer);
    }

    // scheduleReopen recovers a push channel the browser gave up on (an HTTP
    // error such as 503 while every server was away): a refresh tells whether
    // the chat still exists, then the channel reopens after the last index.
    function scheduleReopen() {
      clearTimeout(reopenTimer);
      reopenTimer = setTimeout(function () {
        post("/" + encodeURIComponent(chat.chatId) + "/refresh",
          { userId: chat.userId, secureKey: chat.secureKey, transcriptPosition: lastIndex + 1 }).then(function (r) {
          if (r.body.statusCode === 0) {
            (r.body.messages || []).forEach(render);
            if (r.body.chatEnded) { finish("The chat has ended"); return; }
            openEvents(lastIndex + 1);
          } else if (r.body.statusCode === 2) {
            finish(adviceOf(r.body) || "The chat is no longer available");
          } else {
            scheduleReopen();
          }
        }, scheduleReopen);
      }, 1500);
    }

    function restoreStatus() {
      if (Object.keys(agentNames).length) {
        var k = Object.keys(agentNames)[0];
        setStatus("connected", "Connected to " + (agentNames[k] || "an agent"));
      } else {
        setStatus("waiting", "Waiting for an agent");
      }
    }

    // ---- actions ----

    function startChat(ev) {
      ev.preventDefault();
      var nickname = el.nickname.value.trim();
      if (!nickname) { el.nickname.focus(); return; }
      el.start.disabled = true;
      el.startError.hidden = true;
      setStatus("waiting", "Connecting…");
      var params = { nickname: nickname, subject: el.subject.value.trim() };
      var attempt = 0;
      (function tryStart() {
        attempt++;
        post("", params).then(function (r) {
          if (r.body.statusCode === 0) { return begin(r.body); }
          if (r.body.statusCode === 1 && attempt < 10) { return sleep(500 * attempt).then(tryStart); }
          throw new Error(adviceOf(r.body) || ("HTTP " + r.http));
        }, function (err) {
          if (attempt < 10) { return sleep(500 * attempt).then(tryStart); }
          throw err;
        }).catch(function (err) {
          el.start.disabled = false;
          el.startError.textContent = "Could not start the chat: " + err.message;
          el.startError.hidden = false;
          setStatus("idle", "Not connected");
        });
      })();
    }

    function begin(body) {
      chat = { chatId: body.chatId, userId: body.userId, secureKey: body.secureKey, alias: body.alias || "" };
      try { sessionStorage.setItem(STORE, JSON.stringify(chat)); } catch (e) { /* private mode */ }
      showChat();
      (body.messages || []).forEach(render);
      openEvents(1);
    }

    function showChat() {
      ended = false;
      seen = {}; lastIndex = 0; agentNames = {}; episode = null;
      el.transcript.textContent = "";
      el.startForm.hidden = true;
      el.chat.hidden = false;
      el.message.disabled = false; el.send.disabled = false; el.end.disabled = false;
      setStatus("waiting", "Waiting for an agent");
      el.message.focus();
    }

    function sendMessage(ev) {
      ev.preventDefault();
      var text = el.message.value;
      if (!text.trim() || ended) { return; }
      el.message.value = "";
      stopTyping();
      var cmid = newId();
      var node = bubble("msg-client pending", "You", text, Date.now());
      node.setAttribute("data-cmid", cmid);
      place(node, 0);
      scrollDown();
      call("send", { message: text, clientMessageId: cmid }).then(function (body) {
        if (body.index && seen[body.index]) { node.remove(); }
      }, function (err) {
        node.classList.remove("pending");
        node.classList.add("failed");
        node.title = "Not sent: " + err.message;
        localNotice("Message not sent: " + err.message, "notice-warn");
        if (err.body && err.body.chatEnded) { finish("The chat has ended"); }
      });
    }

    function onInput() {
      if (ended || !chat) { return; }
      if (!typingSent) {
        typingSent = true;
        post("/" + encodeURIComponent(chat.chatId) + "/startTyping", { userId: chat.userId, secureKey: chat.secureKey })
          .catch(function () { /* typing is best effort */ });
      }
      clearTimeout(typingTimer);
      typingTimer = setTimeout(stopTyping, TYPING_IDLE_MS);
    }

    function stopTyping() {
      clearTimeout(typingTimer);
      if (!typingSent || !chat) { return; }
      typingSent = false;
      post("/" + encodeURIComponent(chat.chatId) + "/stopTyping", { userId: chat.userId, secureKey: chat.secureKey })
        .catch(function () { /* best effort */ });
    }

    function endChat() {
      if (!chat || ended) { return; }
      el.end.disabled = true;
      stopTyping();
      call("disconnect", {}, 5).then(function () { finish("You ended the chat"); },
        function (err) { finish("Chat closed (" + err.message + ")"); });
    }

    // finish shows the chat as ended and offers a new one.
    function finish(text) {
      if (ended) { return; }
      ended = true;
      closeEvents();
      hideBanner();
      el.typing.hidden = true;
      setStatus("ended", "Chat ended");
      localNotice(text, "");
      el.message.disabled = true; el.send.disabled = true; el.end.disabled = true;
      try { sessionStorage.removeItem(STORE); } catch (e) { /* ignore */ }
      el.start.disabled = false;
      el.startForm.hidden = false;
    }

    el.startForm.addEventListener("submit", startChat);
    el.sendForm.addEventListener("submit", sendMessage);
    el.message.addEventListener("input", onInput);
    el.message.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); sendMessage(e); }
    });
    el.end.addEventListener("click", endChat);
    window.addEventListener("pagehide", stopTyping);

    // Resume a chat of this tab after a reload.
    try {
      var saved = JSON.parse(sessionStorage.getItem(STORE) || "null");
      if (saved && saved.chatId) {
        chat = saved;
        showChat();
        openEvents(1);
      }
    } catch (e) { /* start fresh */ }
  }

  window.hachatChat = { mount: mount, markup: MARKUP, lostText: LOST_TEXT, backText: BACK_TEXT };

  // The page webapi serves mounts the chat at once.
  var me = document.currentScript;
  if (me && me.hasAttribute("data-page")) {
    mount(document.getElementById("card"), { origin: "", service: document.body.getAttribute("data-service") });
  }
})();
