// Muster's page: everything shown comes from this device's own engine, and text from
// other people only ever reaches the page through textContent, never as markup.
"use strict";

const state = {
  group: null,
  groups: [],
  me: null,
  replyTo: null,
  editing: null,
  rollcall: null,
  session: sessionStorage.getItem("muster-session"),
  navigation: 0,
};

// Every change of screen takes a number: a screen whose data arrives after a later change
// is dropped rather than shown over it.
function navigate() {
  state.navigation += 1;
  return state.navigation;
}
const superseded = (view) => view !== state.navigation;

// The printed link's token sits in the fragment: trade it once for this tab's session.
async function startSession() {
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  history.replaceState(null, "", "/");
  if (!token) return;
  const response = await fetch("/api/session", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ token }),
  });
  if (response.ok) {
    state.session = (await response.json()).session;
    sessionStorage.setItem("muster-session", state.session);
  }
}

async function api(path, options = {}) {
  const response = await fetch(path, {
    credentials: "omit",
    headers: { "content-type": "application/json", authorization: "Bearer " + state.session },
    ...options,
  });
  if (response.status === 401 && state.session) {
    showEnded();
    throw new Error("this page's session ended");
  }
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
  state.me = overview.me.user;
  state.admin = overview.me.admin;
  document.getElementById("show-admin").hidden = !overview.me.admin;
  document.getElementById("me").textContent = overview.me.user + " · " + overview.me.org;
  state.groups = overview.groups.filter((g) => g.state === "active");
  const list = document.getElementById("groups");
  list.replaceChildren();
  for (const group of state.groups) {
    const item = el("li");
    const button = el("button", (group.pinned ? "📌 " : "") + group.name);
    if (group.archived) button.append(el("span", "archived", "tag"));
    if (group.muted) {
      button.classList.add("muted");
      button.append(el("span", "muted", "tag"));
    }
    button.dataset.group = group.id;
    if (group.unread > 0) button.append(el("span", String(group.unread), "badge"));
    button.setAttribute("aria-current", String(group.id === state.group));
    button.addEventListener("click", () => openGroup(group.id));
    item.append(button);
    list.append(item);
  }
  renderHeader();
}

