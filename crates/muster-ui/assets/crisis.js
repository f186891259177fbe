// Incident command: answer buttons on alerts, the roll-call by answer, tasks and the
// incident on the board, and the after-action report (built by this device, saved by the
// browser as a file). Uses app.js's api, el, status, state and refresh functions.
"use strict";

const DEFAULT_PAIR = ["acknowledged", "need help"];

// Whether an alert asks for one of its own answers (not just an acknowledgement).
function asksForAnswers(m) {
  const labels = (m.options || []).map((o) => o.label);
  return labels.length > 0 && labels.join("\n") !== DEFAULT_PAIR.join("\n");
}

// One button per answer an alert offers ("need help" and other urgent ones marked).
function answerButtons(m, after) {
  const box = el("span", undefined, "answers");
  const mine = (m.answers || {})[state.me];
  for (const option of m.options || []) {
    const chosen = option.label === mine;
    const b = el("button", (chosen ? "✓ " : "") + option.label + (option.urgent ? " !" : ""), (option.urgent ? "answer urgent" : "answer") + (chosen ? " chosen" : ""));
    b.type = "button";
    b.setAttribute("aria-pressed", String(chosen));
    b.setAttribute("aria-label", "Answer " + option.label);
    b.addEventListener("click", async () => {
      try {
        await api("/api/alerts/" + encodeURIComponent(m.id) + "/answer", {
          method: "POST",
          body: JSON.stringify({ answer: option.label }),
        });
        status("answered " + option.label);
        await after();
      } catch (e) {
        status("not answered: " + e.message);
      }
    });
    box.append(b);
  }
  return box;
}

// The roll-call grouped by answer, then who has not answered.
function rollcallByAnswer(r) {
  const list = el("ul", undefined, "rollcall");
  // An alert asking only for acknowledgement lists its members.
  if (!asksForAnswers(r.alert)) {
    for (const member of r.members) {
      const done = member.acked_at !== null;
      const said = member.answer && member.answer !== "acknowledged" ? " answered " + member.answer : " acknowledged";
      list.append(el("li", (done ? "✓ " : "… ") + member.user + (done ? said : " has not acknowledged yet"), done ? "acked" : "waiting"));
    }
    return list;
  }
  for (const a of r.answers) {
    const who = a.users.length ? a.users.join(", ") : "nobody";
    list.append(el("li", a.answer + (a.urgent ? " (urgent)" : "") + ": " + a.users.length + " — " + who, a.urgent && a.users.length ? "urgent" : "acked"));
  }
  const silent = r.not_answered.length ? r.not_answered.join(", ") : "nobody";
  list.append(el("li", "not answered: " + r.not_answered.length + " — " + silent, "waiting"));
  return list;
}

function saveFile(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = el("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function refreshCrisis() {
  if (!state.group) return;
  const group = encodeURIComponent(state.group);
  const [tasks, incidents] = await Promise.all([
    api("/api/groups/" + group + "/tasks"),
    api("/api/groups/" + group + "/incidents"),
  ]);
  const now = document.getElementById("incident-now");
  now.replaceChildren();
  const open = incidents.find((i) => i.closed_at === null);
  document.getElementById("incident-form").hidden = Boolean(open);
  const latest = open || incidents[0];
  if (latest) {
    const line = el("p", undefined, latest.drill ? "incident drill" : "incident");
    if (latest.drill) line.append(el("span", "DRILL", "drill-tag"));
    line.append(el("strong", latest.title), el("span", open ? " open since " + new Date(latest.opened_at).toLocaleString() : " closed " + new Date(latest.closed_at).toLocaleString(), "by"));
    now.append(line);
    const buttons = el("p");
    if (open && (open.opened_by === state.me || state.admin)) {
      const close = el("button", "Close incident");
      close.type = "button";
      close.addEventListener("click", () => crisisAct("/api/incidents/" + encodeURIComponent(open.id) + "/close", {}));
      buttons.append(close);
    }
    for (const [label, format] of [["Report (HTML)", "html"], ["Report (Markdown)", "md"]]) {
      const b = el("button", label);
      b.type = "button";
      b.addEventListener("click", async () => {
        try {
          const r = await api("/api/incidents/" + encodeURIComponent(latest.id) + "/report?format=" + format);
          saveFile(r.name, r.type, r.text);
        } catch (e) {
          status("no report: " + e.message);
        }
      });
      buttons.append(b);
    }
    now.append(buttons);
  }
  const list = document.getElementById("task-list");
  list.replaceChildren();
  for (const t of tasks) {
    const item = el("li", undefined, "task " + t.state + (t.overdue ? " overdue" : ""));
    if (t.drill) item.append(el("span", "DRILL", "drill-tag"));
    item.append(el("strong", t.title), el("span", " " + t.assignee + " · " + t.state + (t.overdue ? " · OVERDUE" : ""), "by"));
    if (t.due_at) item.append(el("span", " due " + new Date(t.due_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }), "by"));
    const finished = t.state === "done";
    const actions = [];
    if (!finished && t.assignee === state.me && t.state !== "accepted") actions.push(["Accept", "accept"]);
    if (!finished && t.assignee === state.me && t.state !== "declined") actions.push(["Decline", "decline"]);
    if (!finished && (t.assignee === state.me || t.creator === state.me)) actions.push(["Done", "done"]);
    for (const [label, change] of actions) {
      const b = el("button", label);
      b.type = "button";
      b.setAttribute("aria-label", label + " " + t.title);
      b.addEventListener("click", () => crisisAct("/api/tasks/" + encodeURIComponent(t.id) + "/" + change, {}));
      item.append(b);
    }
    list.append(item);
  }
}

async function crisisAct(path, body) {
  try {
    await api(path, { method: "POST", body: JSON.stringify(body) });
    await refreshCrisis();
    await refreshMessages();
  } catch (e) {
    status(e.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("incident-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const title = document.getElementById("incident-title");
    const drill = document.getElementById("incident-drill");
    if (!state.group || !title.value.trim()) return;
    await crisisAct("/api/groups/" + encodeURIComponent(state.group) + "/incidents", { title: title.value, drill: drill.checked });
    title.value = "";
    drill.checked = false;
  });
  document.getElementById("task-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const title = document.getElementById("task-title");
    const assignee = document.getElementById("task-assignee");
    const due = document.getElementById("task-due");
    if (!state.group || !title.value.trim() || !assignee.value.trim()) return;
    const body = { title: title.value, assignee: assignee.value.trim() };
    if (due.value) body.due_minutes = Number(due.value);
    await crisisAct("/api/groups/" + encodeURIComponent(state.group) + "/tasks", body);
    title.value = "";
    assignee.value = "";
    due.value = "";
  });
});
