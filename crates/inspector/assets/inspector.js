// The ors inspector: a list of sessions and a live page per session. No framework and no
// build step: the server serves this file as it is. Every value from the server goes into
// the page as text (textContent), never as markup; the one exception is the chart, which
// the server draws from the document with everything escaped.
"use strict";

const main = document.getElementById("main");
const statusEl = document.getElementById("status");

// The API's bearer token, if it needs one: from "#token=..." (never sent to a server),
// else what this tab was given before.
(function takeToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("ors-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

function authHeaders() {
  const t = sessionStorage.getItem("ors-token");
  return t ? { Authorization: "Bearer " + t } : {};
}

function askForToken() {
  const form = document.getElementById("login");
  main.replaceChildren();
  form.hidden = false;
  form.onsubmit = (e) => {
    e.preventDefault();
    sessionStorage.setItem("ors-token", document.getElementById("token").value.trim());
    location.reload();
  };
}

async function api(path, options = {}) {
  const r = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (r.status === 401) {
    askForToken();
    throw new Error("a token is needed");
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function time(ms) {
  return new Date(ms).toISOString().replace("T", " ").replace("Z", "");
}

// ----- the list -----

async function showList() {
  const params = new URLSearchParams(location.search);
  const field = (name, hint) => el("input", { name, placeholder: hint, value: params.get(name) || "" });
  const form = el("form", { class: "filters", method: "get", action: "/inspector" },
    field("node", "node"), field("document", "document name contains"),
    field("state", "active state"), el("button", {}, "Filter"));
  const table = el("table", { id: "sessions" },
    el("thead", {}, el("tr", {}, el("th", {}, "session"), el("th", {}, "node"),
      el("th", {}, "document"), el("th", {}, "active states"))));
  const tbody = el("tbody");
  table.append(tbody);
  const more = el("button", { id: "more", hidden: "" }, "More");
  const note = el("p", { class: "muted" });
  main.replaceChildren(form, table, el("p", {}, more), note);

  let after = params.get("after");
  async function page() {
    const q = new URLSearchParams();
    for (const k of ["node", "document", "state"]) if (params.get(k)) q.set(k, params.get(k));
    if (after) q.set("after", after);
    const r = await api("/inspector/api/sessions?" + q);
    for (const s of r.sessions) {
      const link = el("a", { href: "/inspector/session/" + encodeURIComponent(s.sessionid) }, s.sessionid);
      const states = el("td");
      for (const st of s.active_states) states.append(el("span", { class: "badge" }, st));
      if (s.quarantined) states.append(el("span", { class: "badge error" }, "quarantined"));
      tbody.append(el("tr", {}, el("td", { class: "mono" }, link), el("td", {}, s.node), el("td", {}, s.document), states));
    }
    after = r.next;
    more.hidden = !after;
    note.textContent = tbody.children.length === 0 && !after ? "No sessions." : "";
  }
  more.onclick = () => page().catch(showError);
  statusEl.textContent = "";
  await page();
}

// ----- one session -----

async function showSession(sid) {
  document.title = sid + " · ors inspector";
  const chart = el("div", { id: "chart" });
  const config = el("div", { id: "configuration" });
  const datamodel = el("pre", { id: "datamodel" });
  const timers = el("div", { id: "timers" });
  const historyList = el("ol", { class: "history", id: "history" });
  const eventName = el("input", { id: "event-name", placeholder: "event name", required: "" });
  const eventData = el("input", { id: "event-data", placeholder: 'data as JSON, e.g. {"x": 1}' });
  const sendResult = el("span", { class: "muted" });
  const sendForm = el("form", { class: "filters", id: "send" }, eventName, eventData, el("button", {}, "Send"), sendResult);
  sendForm.onsubmit = async (e) => {
    e.preventDefault();
    let body = {};
    try {
      body = eventData.value.trim() ? JSON.parse(eventData.value) : {};
    } catch (err) {
      sendResult.textContent = "data is not JSON: " + err.message;
      return;
    }
    try {
      await api("/scxml/session/" + encodeURIComponent(sid) + "/event/" + encodeURIComponent(eventName.value.trim()),
        { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
      sendResult.textContent = "sent";
    } catch (err) {
      sendResult.textContent = err.message;
    }
  };
  const title = el("h1", {}, sid);
  const meta = el("p", { class: "muted", id: "meta" });
  main.replaceChildren(title, meta, el("div", { class: "grid" },
    el("div", {}, el("section", { class: "panel" }, el("h2", {}, "Statechart"), chart),
      el("section", { class: "panel" }, el("h2", {}, "Send an event"), sendForm)),
    el("div", {}, el("section", { class: "panel" }, el("h2", {}, "Active states"), config),
      el("section", { class: "panel" }, el("h2", {}, "Datamodel"), datamodel),
      el("section", { class: "panel" }, el("h2", {}, "Pending timers"), timers),
      el("section", { class: "panel" }, el("h2", {}, "Recent history"), historyList))));

  function render(s) {
    meta.textContent = `node ${s.node} · document ${s.document_name || "?"}` + (s.done ? " · ended" : "") +
      (s.quarantined ? " · quarantined: " + s.quarantined : "");
    const active = new Set(s.done ? s.configuration : s.active_states);
    for (const g of chart.querySelectorAll("g.state")) g.classList.toggle("active", active.has(g.dataset.state));
    const lastStep = [...s.history].reverse().find((h) => h.kind === "step");
    const recent = new Set(lastStep ? lastStep.transitions : []);
    for (const g of chart.querySelectorAll("g.transition")) g.classList.toggle("recent", recent.has(g.dataset.transition));
    config.replaceChildren(...[...active].map((st) => el("span", { class: "badge on" }, st)));
    datamodel.textContent = JSON.stringify(s.datamodel, null, 2);
    timers.replaceChildren(s.timers.length === 0 ? el("p", { class: "muted" }, "None.") :
      el("table", {}, el("tr", {}, el("th", {}, "due"), el("th", {}, "event"), el("th", {}, "sendid"), el("th", {}, "target")),
        ...s.timers.map((t) => el("tr", {}, el("td", {}, time(t.due_ms)), el("td", {}, t.event), el("td", {}, t.sendid || ""), el("td", {}, t.target || "self")))));
    if (s.history_capacity === 0) {
      historyList.replaceChildren(el("li", { class: "muted" }, "History is off (inspector.history in the configuration)."));
    } else if (s.history.length === 0) {
      historyList.replaceChildren(el("li", { class: "muted" }, "Nothing yet since the session was loaded on its node."));
    } else {
      historyList.replaceChildren(...[...s.history].reverse().map((h) => {
        const what = h.kind === "received" ? h.event :
          h.kind === "error" ? `${h.event}: ${h.message || ""}` + (h.sendid ? ` (send ${h.sendid})` : "") :
          `${h.event || "(eventless)"}: ${h.transitions.join(", ") || "initial entry"}` +
          (h.exited.length ? ` · exit ${h.exited.join(", ")}` : "") + (h.entered.length ? ` · enter ${h.entered.join(", ")}` : "");
        return el("li", { class: h.kind === "error" ? "error" : "" }, el("span", { class: "kind" }, h.kind), what,
          el("span", { class: "muted" }, "  " + time(h.at_ms)));
      }));
    }
  }

  const first = await api("/inspector/api/session/" + encodeURIComponent(sid) + "?chart=1");
  chart.innerHTML = first.chart || "<p class='muted'>The session has ended; its document is not drawn.</p>";
  render(first);
  if (!first.done) follow(sid, render);
}

// Server-sent events read with fetch (EventSource cannot send the token).
async function follow(sid, render) {
  for (;;) {
    try {
      const r = await fetch("/inspector/api/session/" + encodeURIComponent(sid) + "/live", { headers: authHeaders() });
      if (!r.ok) throw new Error(r.statusText);
      statusEl.className = "live";
      statusEl.textContent = "live";
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let kind = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
          }
          if (kind === "update") {
            const s = JSON.parse(data);
            render(s);
            if (s.done) {
              statusEl.className = "";
              statusEl.textContent = "ended";
              return;
            }
          } else if (kind === "error") {
            statusEl.className = "stale";
            statusEl.textContent = data;
          }
        }
      }
    } catch (err) {
      statusEl.className = "stale";
      statusEl.textContent = "reconnecting: " + err.message;
    }
    await new Promise((res) => setTimeout(res, 2000));
  }
}

function showError(err) {
  main.replaceChildren(el("p", { class: "error" }, err.message));
}

const m = location.pathname.match(/^\/inspector\/session\/(.+)$/);
(m ? showSession(decodeURIComponent(m[1])) : showList()).catch(showError);
