// panray monitor: token login, fragment loading, short polling of live parts, log tail, bulk actions.
"use strict";
(function () {
  const KEY = "panray-token";
  const main = document.getElementById("page");
  const login = document.getElementById("login");
  const liveStatus = document.getElementById("live-status");
  const pollMs = 1000 * parseFloat(main.dataset.poll || "3");
  let loaded = false;

  function token() { return sessionStorage.getItem(KEY); }
  function authed(url, options) {
    const opts = options || {};
    opts.headers = Object.assign({ Authorization: "Bearer " + token() }, opts.headers || {});
    return fetch(url, opts);
  }
  function say(text) { liveStatus.textContent = text; }
  function showLogin(message) {
    login.hidden = false;
    login.querySelector(".login-error").textContent = message || "";
    login.querySelector("input").focus();
  }
  // panray serve answers errors as {"error": ...}; FastAPI's default (a bare monitor router) as {"detail": ...}
  async function detail(response) {
    try { const body = await response.json(); return body.error || body.detail || response.statusText; } catch (e) { return response.statusText; }
  }

  function swapLive(html) {
    const doc = new DOMParser().parseFromString(html, "text/html");
    doc.querySelectorAll("[data-live]").forEach(function (fresh) {
      const old = fresh.id && document.getElementById(fresh.id);
      if (old) { old.replaceWith(document.importNode(fresh, true)); }
    });
  }

  async function load() {
    if (!token()) { showLogin(""); return; }
    let response;
    try { response = await authed(main.dataset.src); } catch (e) { say("server unreachable, retrying"); return; }
    if (response.status === 401) {
      sessionStorage.removeItem(KEY);
      loaded = false;
      showLogin("token refused: " + (await detail(response)));
      return;
    }
    const where = response.headers.get("X-Panray-Location");
    if (where && !loaded) { location.replace(where); return; }
    if (!response.ok) { main.innerHTML = ""; main.textContent = response.status + ": " + (await detail(response)); return; }
    const html = await response.text();
    if (!loaded) { main.innerHTML = html; loaded = true; } else { swapLive(html); }
    say("updated " + new Date().toLocaleTimeString());
    tailLog();
  }

  let tailing = false;
  async function tailLog() {
    const pre = document.getElementById("log");
    if (!pre || tailing || pre.dataset.ended === "1") { return; }
    tailing = true;
    try {
      const after = parseInt(pre.dataset.next || "0", 10);
      const response = await authed(pre.dataset.log + "&after=" + after);
      if (!response.ok) { return; }
      const data = await response.json();
      data.entries.forEach(function (e) {
        const line = document.createElement("span");
        line.className = "line sev-" + (e.severity || "").toLowerCase();
        line.textContent = e.time + " " + e.severity + " " + e.message + "\n";
        pre.appendChild(line);
      });
      pre.dataset.next = String(data.next);
      if (data.ended) { pre.dataset.ended = "1"; }
    } catch (e) { /* the next poll tries again */ } finally { tailing = false; }
  }

  login.addEventListener("submit", function (event) {
    event.preventDefault();
    sessionStorage.setItem(KEY, login.querySelector("input").value.trim());
    login.hidden = true;
    load();
  });
  document.getElementById("logout").addEventListener("click", function () {
    sessionStorage.removeItem(KEY);
    location.reload();
  });

  document.addEventListener("click", async function (event) {
    const button = event.target.closest("button[data-act]");
    const file = event.target.closest("a[data-fetch]");
    if (button) {
      const result = document.getElementById("act-result");
      button.disabled = true;
      try {
        const response = await authed(main.dataset.src.split("/fragment")[0] + "/api/act", {
          method: "POST", headers: { "Content-Type": "application/json" }, body: button.dataset.act });
        const text = response.ok ? (await response.json()).message : await detail(response);
        if (result) { result.textContent = text; result.className = "act-result " + (response.ok ? "ok" : "refused"); }
      } finally { button.disabled = false; }
    } else if (file) {
      event.preventDefault();
      const response = await authed(file.href);
      const url = URL.createObjectURL(await response.blob());
      window.open(url, "_blank");
    }
  });

  load();
  setInterval(function () { if (token()) { load(); } }, pollMs);
})();
