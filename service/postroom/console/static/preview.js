// postroom preview: submit the job/row choice on change, and swap in the re-rendered pane the
// server pushes (server-sent events) whenever a template or the config is saved.
"use strict";
(function () {
  document.addEventListener("change", function (event) {
    var el = event.target;
    if (!el.matches || !el.matches("select[data-autosubmit]")) return;
    if (el.name === "job") {
      var row = el.form.querySelector("[name=row]");
      if (row) row.disabled = true; // another job's rows are not this one's
    }
    el.form.submit();
  });
  var pane = document.getElementById("pane");
  if (!pane || !window.EventSource) return;
  var events = new EventSource(pane.dataset.events);
  events.addEventListener("render", function (event) {
    var open = Array.prototype.map.call(pane.querySelectorAll("details[open]"), function (d) {
      return d.className;
    });
    pane.innerHTML = event.data;
    open.forEach(function (name) {
      var d = pane.querySelector("details." + name);
      if (d) d.open = true;
    });
  });
})();
