// Enrolment: a device with no identity joins with an invite code (and the profile an
// admin vets) or a device link code, then waits, live, until it is approved.
"use strict";

function labelled(text, input) {
  const wrap = el("label", text);
  wrap.append(input);
  return wrap;
}

function input(id, { required = false, max = 100, multiline = false } = {}) {
  const node = el(multiline ? "textarea" : "input");
  node.id = id;
  node.maxLength = max;
  node.required = required;
  node.autocomplete = "off";
  return node;
}

// One form: its fields, a submit button and where its outcome shows.
function enrolForm(title, fields, submitLabel, send) {
  const form = el("form");
  const outcome = el("p", "", "problem");
  outcome.setAttribute("role", "status");
  const submit = el("button", submitLabel);
  submit.type = "submit";
  form.append(...fields, submit, outcome);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    outcome.textContent = "";
    try {
      await send();
      await refresh();
    } catch (e) {
      outcome.textContent = e.message;
    } finally {
      submit.disabled = false;
    }
  });
  return [el("h2", title), form];
}

// The enrolment screens, for a device that is not approved yet.
function showEnrol(status) {
  const key = JSON.stringify(status);
  const screen = showFullScreen();
  // The same screen stays as it is (with what the user typed) until the status changes.
  if (state.enrolShown === key) return;
  state.enrolShown = key;
  const value = (id) => document.getElementById(id).value;
  if (status.phase === "enrol") {
    document.getElementById("me").textContent = "";
    screen.replaceChildren(
      el("h1", "Set up this device"),
      el("p", "Your admin gives you an invite code. If you already use Muster on another device, make a link code there (Me → Link a new device). The first admin creates the organisation (at the bottom)."),
      ...enrolForm("Join your organisation", [
        labelled("Invite code", input("join-code", { required: true, max: 4000, multiline: true })),
        labelled("Your name as colleagues will see it", input("join-name", { required: true })),
        labelled("Title (optional)", input("join-title")),
        labelled("Department (optional)", input("join-department")),
      ], "Send my request", () => api("/api/join", {
        method: "POST",
        body: JSON.stringify({
          code: value("join-code"),
          profile: { display_name: value("join-name"), title: value("join-title"), department: value("join-department") },
        }),
      })),
      ...enrolForm("Add this device to my account", [
        labelled("Link code", input("link-code", { required: true, max: 4000, multiline: true })),
      ], "Link this device", () => api("/api/join", {
        method: "POST",
        body: JSON.stringify({ code: value("link-code") }),
      })),
      ...enrolForm("Create a new organisation", [
        el("p", "For the first admin, on a relay nobody uses yet: `muster-relay serve` printed its address, certificate fingerprint and bootstrap token. This device will hold the organisation's root key: back it up afterwards (muster admin root backup).", "meta"),
        labelled("Relay address (host:port)", input("org-relay", { required: true, max: 255 })),
        labelled("Certificate fingerprint", input("org-fingerprint", { required: true, max: 200 })),
        labelled("Bootstrap token", input("org-token", { required: true, max: 200 })),
        labelled("Organisation name", input("org-name", { required: true })),
        labelled("Your handle (lowercase letters, digits, . _ -)", input("org-user", { required: true, max: 64 })),
        labelled("Display name (optional)", input("org-display-name")),
      ], "Create the organisation", () => api("/api/org", {
        method: "POST",
        body: JSON.stringify({
          relay: value("org-relay"), fingerprint: value("org-fingerprint"), token: value("org-token"),
          name: value("org-name"), user: value("org-user"), display_name: value("org-display-name"),
        }),
      })),
    );
  } else if (status.phase === "waiting") {
    document.getElementById("me").textContent = status.user + " · " + status.org;
    const device = el("p", "This device: ");
    device.append(el("span", status.device_id, "device"));
    screen.replaceChildren(
      el("h1", "Waiting for approval"),
      el("p", "Your request reached " + status.org + ". An admin checks it and approves it; for another device of yours, you can also approve it on a device you already use (Me)."),
      device,
      el("p", "This page moves on by itself once the request is approved: keep it open."),
    );
  } else if (status.phase === "rejected") {
    screen.replaceChildren(
      el("h1", "Request rejected"),
      el("p", "An admin rejected the request of " + status.user + ": " + status.why, "problem"),
      el("p", "Ask your admin for a new invite; this device must be set up afresh (a new muster home)."),
    );
  }
}
