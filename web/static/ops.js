/* The operator dashboard refreshes its figures in place every few seconds (without
   JavaScript, the page reloads itself). The button pauses it; nothing moves the focus. */
(function () {
  "use strict";
  var box = document.querySelector("[data-refresh-url]");
  if (!box) return;
  var url = box.getAttribute("data-refresh-url");
  var every = (parseInt(box.getAttribute("data-refresh-seconds"), 10) || 10) * 1000;
  var toggle = document.querySelector("[data-refresh-toggle]");
  var stamp = document.querySelector("[data-refresh-stamp]");
  var paused = false;
  var timer = null;

  function schedule() {
    clearTimeout(timer);
    if (!paused) timer = setTimeout(refresh, every);
  }

  function refresh() {
    if (document.hidden) { schedule(); return; }
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) {
        if (response.status === 404) {  // signed out (or the session ended): stop asking
          paused = true;
          if (toggle) toggle.hidden = true;
          throw new Error("signed out; reload the page");
        }
        if (!response.ok) throw new Error(String(response.status));
        return response.text();
      })
      .then(function (html) {
        box.innerHTML = html;
        var read = box.querySelector("[data-read-at]");
        if (stamp && read) stamp.textContent = "Read at " + read.getAttribute("data-read-at") + ".";
        schedule();
      })
      .catch(function (error) {
        if (stamp) {
          stamp.textContent = "The last refresh failed (" + error.message + ")" +
            (paused ? "." : "; trying again.");
        }
        schedule();
      });
  }

  if (toggle) {
    toggle.hidden = false;
    toggle.addEventListener("click", function () {
      paused = !paused;
      toggle.setAttribute("aria-pressed", paused ? "true" : "false");
      toggle.textContent = paused ? "Resume refreshing" : "Pause refreshing";
      if (paused) clearTimeout(timer); else refresh();
    });
  }
  schedule();
})();
