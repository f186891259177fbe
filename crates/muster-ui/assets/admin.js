// The admin screen (shown to admins only; this device and the relay check every action):
// people (invites, enrolments, profile changes, revocation), groups, provisioning from a
// file, the organisation policy and the audit log.
"use strict";

const ADMIN_TABS = ["People", "Groups", "Provisioning", "Policy", "Audit log"];

function section(title, ...content) {
  const item = el("li");
  item.append(el("h2", title), ...content);
  return item;
}

// A form with labelled fields and a submit button; `send` gets the form's values and
// returns the text to show under it.
function adminForm(fields, submitLabel, send) {
  const form = el("form");
  const outcome = el("span", "", "meta");
  outcome.setAttribute("role", "status");
  for (const [label, id, attrs] of fields) {
    const wrap = el("label", label);
    const input = el((attrs && attrs.tag) || "input");
    input.id = id;
    input.autocomplete = "off";
    Object.assign(input, attrs || {});
    wrap.append(input);
    form.append(wrap);
  }
  const submit = el("button", submitLabel);
  submit.type = "submit";
  form.append(submit, outcome);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    try {
      outcome.textContent = (await send(submit)) || "";
    } catch (e) {
      outcome.textContent = "not done: " + e.message;
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

const value = (id) => document.getElementById(id).value.trim();
const post = (path, body) => api(path, { method: "POST", body: JSON.stringify(body || {}) });

async function showAdmin(tab) {
  const view = navigate();
  state.adminTab = tab || state.adminTab || "People";
  const tabs = el("li", undefined, "tabs");
  tabs.setAttribute("role", "tablist");
  for (const name of ADMIN_TABS) {
    const b = button(name, () => showAdmin(name));
    b.setAttribute("role", "tab");
    b.setAttribute("aria-selected", String(name === state.adminTab));
    tabs.append(b);
  }
  try {
    const rows = await {
      People: adminPeople,
      Groups: adminGroups,
      Provisioning: adminProvisioning,
      Policy: adminPolicy,
      "Audit log": adminAudit,
    }[state.adminTab]();
    if (superseded(view)) return;
    if (state.adminNotice) {
      const notice = el("li", state.adminNotice, "meta");
      notice.setAttribute("role", "status");
      rows.unshift(notice);
      state.adminNotice = null;
    }
    showListing("Admin · " + state.adminTab, [tabs, ...rows]);
  } catch (e) {
    if (superseded(view)) return;
    showListing("Admin · " + state.adminTab, [tabs, el("li", e.message, "problem")]);
  }
}

// Runs an admin action, then shows the tab again with `notice` on top (unless the user
// went elsewhere meanwhile: the notice waits for the next visit).
function decided(notice, run) {
  return async () => {
    const view = state.navigation;
    try {
      await run();
      state.adminNotice = notice;
    } catch (e) {
      state.adminNotice = "not done: " + e.message;
    }
    if (!superseded(view)) await showAdmin();
  };
}

async function adminPeople() {
  const [pending, profiles] = await Promise.all([api("/api/admin/pending"), api("/api/admin/profiles")]);
  const code = el("span", undefined, "code");
  code.hidden = true;
  const rows = [section("Invite",
    adminForm([["Invite a colleague (handle)", "invite-user", { maxLength: 64 }]], "Create invite", async () => {
      const made = await post("/api/admin/invites", { user: value("invite-user") });
      code.textContent = made;
      code.hidden = false;
      return "Hand this code to " + value("invite-user") + " (valid seven days, once):";
    }), code)];
  rows.push(el("li", undefined, "subhead"));
  rows[rows.length - 1].append(el("h2", "Waiting to join"));
  for (const p of pending) {
    const row = el("li");
    row.dataset.user = p.user;
    row.append(el("strong", p.display_name), el("span", " @" + p.user + (p.linked ? " (another device)" : "")));
    const about = [p.title, p.department, "device " + p.device_id.slice(0, 12), p.code_from && "code from " + p.code_from].filter(Boolean);
    row.append(el("span", about.join(" · "), "meta"));
    if (p.problem) row.append(el("span", p.problem, "problem"));
    const path = "/api/admin/pending/" + encodeURIComponent(p.user) + "/" + encodeURIComponent(p.device_id) + "/";
    const actions = el("span", undefined, "row-actions");
    if (!p.problem) actions.append(button("Approve", decided("approved " + p.user, () => post(path + "approve"))));
    actions.append(button("Reject", decided("rejected " + p.user, () => post(path + "reject"))));
    row.append(actions);
    rows.push(row);
  }
  if (!pending.length) rows.push(el("li", "no enrolment waiting", "meta"));
  rows.push(el("li", undefined, "subhead"));
  rows[rows.length - 1].append(el("h2", "Profile changes"));
  const describe = (p) => [p.display_name, p.title, p.department].filter(Boolean).join(" · ");
  for (const c of profiles) {
    const row = el("li");
    row.dataset.user = c.user;
    row.append(el("strong", "@" + c.user), el("span", describe(c.current) + " → " + describe(c.requested), "meta"));
    row.append(el("span", c.signed_by ? "signed by their device " + c.signed_by.slice(0, 12) : "", "meta"));
    if (c.problem) row.append(el("span", c.problem, "problem"));
    const path = "/api/admin/profiles/" + encodeURIComponent(c.user) + "/";
    const actions = el("span", undefined, "row-actions");
    if (!c.problem) actions.append(button("Approve profile", decided("approved the new profile of " + c.user, () => post(path + "approve"))));
    actions.append(button("Reject profile", decided("rejected the profile change of " + c.user, () => post(path + "reject"))));
    row.append(actions);
    rows.push(row);
  }
  if (!profiles.length) rows.push(el("li", "no profile change waiting", "meta"));
  let armed = "";
  rows.push(section("Revoke",
    adminForm([
      ["Revoke (handle)", "revoke-user", { maxLength: 64 }],
      ["Only this device (id; empty: every device)", "revoke-device", { maxLength: 64 }],
    ], "Revoke", async (submit) => {
      const user = value("revoke-user");
      const device = value("revoke-device");
      const what = user + (device ? " (device " + device + ")" : "");
      if (!user) return "";
      if (armed !== what) {
        armed = what;
        submit.textContent = "Confirm: revoke " + what;
        return "Revoking cuts " + what + " off at once and removes them from every group.";
      }
      armed = "";
      submit.textContent = "Revoke";
      const query = device ? "?device=" + encodeURIComponent(device) : "";
      const devices = await post("/api/admin/revoke/" + encodeURIComponent(user) + query);
      return "revoked " + devices.length + " device(s) of " + user;
    })));
  return rows;
}

async function adminGroups() {
  const overview = await api("/api/overview");
  const rows = [section("New group",
    adminForm([
      ["Name", "group-name", { maxLength: 64 }],
      ["Members (handles, comma-separated)", "group-members", { maxLength: 2000 }],
      ["Managed: only admins add or remove people", "group-managed", { type: "checkbox" }],
    ], "Create group", async () => {
      const members = value("group-members").split(",").map((m) => m.trim()).filter(Boolean);
      const made = await post("/api/admin/groups", {
        name: value("group-name"), members, managed: document.getElementById("group-managed").checked,
      });
      return "created " + made.name + " with " + made.members.join(", ");
    }))];
  for (const g of overview.groups.filter((g) => g.state === "active")) {
    const row = el("li");
    row.dataset.group = g.id;
    row.append(el("strong", g.name));
    const marks = [g.managed && "managed", g.archived && "archived", g.retain_secs && "kept " + duration(g.retain_secs),
      g.disappear_secs && "disappears after " + duration(g.disappear_secs)].filter(Boolean);
    if (marks.length) row.append(el("span", marks.join(" · "), "tag"));
    row.append(el("span", g.members.length + " member(s)" + (g.waiting.length ? "; to join once enrolled: " + g.waiting.join(", ") : ""), "meta"));
    const members = el("span", undefined, "members");
    for (const m of g.members) {
      const who = el("span", (g.member_names[m] || m) + " @" + m, "member");
      if (m !== state.me) {
        const remove = button("Remove", decided("removed " + m + " from " + g.name, () =>
          post("/api/groups/" + encodeURIComponent(g.id) + "/members/" + encodeURIComponent(m) + "/remove")));
        remove.setAttribute("aria-label", "Remove " + m + " from " + g.name);
        who.append(remove);
      }
      members.append(who);
    }
    const addId = "add-" + g.id;
    row.append(members, adminForm([["Add (handle)", addId, { maxLength: 64 }]], "Add to " + g.name, async () => {
      const user = value(addId);
      const view = state.navigation;
      await post("/api/groups/" + encodeURIComponent(g.id) + "/members", { user });
      state.adminNotice = "added " + user + " to " + g.name;
      if (!superseded(view)) await showAdmin();
    }));
    rows.push(row);
  }
  return rows;
}

function duration(secs) {
  if (secs % 86400 === 0) return secs / 86400 + " d";
  if (secs % 3600 === 0) return secs / 3600 + " h";
  return secs + " s";
}

// Provisioning: a TOML file of users and groups, planned first, then applied with
// progress shown step by step (from the event stream).
async function adminProvisioning() {
  const text = el("textarea");
  text.id = "provision-text";
  text.rows = 10;
  text.spellcheck = false;
  text.placeholder = "[[users]]\nhandle = \"dana\"\ndisplay_name = \"Dana D\"\n\n[[groups]]\nname = \"night-shift\"\nmembers = [\"dana\"]";
  text.value = state.provisionText || "";
  text.addEventListener("input", () => { state.provisionText = text.value; });
  const picker = el("input");
  picker.type = "file";
  picker.id = "provision-file";
  picker.accept = ".toml,text/plain";
  picker.addEventListener("change", async () => {
    if (!picker.files.length) return;
    text.value = state.provisionText = await picker.files[0].text();
  });
  const pickLabel = el("label", "Provisioning file (TOML)");
  pickLabel.append(picker);
  const textLabel = el("label", "or its text");
  textLabel.append(text);
  const plan = el("ol", undefined, "plan");
  const progress = el("progress");
  progress.id = "provision-progress";
  progress.max = 1;
  progress.value = 0;
  progress.hidden = true;
  const outcome = el("span", "", "meta");
  outcome.id = "provision-outcome";
  outcome.setAttribute("role", "status");
  const apply = button("Apply this plan", async () => {
    apply.disabled = true;
    progress.hidden = false;
    progress.value = 0;
    outcome.textContent = "applying…";
    state.onProgress = (p) => {
      progress.value = p.done / p.total;
      outcome.textContent = p.done + " of " + p.total + ": " + p.step.text + (p.step.status === "failed" ? " — FAILED: " + p.step.error : "");
    };
    try {
      const done = await api("/api/admin/provision/apply", { method: "POST", body: text.value, headers: { "content-type": "text/plain", authorization: "Bearer " + state.session } });
      const failed = done.steps.filter((s) => s.status === "failed");
      progress.value = 1;
      outcome.textContent = "applied: " + (done.steps.length - failed.length) + " of " + done.steps.length + " step(s) done" + (failed.length ? ", " + failed.length + " failed" : "");
      renderPlan(plan, done.steps, done.problems, done.invites);
    } catch (e) {
      outcome.textContent = "not applied: " + e.message;
    } finally {
      state.onProgress = null;
      apply.disabled = false;
    }
  });
  apply.id = "provision-apply";
  apply.hidden = true;
  const check = button("Show the plan", async () => {
    try {
      const planned = await api("/api/admin/provision/plan", { method: "POST", body: text.value, headers: { "content-type": "text/plain", authorization: "Bearer " + state.session } });
      renderPlan(plan, planned.steps, planned.problems, []);
      apply.hidden = planned.steps.length === 0 || planned.problems.length > 0;
      outcome.textContent = planned.steps.length === 0 ? "nothing to do: the organisation matches the file"
        : planned.steps.length + " change(s) planned" + (planned.problems.length ? "; correct the problems before applying" : "");
    } catch (e) {
      plan.replaceChildren();
      apply.hidden = true;
      outcome.textContent = e.message;
    }
  });
  const actions = el("span", undefined, "row-actions");
  actions.append(check, apply);
  return [section("Provisioning", el("span", "Users and groups not in the file are left alone; nobody is revoked.", "meta"), pickLabel, textLabel, actions, progress, outcome, plan)];
}

function renderPlan(list, steps, problems, invites) {
  list.replaceChildren();
  for (const p of problems) list.append(el("li", "cannot: " + p, "problem"));
  for (const s of steps) {
    const mark = s.status === "done" ? "✓ " : s.status === "failed" ? "✗ " : "";
    const row = el("li", mark + s.text + (s.error ? " — " + s.error : ""), s.status === "failed" ? "problem" : undefined);
    const invite = invites.find((i) => s.action === "invite" && i.user === s.user);
    if (invite) row.append(el("span", invite.code, "code"));
    list.append(row);
  }
}

async function adminPolicy() {
  const { policy, problems } = await api("/api/admin/policy");
  const days = (secs) => (secs ? Math.round(secs / 86400) : "");
  const rows = [section("Organisation policy",
    el("span", "Version " + policy.version + ", signed " + (policy.issued_at ? new Date(policy.issued_at * 1000).toLocaleString() : "never"), "meta"),
    ...problems.map((p) => el("span", p, "problem")),
    adminForm([
      ["People may approve their own new devices", "policy-self", { type: "checkbox", checked: policy.device_self_approval }],
      ["A revoked device erases its store", "policy-wipe", { type: "checkbox", checked: !!policy.wipe_on_revoke }],
      ["Certificates stay valid for (days; empty: the default)", "policy-lifetime", { type: "number", min: 1, value: days(policy.certificate_lifetime_secs) }],
    ], "Sign and publish", async () => {
      const lifetime = value("policy-lifetime");
      const next = await post("/api/admin/policy", {
        device_self_approval: document.getElementById("policy-self").checked,
        wipe_on_revoke: document.getElementById("policy-wipe").checked,
        certificate_lifetime_secs: lifetime ? Number(lifetime) * 86400 : null,
      });
      return "published version " + next.policy.version;
    }))];
  return rows;
}

async function adminAudit() {
  const events = await api("/api/admin/audit?limit=200");
  const rows = events.reverse().map((e) => {
    const row = el("li");
    row.append(el("strong", e.event), el("span", " " + e.actor + " → " + e.subject + (e.group ? " in " + e.group : "")));
    row.append(el("span", e.at, "meta"));
    return row;
  });
  if (!rows.length) rows.push(el("li", "nothing recorded", "meta"));
  rows.unshift(el("li", "What the relay recorded: who did what to whom, never what was said.", "meta"));
  return rows;
}
