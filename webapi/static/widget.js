// hachat chat widget: one script tag puts the customer chat on any site.
//
//   <script src="https://chat.example.com/static/widget.js" data-service="customer-support" async></script>
//
// The script adds a "Chat with us" button at the bottom right of the page;
// the button opens the chat card (the same chat as the page webapi serves
// at /), which talks to the webapi the script came from. The embedding
// site's origin must be on webapi's --allowed-origins list (CORS). The card
// lives in a shadow root, so the site's styles and the chat's never mix.
(function () {
  "use strict";
  var me = document.currentScript;
  if (!me || window.hachatWidget) { return; }
  var origin = new URL(me.src, location.href).origin;
  var service = me.getAttribute("data-service") || "customer-support";
  var title = me.getAttribute("data-title") || "Chat with us";
  var STORE = "hachat.chat." + service;

  function start() {
    var host = document.createElement("div");
    host.id = "hachat-widget";
    document.body.appendChild(host);
    var root = host.attachShadow({ mode: "open" });
    root.innerHTML =
      '<link rel="stylesheet" href="' + origin + '/static/style.css">' +
      '<div class="widget">' +
      '<div id="panel" class="widget-panel" hidden><div id="card" class="card"></div></div>' +
      '<button id="launcher" class="launcher" type="button" aria-expanded="false"></button>' +
      '</div>';
    var panel = root.getElementById("panel");
    var launcher = root.getElementById("launcher");
    launcher.textContent = title;
    function toggle(open) {
      panel.hidden = !open;
      launcher.setAttribute("aria-expanded", String(open));
      launcher.textContent = open ? "Close chat" : title;
    }
    launcher.addEventListener("click", function () { toggle(panel.hidden); });

    var s = document.createElement("script");
    s.src = origin + "/static/app.js";
    s.async = true;
    s.onload = function () {
      window.hachatChat.mount(root.getElementById("card"), { origin: origin, service: service });
      // A chat of this tab under way (a reload): show it at once.
      try { if (sessionStorage.getItem(STORE)) { toggle(true); } } catch (e) { /* private mode */ }
      host.setAttribute("data-ready", "true");
    };
    s.onerror = function () { launcher.disabled = true; launcher.title = "The chat is not available"; };
    document.head.appendChild(s);
    window.hachatWidget = { open: function () { toggle(true); }, close: function () { toggle(false); }, root: root };
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
