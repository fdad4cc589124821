// postroom console: refresh the live part of the page every few seconds, ask before a
// destructive action. No framework, no inline script (the CSP allows only this file).
(function () {
  "use strict";
  var live = document.querySelector("[data-live]");
  var seconds = Number(document.body.getAttribute("data-refresh") || 0);
  var stamp = document.querySelector("[data-updated]");

  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  if (!live || !seconds) {
    return;
  }
  var busy = false;

  function refresh() {
    if (busy || document.hidden) {
      return;
    }
    busy = true;
    fetch(window.location.pathname + window.location.search, {
      headers: { "X-Postroom-Live": "1" },
      credentials: "same-origin",
      cache: "no-store"
    }).then(function (response) {
      if (response.status === 401) {
        window.location.reload(); // signed out (or the token changed): show the login form
        return null;
      }
      return response.ok ? response.text() : null;
    }).then(function (html) {
      if (html !== null) {
        live.innerHTML = html;
        if (stamp) {
          stamp.textContent = new Date().toLocaleString();
        }
      }
    }).catch(function () {
      // the daemon restarting: the next tick tries again
    }).then(function () {
      busy = false;
    });
  }

  window.setInterval(refresh, seconds * 1000);
  document.addEventListener("visibilitychange", refresh);
})();