async function refreshAlerts() {
  const alerts = await api("/api/alerts");
  const box = document.getElementById("alerts");
  box.replaceChildren();
  for (const a of alerts) {
    const row = el("div", undefined, "alert");
    row.dataset.id = a.id;
    row.append(el("strong", a.drill ? "DRILL ALERT" : "ALERT"), el("span", a.group + " · " + a.sender + ":"), el("span", a.text, "text"));
    if (asksForAnswers(a)) {
      row.append(answerButtons(a, refresh));
      box.append(row);
      continue;
    }
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

// The open group's name, markers and this user's settings for it.
function renderHeader() {
  if (!state.group) return;
  const group = state.groups.find((g) => g.id === state.group);
  document.getElementById("title").textContent = group ? group.name : "";
  const settings = document.getElementById("group-view");
  settings.hidden = !group;
  if (group) {
    document.getElementById("pin").textContent = group.pinned ? "Unpin" : "Pin";
    document.getElementById("mute").textContent = group.muted ? "Unmute" : "Mute";
    document.getElementById("level").value = group.notify_level;
  }
  if (group && group.archived) {
    document.getElementById("title").append(el("span", "archived: the organisation's compliance archive keeps everything said here", "tag"));
  }
  if (group && group.managed) document.getElementById("title").append(el("span", "managed: admins choose who is here", "tag"));
  const days = (secs) => (secs >= 86400 ? Math.round(secs / 86400) + " d" : secs >= 3600 ? Math.round(secs / 3600) + " h" : secs + " s");
  if (group && group.disappear_secs) document.getElementById("title").append(el("span", "messages disappear after " + days(group.disappear_secs), "tag"));
  if (group && group.retain_secs) document.getElementById("title").append(el("span", "messages kept " + days(group.retain_secs), "tag"));
  if (group && group.bot_members.length) document.getElementById("title").append(el("span", "bots here: " + group.bot_members.join(", "), "tag"));
  if (group) document.getElementById("title").append(el("span", group.members.length + " members", "count"));
}

async function refreshMessages() {
  if (!state.group) return;
  renderHeader();
  // Refreshes overlap (the stream and the user both ask): only the newest is shown, and
  // it is built aside and swapped in whole.
  const generation = (state.generation = (state.generation || 0) + 1);
  const group = state.group;
  const messages = await api("/api/groups/" + encodeURIComponent(group) + "/messages");
  const list = document.createElement("ol");
  const byId = new Map(messages.map((m) => [m.id, m]));
  const bots = (state.groups.find((g) => g.id === group) || { bot_members: [] }).bot_members;
  let day = null;
  for (const m of messages) {
    const on = new Date(m.sent_at).toLocaleDateString(undefined, { weekday: "long", year: "numeric", month: "long", day: "numeric" });
    if (on !== day) {
      day = on;
      list.append(el("li", on, "day"));
    }
    const item = el("li");
    item.dataset.id = m.id;
    if (m.kind === "system") {
      item.append(el("span", m.text, "system"));
    } else {
      const quoted = m.reply_to && [...byId.values()].find((q) => q.id.startsWith(m.reply_to));
      if (quoted) item.append(el("span", "↪ " + quoted.sender + ": " + (quoted.deleted ? "(deleted)" : quoted.text), "quote"));
      if (m.kind === "alert") item.append(el("span", "ALERT", "alert-tag"));
      if (m.drill) item.append(el("span", "DRILL", "drill-tag"));
      if (m.kind === "task") item.append(el("span", "TASK", "task-tag"));
      const caption = m.attachment && m.text === m.attachment.name ? "" : m.text;
      item.append(el("span", bots.includes(m.sender) ? m.sender + " (bot)" : m.sender, "who"), withMentions(m.deleted ? "(deleted)" : caption));
      if ((m.mentions || []).includes(state.me)) item.classList.add("mentions-me");
      if (m.attachment) item.append(attachmentView(m));
      const at = el("time", new Date(m.sent_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }), "when");
      at.dateTime = m.sent_at;
      at.title = new Date(m.sent_at).toLocaleString();
      item.append(at);
      if (m.edited && !m.deleted) item.append(el("span", "(edited)", "when"));
      if (m.status === "failed") item.append(el("span", "not sent", "failed"));
      if (m.ack_required) {
        const acks = el("button", "acknowledged by " + m.acked_by.length + " of " + m.audience, "acks");
        acks.type = "button";
        acks.setAttribute("aria-expanded", String(state.rollcall === m.id));
        acks.addEventListener("click", () => {
          state.rollcall = state.rollcall === m.id ? null : m.id;
          refreshMessages();
        });
        item.append(acks);
        if (m.sender !== state.me && !m.deleted && asksForAnswers(m)) item.append(answerButtons(m, refreshMessages));
        if (state.rollcall === m.id) item.append(await rollcall(m.id));
      }
      if (m.sender === state.me && !m.ack_required && !m.deleted && m.audience > 0 && m.status !== "failed") item.append(receipts(m));
      if (state.receipts === m.id) item.append(receiptList(m));
      const reactions = Object.entries(m.reactions || {});
      if (reactions.length) {
        const chips = el("span", undefined, "reactions");
        for (const [emoji, who] of reactions) {
          const mine = who.includes(state.me);
          const chip = el("button", emoji + " " + who.join(", "), mine ? "chip mine" : "chip");
          chip.type = "button";
          chip.title = mine ? "Take back your " + emoji : "React " + emoji + " too";
          chip.disabled = m.deleted;
          chip.addEventListener("click", () => react(m, emoji, mine));
          chips.append(chip);
        }
        item.append(chips);
      }
      if (!m.deleted) item.append(actions(m));
    }
    list.append(item);
  }
  // Another refresh, or another screen, came meanwhile.
  if (generation !== state.generation || group !== state.group) return;
  const shown = document.getElementById("messages");
  shown.replaceChildren(...list.childNodes);
  shown.scrollTop = shown.scrollHeight;
  // What the user has in front of them is read: not in a hidden tab.
  const unread = messages.filter((m) => m.unread).map((m) => m.id);
  if (unread.length && document.visibilityState === "visible") {
    await api("/api/groups/" + encodeURIComponent(group) + "/read", { method: "POST", body: JSON.stringify({ ids: unread }) });
  }
}

// While the word being typed starts with @, the group's members whose handle or name
// starts with the rest; a click (or Tab, for the first) completes it.
function suggestMentions() {
  const input = document.getElementById("text");
  const box = document.getElementById("mention-suggestions");
  const group = state.groups.find((g) => g.id === state.group);
  const typed = input.value.slice(0, input.selectionStart).match(/(?:^|\s)@([a-z0-9._-]*)$/i);
  box.replaceChildren();
  box.hidden = true;
  if (!typed || !group) return;
  const prefix = typed[1].toLowerCase();
  const matches = group.members.filter((m) => m !== state.me
    && (m.startsWith(prefix) || (group.member_names[m] || "").toLowerCase().startsWith(prefix))).slice(0, 5);
  for (const m of matches) {
    const pick = el("button", "@" + m + (group.member_names[m] ? " · " + group.member_names[m] : ""));
    pick.type = "button";
    pick.setAttribute("role", "option");
    pick.addEventListener("click", () => {
      const before = input.value.slice(0, input.selectionStart - prefix.length);
      input.value = before + m + " " + input.value.slice(input.selectionStart);
      input.selectionStart = input.selectionEnd = before.length + m.length + 1;
      box.hidden = true;
      input.focus();
    });
    box.append(pick);
  }
  box.hidden = matches.length === 0;
}

// A message's text, with @mentions of colleagues marked (all as text, never markup).
function withMentions(text) {
  const span = el("span", undefined, "text");
  for (const part of text.split(/(@[a-z0-9._-]+)/)) {
    if (!part) continue;
    if (/^@[a-z0-9._-]+$/.test(part)) span.append(el("span", part, part.slice(1) === state.me ? "mention me" : "mention"));
    else span.append(document.createTextNode(part));
  }
  return span;
}

// "read by 2 of 3" under the user's own message; a click lists who.
function receipts(m) {
  const pending = m.status === "queued" || m.status === "sending";
  const label = pending ? "sending…" : m.read_by.length ? "read by " + m.read_by.length + " of " + m.audience
    : m.delivered_to.length ? "delivered to " + m.delivered_to.length + " of " + m.audience : "sent";
  const b = el("button", label, "acks");
  b.type = "button";
  b.setAttribute("aria-expanded", String(state.receipts === m.id));
  b.addEventListener("click", () => {
    state.receipts = state.receipts === m.id ? null : m.id;
    refreshMessages();
  });
  return b;
}

function receiptList(m) {
  const list = el("ul", undefined, "rollcall");
  for (const who of m.read_by) list.append(el("li", "✓✓ " + who + " read it", "acked"));
  for (const who of m.delivered_to.filter((w) => !m.read_by.includes(w))) list.append(el("li", "✓ " + who + " has it, not read yet", "waiting"));
  const missing = m.audience - new Set([...m.read_by, ...m.delivered_to]).size;
  if (missing > 0) list.append(el("li", missing + " member(s) not reached yet", "waiting"));
  return list;
}

const REACTIONS = ["👍", "❤️", "😂", "😮", "✅", "👀"];

function react(m, emoji, remove) {
  return act("/api/messages/" + encodeURIComponent(m.id) + "/react", { emoji, remove });
}

// Who acknowledged an alert and who has not yet.
async function rollcall(id) {
  return rollcallByAnswer(await api("/api/rollcall/" + encodeURIComponent(id)));
}

function actions(m) {
  const box = el("span", undefined, "actions");
  const add = (label, name, run) => {
    const button = el("button", label);
    button.type = "button";
    button.setAttribute("aria-label", name);
    button.addEventListener("click", run);
    box.append(button);
  };
  add("Reply", "Reply to " + m.sender, () => setContext("reply", m));
  const mine = (emoji) => (m.reactions[emoji] || []).includes(state.me);
  add("👍", mine("👍") ? "Take back 👍" : "React 👍", () => react(m, "👍", mine("👍")));
  const more = el("span", undefined, "more-reactions");
  more.hidden = state.picking !== m.id;
  for (const emoji of REACTIONS.slice(1)) {
    const pick = el("button", emoji);
    pick.type = "button";
    pick.setAttribute("aria-label", (mine(emoji) ? "Take back " : "React ") + emoji);
    pick.addEventListener("click", () => {
      state.picking = null;
      react(m, emoji, mine(emoji));
    });
    more.append(pick);
  }
  add("+", "More reactions", () => {
    state.picking = state.picking === m.id ? null : m.id;
    more.hidden = state.picking !== m.id;
    if (!more.hidden) more.querySelector("button").focus();
  });
  box.append(more);
  if (m.sender === state.me && m.kind !== "task") {
    add("Edit", "Edit your message", () => setContext("edit", m));
    add("Delete", "Delete your message", () => act("/api/messages/" + encodeURIComponent(m.id) + "/delete", {}));
  }
  return box;
}

function setContext(kind, m) {
  document.getElementById("mention-suggestions").hidden = true;
  state.replyTo = kind === "reply" ? m.id : null;
  state.editing = kind === "edit" ? m.id : null;
  const bar = document.getElementById("context");
  bar.hidden = !m;
  document.getElementById("context-text").textContent = m
    ? (kind === "reply" ? "Replying to " + m.sender + ": " + m.text : "Editing your message")
    : "";
  const input = document.getElementById("text");
  if (kind === "edit" && m) input.value = m.text;
  input.focus();
}

async function act(path, body) {
  try {
    await api(path, { method: "POST", body: JSON.stringify(body) });
    await refreshMessages();
  } catch (e) {
    status(e.message);
  }
}

async function refreshBoard() {
  const aside = document.getElementById("board");
  aside.hidden = !state.group;
  if (!state.group) return;
  const entries = await api("/api/groups/" + encodeURIComponent(state.group) + "/board");
  const list = document.getElementById("board-entries");
  list.replaceChildren();
  for (const e of entries) {
    const value = el("dd", e.value);
    value.append(el("span", e.author + ", " + new Date(e.at_ms).toLocaleString() + (e.pending ? " (sending)" : ""), "by"));
    list.append(el("dt", e.key), value);
  }
  await refreshCrisis();
}

// Search results and the directory take the conversation's place.
function showListing(title, rows) {
  state.group = null;
  document.getElementById("title").textContent = title;
  document.getElementById("messages").hidden = true;
  document.getElementById("compose").hidden = true;
  document.getElementById("context").hidden = true;
  document.getElementById("board").hidden = true;
  document.getElementById("upload").hidden = true;
  document.getElementById("mention-suggestions").hidden = true;
  const listing = document.getElementById("listing");
  listing.hidden = false;
  listing.replaceChildren(...rows);
  if (!rows.length) listing.append(el("li", "nothing found"));
  document.getElementById("group-view").hidden = true;
}

async function search(query) {
  const view = navigate();
  try {
    const found = await api("/api/search?q=" + encodeURIComponent(query));
    if (superseded(view)) return;
    showListing("Search: " + query, found.map((m) => {
      const row = el("li");
      const open = el("button", m.sender + ": " + m.text);
      open.addEventListener("click", () => openGroup(m.group_id));
      row.append(open, el("span", m.group + " · " + m.sent_at.slice(0, 16).replace("T", " "), "meta"));
      return row;
    }));
  } catch (e) {
    status(e.message);
  }
}

async function directory() {
  const view = navigate();
  try {
    const people = await api("/api/directory");
    if (superseded(view)) return;
    showListing("Directory", people.map((p) => {
      const row = el("li");
      row.append(el("strong", p.display_name), el("span", " @" + p.user));
      const about = [p.title, p.department, p.roles.join(", "), p.devices + " device(s)"].filter(Boolean);
      row.append(el("span", about.join(" · "), "meta"));
      return row;
    }));
  } catch (e) {
    status(e.message);
  }
}

function field(label, id, value) {
  const wrap = el("label", label);
  const input = el("input");
  input.id = id;
  input.value = value || "";
  input.maxLength = 100;
  wrap.append(input);
  return wrap;
}

// My profile (a change goes to an admin for approval) and my devices.
async function showMe() {
  const view = navigate();
  try {
    const [profile, devices] = await Promise.all([api("/api/me"), api("/api/devices")]);
    const form = el("form");
    form.append(
      field("Display name", "profile-name", profile.display_name),
      field("Title", "profile-title", profile.title),
      field("Department", "profile-department", profile.department),
    );
    const submit = el("button", "Request this change");
    submit.type = "submit";
    const outcome = el("span", "", "meta");
    outcome.setAttribute("role", "status");
    form.append(submit, outcome);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const value = (id) => document.getElementById(id).value;
      try {
        await api("/api/profile", {
          method: "POST",
          body: JSON.stringify({ display_name: value("profile-name"), title: value("profile-title"), department: value("profile-department") }),
        });
        outcome.textContent = "profile change sent: colleagues see it once an admin approves it";
      } catch (e) {
        outcome.textContent = "not sent: " + e.message;
      }
    });
    const rows = [el("li"), ...devices.map((d) => {
      const row = el("li", "device " + d.device_id + (d.this_device ? " (this device)" : ""));
      row.append(el("span", "enrolled until " + d.enrolled_until, "meta"));
      return row;
    })];
    rows[0].append(el("h2", "My profile"), form);
    const link = el("li");
    const make = el("button", "Link a new device");
    make.type = "button";
    make.addEventListener("click", async () => {
      try {
        const code = await api("/api/devices/link", { method: "POST", body: "{}" });
        link.replaceChildren(el("span", "On the new device: muster join-device (valid one hour)", "meta"), el("span", code, "code"));
      } catch (e) {
        status(e.message);
      }
    });
    link.append(make);
    rows.push(link);
    const approve = el("li");
    const approveForm = el("form");
    const approveLabel = el("label", "Approve a new device of mine (the id its page shows)");
    const approveId = el("input");
    approveId.id = "approve-device";
    approveId.maxLength = 64;
    approveId.autocomplete = "off";
    approveLabel.append(approveId);
    const approveButton = el("button", "Approve my device");
    approveButton.type = "submit";
    const approved = el("span", "", "meta");
    approved.setAttribute("role", "status");
    approveForm.append(approveLabel, approveButton, approved);
    approveForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const id = approveId.value.trim();
      if (!id) return;
      try {
        await api("/api/devices/" + encodeURIComponent(id) + "/approve", { method: "POST", body: "{}" });
        approved.textContent = "approved your new device " + id + ": it is enrolled once an admin device has issued its certificate";
      } catch (e) {
        approved.textContent = "not approved: " + e.message;
      }
    });
    approve.append(approveForm);
    rows.push(approve);
    if (superseded(view)) return;
    showListing("Me", rows);
  } catch (e) {
    status(e.message);
  }
}

