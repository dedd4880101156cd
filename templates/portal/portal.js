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

  // A template editor (form[data-preview]): as one types, each language's
  // preview panel is asked again for what is typed, and an email's HTML is
  // posted to its frame; nothing is saved.
  function editor(form) {
    var waiting = null;
    var csrf = form.querySelector("input[name=csrf]").value;
    function texts(data) {
      form.querySelectorAll("textarea[data-lang]").forEach(function (area) { data.append(area.name, area.value); });
      data.append("csrf", csrf);
      return data;
    }
    function refresh() {
      form.querySelectorAll("[data-preview-of]").forEach(function (panel) {
        var data = texts(new FormData());
        data.append("language", panel.getAttribute("data-preview-of"));
        fetch(form.getAttribute("data-preview"), { method: "POST", body: data, credentials: "same-origin",
                                                   headers: { "X-Shipcast-Fragment": "1" } })
          .then(function (response) { return response.ok ? response.text() : null; })
          .then(function (html) {
            if (html === null) return;
            var holder = document.createElement("div");
            holder.innerHTML = html;
            panel.innerHTML = holder.innerHTML;
          })
          .catch(function () { /* the next change asks again */ });
      });
      if (form.hasAttribute("data-html")) {
        form.querySelectorAll("iframe[name]").forEach(function (frame) {
          var post = document.createElement("form");
          post.method = "post";
          post.action = form.getAttribute("data-html");
          post.target = frame.name;
          post.hidden = true;
          var fields = { csrf: csrf, language: frame.name.replace("email-", "") };
          form.querySelectorAll("textarea[data-lang]").forEach(function (area) { fields[area.name] = area.value; });
          Object.keys(fields).forEach(function (name) {
            var input = document.createElement("input");
            input.type = "hidden"; input.name = name; input.value = fields[name];
            post.appendChild(input);
          });
          document.body.appendChild(post);
          post.submit();
          post.remove();
        });
      }
    }
    form.addEventListener("input", function () {
      clearTimeout(waiting);
      waiting = setTimeout(refresh, 400);
    });
    if (form.hasAttribute("data-html")) refresh();
  }

  // The branding form (form[data-frames]): each preview frame follows what is typed.
  function branding(form) {
    var waiting = null;
    function refresh() {
      var query = new URLSearchParams();
      form.querySelectorAll("input[name]").forEach(function (input) {
        if (input.name !== "csrf" && input.value) query.append(input.name, input.value);
      });
      document.querySelectorAll("iframe[data-base]").forEach(function (frame) {
        frame.src = frame.getAttribute("data-base") + "?" + query.toString();
      });
    }
    form.querySelectorAll("input[data-mirrors]").forEach(function (picker) {
      var target = document.getElementById(picker.getAttribute("data-mirrors"));
      picker.addEventListener("input", function () { target.value = picker.value; });
      target.addEventListener("input", function () {
        if (/^#[0-9a-fA-F]{6}$/.test(target.value)) picker.value = target.value;
      });
    });
    form.addEventListener("input", function () {
      clearTimeout(waiting);
      waiting = setTimeout(refresh, 300);
    });
  }

  // A channel's form (form[data-channel-preview]): its messages follow what is typed.
  function channelPreview(form) {
    var waiting = null;
    var holder = document.getElementById("channel-previews");
    function refresh() {
      fetch(form.getAttribute("data-channel-preview"), { method: "POST", body: new FormData(form),
                                                         credentials: "same-origin",
                                                         headers: { "X-Shipcast-Fragment": "1" } })
        .then(function (response) { return response.ok ? response.text() : null; })
        .then(function (html) { if (html !== null && holder) holder.innerHTML = html; })
        .catch(function () { /* the next change asks again */ });
    }
    form.addEventListener("input", function () {
      clearTimeout(waiting);
      waiting = setTimeout(refresh, 400);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(live);
    document.querySelectorAll("button[data-copy]").forEach(copier);
    document.querySelectorAll("form[data-preview]").forEach(editor);
    document.querySelectorAll("form[data-frames]").forEach(branding);
    document.querySelectorAll("form[data-channel-preview]").forEach(channelPreview);
  });
}());
