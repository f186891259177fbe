// Muster's page: everything shown comes from this device's own engine, and text from
// other people only ever reaches the page through textContent, never as markup.
"use strict";

const state = { group: null, groups: [] };

async function api(path, options = {}) {
  const response = await fetch(path, {
    credentials: "same-origin",
    headers: { "content-type": "application/json" },
    ...options,
  });
  if (!response.ok) {
    let why = response.statusText;
    try { why = (await response.json()).error || why; } catch (_) { /* not JSON */ }
    throw new Error(why);
  }
  return response.json();
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

function status(text) {
  document.getElementById("status").textContent = text;
}

async function refreshGroups() {
  const overview = await api("/api/overview");
  document.getElementById("me").textContent = overview.me.user + " · " + overview.me.org;
  state.groups = overview.groups.filter((g) => g.state === "active");
  const list = document.getElementById("groups");
  list.replaceChildren();
  for (const group of state.groups) {
    const item = el("li");
    const button = el("button", group.name);
    button.dataset.group = group.id;
    if (group.unread > 0) button.append(el("span", String(group.unread), "badge"));
    button.setAttribute("aria-current", String(group.id === state.group));
    button.addEventListener("click", () => openGroup(group.id));
    item.append(button);
    list.append(item);
  }
}

async function refreshAlerts() {
  const alerts = await api("/api/alerts");
  const box = document.getElementById("alerts");
  box.replaceChildren();
  for (const a of alerts) {
    const row = el("div", undefined, "alert");
    row.dataset.id = a.id;
    row.append(el("strong", "ALERT"), el("span", a.group + " · " + a.sender + ":"), el("span", a.text, "text"));
    const ack = el("button", "Acknowledge");
    ack.addEventListener("click", async () => {
      try {
        await api("/api/alerts/" + encodeURIComponent(a.id) + "/ack", { method: "POST", body: "{}" });
        await refresh();
      } catch (e) {
        status("not acknowledged: " + e.message);
      }
    });
    row.append(ack);
    box.append(row);
  }
  box.hidden = alerts.length === 0;
}

async function refreshMessages() {
  if (!state.group) return;
  const group = state.groups.find((g) => g.id === state.group);
  document.getElementById("title").textContent = group ? group.name : "";
  const messages = await api("/api/groups/" + encodeURIComponent(state.group) + "/messages");
  const list = document.getElementById("messages");
  list.replaceChildren();
  for (const m of messages) {
    const item = el("li");
    item.dataset.id = m.id;
    if (m.kind === "system") {
      item.append(el("span", m.text, "system"));
    } else {
      if (m.kind === "alert") item.append(el("span", "ALERT", "alert-tag"));
      item.append(el("span", m.sender, "who"), el("span", m.deleted ? "(deleted)" : m.text, "text"));
      item.append(el("span", m.sent_at.slice(11, 16), "when"));
      if (m.ack_required) {
        item.append(el("span", "acknowledged by " + m.acked_by.length + " of " + m.audience, "acks"));
      }
    }
    list.append(item);
  }
  list.scrollTop = list.scrollHeight;
}

async function openGroup(id) {
  state.group = id;
  document.getElementById("compose").hidden = false;
  await refreshGroups();
  await refreshMessages();
  document.getElementById("text").focus();
}

async function refresh() {
  try {
    await refreshGroups();
    await refreshAlerts();
    await refreshMessages();
    status("");
  } catch (e) {
    status(e.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("compose").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("text");
    const text = input.value.trim();
    if (!text || !state.group) return;
    const asAlert = document.getElementById("as-alert");
    const path = "/api/groups/" + encodeURIComponent(state.group);
    input.value = "";
    try {
      if (asAlert.checked) {
        await api(path + "/alerts", { method: "POST", body: JSON.stringify({ text, ack_required: true }) });
        asAlert.checked = false;
      } else {
        await api(path + "/messages", { method: "POST", body: JSON.stringify({ text }) });
      }
      await refreshMessages();
    } catch (e) {
      input.value = text;
      status("not sent: " + e.message);
    }
  });
  const events = new EventSource("/api/events");
  events.addEventListener("changed", refresh);
  events.addEventListener("error", () => status("reconnecting…"));
  events.addEventListener("open", () => status(""));
  refresh();
});