function button(label, run) {
  const b = el("button", label);
  b.type = "button";
  b.addEventListener("click", run);
  return b;
}

async function openGroup(id) {
  navigate();
  state.group = id;
  document.getElementById("listing").hidden = true;
  document.getElementById("messages").hidden = false;
  document.getElementById("compose").hidden = false;
  await refreshGroups();
  await refreshMessages();
  // Opening it read its messages: its unread count is gone.
  await refreshGroups();
  await refreshBoard();
  document.getElementById("text").focus();
}

// The main screens, once this device is approved; offline, what is stored still shows.
function showMain(status) {
  state.enrolShown = null;
  document.getElementById("enrol").hidden = true;
  document.getElementById("main").hidden = false;
  for (const id of ["search", "show-directory", "show-me"]) document.getElementById(id).hidden = false;
  const offline = document.getElementById("offline");
  offline.hidden = status.phase !== "offline";
  offline.textContent = status.phase === "offline" ? "Offline: " + status.why + ". What you send waits and goes once the relay is back." : "";
}

async function refresh() {
  try {
    const standing = await api("/api/status");
    if (standing.phase !== "online" && standing.phase !== "offline") {
      showEnrol(standing);
      return;
    }
    showMain(standing);
    // Messages first: showing them reads them, so the counts after are right.
    await refreshAlerts();
    await refreshMessages();
    await refreshGroups();
    await refreshBoard();
    status("");
  } catch (e) {
    status(e.message);
  }
}

