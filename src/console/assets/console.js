// im1-revalidator console: progressive enhancement only. Every page works without this
// file; with it, the overview's live section refreshes in place instead of reloading.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !live.getAttribute("data-src")) return;
  var every = Math.max(1, Number(live.getAttribute("data-refresh")) || 5) * 1000;
  function tick() {
    fetch(live.getAttribute("data-src"), { credentials: "same-origin", headers: { "X-Requested-With": "console" } })
      .then(function (r) {
        if (r.status === 401) { window.location.assign("/login"); throw new Error("signed out"); }
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        live.innerHTML = html;
        live.classList.remove("stale");
      })
      .catch(function () { live.classList.add("stale"); })
      .then(function () { window.setTimeout(tick, every); });
  }
  window.setTimeout(tick, every);
})();
