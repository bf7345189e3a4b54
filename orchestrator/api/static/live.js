// Live regions: an element with data-live-url and data-live-interval-ms is refreshed by fetching that URL (an HTML
// fragment rendered by the server, autoescaped) and replacing the element's content. Polling stops once the
// fragment carries data-live-final="true", pauses while the tab is hidden, and backs off after errors.
// Forms with data-confirm ask before they submit (inline handlers are not allowed by the page's CSP).
(function () {
  "use strict";

  var MIN_INTERVAL_MS = 1000;
  var MAX_BACKOFF_MS = 60000;

  function isFinal(root) {
    return root.querySelector('[data-live-final="true"]') !== null;
  }

  function startLive(element) {
    var url = element.getAttribute("data-live-url");
    var interval = Math.max(MIN_INTERVAL_MS, parseInt(element.getAttribute("data-live-interval-ms"), 10) || 3000);
    var timer = null;
    var failures = 0;
    var inFlight = false;
    var stopped = isFinal(element);

    function schedule(delay) {
      if (stopped || timer !== null) return;
      timer = window.setTimeout(function () {
        timer = null;
        refresh();
      }, delay);
    }

    function refresh() {
      if (stopped || inFlight) return;
      if (document.hidden) return; // resumed by visibilitychange
      inFlight = true;
      fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" }, cache: "no-store" })
        .then(function (response) {
          if (response.redirected && response.url.indexOf("/login") !== -1) {
            stopped = true; // signed out: leave the page as it is
            return null;
          }
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.text();
        })
        .then(function (html) {
          inFlight = false;
          if (html === null || stopped) return;
          failures = 0;
          var template = document.createElement("template");
          template.innerHTML = html;
          // Keep an open <details> open across refreshes.
          var open = Array.prototype.map.call(element.querySelectorAll("details[open] > summary"), function (s) {
            return s.textContent;
          });
          element.replaceChildren(template.content);
          Array.prototype.forEach.call(element.querySelectorAll("details > summary"), function (s) {
            if (open.indexOf(s.textContent) !== -1) s.parentElement.open = true;
          });
          bindConfirms(element);
          element.dispatchEvent(new CustomEvent("live:updated", { bubbles: true }));
          if (isFinal(element)) {
            stopped = true;
            return;
          }
          schedule(interval);
        })
        .catch(function () {
          inFlight = false;
          failures += 1;
          schedule(Math.min(MAX_BACKOFF_MS, interval * Math.pow(2, failures)));
        });
    }

    document.addEventListener("visibilitychange", function () {
      if (!document.hidden && !stopped && timer === null) refresh();
    });
    schedule(interval);
  }

  function bindConfirms(root) {
    Array.prototype.forEach.call(root.querySelectorAll("form[data-confirm]"), function (form) {
      if (form.dataset.confirmBound) return;
      form.dataset.confirmBound = "1";
      form.addEventListener("submit", function (event) {
        if (!window.confirm(form.getAttribute("data-confirm"))) event.preventDefault();
      });
    });
  }

  function init() {
    bindConfirms(document);
    Array.prototype.forEach.call(document.querySelectorAll("[data-live-url]"), startLive);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