// Desktop notifications, for what the user's settings let through (the engine decides:
// mutes and notification levels apply, urgent alerts always come).
function notify(n) {
  if (!n || !("Notification" in window) || Notification.permission !== "granted") return;
  const title = (n.kind === "alert" ? "ALERT in " : "") + n.group + " · " + n.sender;
  state.shown = state.shown || [];
  state.shown.push(new Notification(title, { body: n.text, tag: n.id, requireInteraction: n.kind === "alert" }));
  if (state.shown.length > 50) state.shown.shift();
}

// An alert's answers and drill mark are asked for only when sending an alert.
function showAlertFields() {
  const on = document.getElementById("as-alert").checked;
  document.getElementById("alert-options").hidden = !on;
  document.getElementById("alert-drill-label").hidden = !on;
}

// Nothing of what the device showed stays in the page (nor its notifications), nor the
// session in the tab.
function clearPage() {
  sessionStorage.removeItem("muster-session");
  state.session = null;
  state.groups = [];
  state.group = null;
  for (const id of ["groups", "messages", "listing", "board-entries", "alerts", "title", "me", "context-text", "upload-text", "mention-suggestions", "incident-now", "task-list"]) {
    document.getElementById(id).replaceChildren();
  }
  for (const id of ["text", "search-text", "board-key", "board-value", "alert-options", "incident-title", "task-title", "task-assignee", "task-due"]) document.getElementById(id).value = "";
  for (const n of state.shown || []) n.close();
  state.shown = [];
}

