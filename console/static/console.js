/* smsbridge console: small progressive enhancements. Every page works without this file. */
(function () {
  "use strict";

  // htmx requests that change something carry the session's CSRF token.
  var csrf = document.querySelector('meta[name="csrf-token"]');
  document.addEventListener("htmx:configRequest", function (event) {
    if (csrf && event.detail.verb !== "get") {
      event.detail.headers["X-CSRF-Token"] = csrf.content;
    }
  });

  // Times are rendered in UTC; show them in the reader's time zone (UTC stays in the tooltip).
  var day = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric" });
  var clock = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  function localize(root) {
    root.querySelectorAll("time[datetime]").forEach(function (el) {
      if (el.dataset.local) return;
      var when = new Date(el.getAttribute("datetime"));
      if (isNaN(when.getTime())) return;
      var today = day.format(when) === day.format(new Date());
      el.title = el.textContent;
      el.textContent = (today ? "today " : day.format(when) + " ") + clock.format(when);
      el.dataset.local = "1";
    });
  }

  // "Select all" boxes of the parked tables (hidden without JavaScript).
  function selectAll(root) {
    root.querySelectorAll("input.select-all").forEach(function (box) {
      if (box.dataset.ready) return;
      box.dataset.ready = "1";
      box.hidden = false;
      box.addEventListener("change", function () {
        var table = box.closest("table");
        table.querySelectorAll('tbody input[name="ids"]').forEach(function (other) {
          other.checked = box.checked;
        });
      });
    });
  }

  function enhance(root) {
    localize(root);
    selectAll(root);
  }
  document.addEventListener("DOMContentLoaded", function () { enhance(document); });
  document.addEventListener("htmx:load", function (event) {
    var root = event.detail.elt;
    if (root && root.querySelectorAll) enhance(root.parentNode || root);
  });
})();
