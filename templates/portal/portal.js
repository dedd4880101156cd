// The portal's one script. Pages work without it; it adds live updates
// (an element with data-live="URL" is refreshed from that URL until the
// fragment it gets says data-final) and copy buttons (data-copy="#id").
(function () {
  "use strict";

  function live(element) {
    var url = element.getAttribute("data-live");
    var every = Number(element.getAttribute("data-every") || 1000);
    var stopped = false;
    function tick() {
      if (stopped) return;
      fetch(url, { headers: { "X-Shipcast-Fragment": "1" }, credentials: "same-origin" })
        .then(function (response) {
          if (!response.ok) { stopped = response.status === 401 || response.status === 404; return null; }
          return response.text();
        })
        .then(function (html) {
          if (html === null) return;
          var holder = document.createElement("div");
          holder.innerHTML = html;
          var fresh = holder.firstElementChild;
          if (fresh) {
            element.innerHTML = fresh.innerHTML;
            if (fresh.hasAttribute("data-final")) { stopped = true; element.setAttribute("data-final", ""); }
          }
        })
        .catch(function () { /* the next tick tries again */ })
        .then(function () { if (!stopped) setTimeout(tick, every); });
    }
    if (!element.hasAttribute("data-final")) setTimeout(tick, every);
  }

  function copier(button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      var source = document.querySelector(button.getAttribute("data-copy"));
      if (!source) return;
      var text = source.value !== undefined ? source.value : source.textContent;
      var done = function () { button.textContent = "Copied"; setTimeout(function () { button.textContent = "Copy"; }, 1500); };
      if (navigator.clipboard) { navigator.clipboard.writeText(text.trim()).then(done, function () {}); }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(live);
    document.querySelectorAll("button[data-copy]").forEach(copier);
  });
}());