// The page lost its device's UI (it stopped, or the session is no longer known).
function showEnded() {
  showRevoked(null);
  document.getElementById("enrol").replaceChildren(
    el("h1", "This page is closed"),
    el("p", "muster ui stopped on this device, or this tab's session ended. Open the link it prints (run it again, or press Enter in its terminal)."),
  );
}

// Hides the main screens and the header's buttons; returns the full-page section shown
// instead (setting up, waiting, revoked, closed).
function showFullScreen() {
  for (const id of ["main", "alerts", "offline", "search", "show-directory", "show-me", "show-admin"]) {
    document.getElementById(id).hidden = true;
  }
  const screen = document.getElementById("enrol");
  screen.hidden = false;
  return screen;
}

// This device was revoked: nothing more can be done here.
function showRevoked(revoked) {
  clearPage();
  const screen = showFullScreen();
  if (!revoked) return;
  screen.replaceChildren(
    el("h1", "This device was revoked"),
    el("p", "Revoked by " + revoked.by + "." + (revoked.wipe ? " As your organisation requires, its messages and keys were erased from this device." : "")),
    el("p", "Ask your admin if you need access again."),
  );
  status("");
}

// The live stream of changes, read with fetch so it carries the session.
async function listen() {
  let failures = 0;
  for (;;) {
    try {
      const response = await fetch("/api/events", {
        credentials: "omit",
        headers: { authorization: "Bearer " + state.session },
      });
      if (response.status === 401) {
        showEnded();
        return;
      }
      if (!response.ok) throw new Error(response.statusText);
      failures = 0;
      status("");
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const chunk = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const field = (name) => chunk.split("\n").find((l) => l.startsWith(name + ":"))?.slice(name.length + 1).trim();
          if (field("event") === "changed") refresh();
          if (field("event") === "notify") notify(JSON.parse(field("data") || "null"));
          if (field("event") === "progress" && state.onProgress) state.onProgress(JSON.parse(field("data") || "null"));
          if (field("event") === "revoked") {
            showRevoked(JSON.parse(field("data") || "{}"));
            return;
          }
        }
      }
    } catch (_) { /* reconnect below */ }
    // The device's UI is gone (stopped, or revoked and wiped): show nothing it held.
    if (++failures >= 5) {
      showEnded();
      return;
    }
    status("reconnecting…");
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  await startSession();
  if (!state.session) {
    status("open the link `muster ui` printed to start");
    return;
  }
  document.getElementById("compose").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = document.getElementById("text");
    const text = input.value.trim();
    if (!text || !state.group) return;
    const asAlert = document.getElementById("as-alert");
    const path = "/api/groups/" + encodeURIComponent(state.group);
    input.value = "";
    try {
      if (state.editing) {
        await api("/api/messages/" + encodeURIComponent(state.editing) + "/edit", { method: "POST", body: JSON.stringify({ text }) });
      } else if (asAlert.checked) {
        const options = document.getElementById("alert-options");
        const drill = document.getElementById("alert-drill");
        await api(path + "/alerts", { method: "POST", body: JSON.stringify({ text, ack_required: true, options: options.value, drill: drill.checked }) });
        asAlert.checked = false;
        options.value = "";
        drill.checked = false;
        showAlertFields();
      } else {
        await api(path + "/messages", { method: "POST", body: JSON.stringify({ text, reply_to: state.replyTo }) });
      }
      setContext(null, null);
      await refreshMessages();
    } catch (e) {
      input.value = text;
      status("not sent: " + e.message);
    }
  });
  document.getElementById("context-cancel").addEventListener("click", () => setContext(null, null));
  document.getElementById("text").addEventListener("keydown", (event) => {
    if (event.key === "Escape") setContext(null, null);
    const first = document.querySelector("#mention-suggestions button");
    if (event.key === "Tab" && first && !document.getElementById("mention-suggestions").hidden) {
      event.preventDefault();
      first.click();
    }
  });
  document.getElementById("text").addEventListener("input", suggestMentions);
  document.getElementById("show-directory").addEventListener("click", directory);
  document.getElementById("show-me").addEventListener("click", showMe);
  document.getElementById("show-admin").addEventListener("click", () => showAdmin("People"));
  const setView = async (change) => {
    const group = state.groups.find((g) => g.id === state.group);
    if (!group) return;
    try {
      await api("/api/groups/" + encodeURIComponent(group.id) + "/view", { method: "POST", body: JSON.stringify(change) });
      await refresh();
    } catch (e) {
      status(e.message);
    }
  };
  document.getElementById("pin").addEventListener("click", () =>
    setView({ pinned: !state.groups.find((g) => g.id === state.group)?.pinned }));
  document.getElementById("mute").addEventListener("click", () =>
    setView({ muted: !state.groups.find((g) => g.id === state.group)?.muted }));
  document.getElementById("level").addEventListener("change", (event) => setView({ notify_level: event.target.value }));
  document.getElementById("search").addEventListener("submit", (event) => {
    event.preventDefault();
    const query = document.getElementById("search-text").value.trim();
    if (query) search(query);
  });
  const notifications = document.getElementById("notifications");
  if ("Notification" in window && Notification.permission === "default") {
    notifications.hidden = false;
    notifications.addEventListener("click", async () => {
      await Notification.requestPermission();
      notifications.hidden = true;
    });
  }
  document.getElementById("as-alert").addEventListener("change", showAlertFields);
  document.getElementById("board-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = document.getElementById("board-key");
    const value = document.getElementById("board-value");
    if (!state.group || !key.value.trim()) return;
    try {
      await api("/api/groups/" + encodeURIComponent(state.group) + "/board", {
        method: "POST",
        body: JSON.stringify({ key: key.value, value: value.value }),
      });
      key.value = "";
      value.value = "";
      await refreshBoard();
    } catch (e) {
      status("not set: " + e.message);
    }
  });
  // Coming back to the tab reads what arrived meanwhile.
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && state.group) refresh();
  });
  refresh();
  listen();
});
