// Attachments: a file picked or dropped on the conversation is uploaded to this device
// (progress shown), which encrypts it and sends it; a download is checked and decrypted
// by this device and handed to the browser as plain bytes, never shown in the page.
"use strict";

function sizeText(bytes) {
  if (bytes < 1024) return bytes + " B";
  if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(1) + " KiB";
  return (bytes / (1024 * 1024)).toFixed(1) + " MiB";
}

// A sender's file name as a plain file name: no folders, no control or direction
// characters (which could make "report\u202Efdp.exe" look like a PDF).
function safeFileName(name) {
  const bare = name.split(/[\\/]/).pop()
    .replace(/[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]/g, "")
    .replace(/\s+/g, " ").trim();
  return bare && bare !== "." && bare !== ".." ? bare : "attachment";
}

// The attachment of message `m`: its name, size and a Download button.
function attachmentView(m) {
  const a = { ...m.attachment, name: safeFileName(m.attachment.name) };
  const box = el("span", undefined, "file");
  box.append(el("span", "📎 " + a.name, "file-name"), el("span", sizeText(a.size), "when"));
  const get = el("button", "Download");
  get.type = "button";
  get.setAttribute("aria-label", "Download " + a.name);
  get.addEventListener("click", async () => {
    get.disabled = true;
    get.textContent = "Downloading…";
    try {
      const response = await fetch("/api/messages/" + encodeURIComponent(m.id) + "/attachment", {
        credentials: "omit",
        headers: { authorization: "Bearer " + state.session },
      });
      if (!response.ok) {
        let why = response.statusText;
        try { why = (await response.json()).error || why; } catch (_) { /* not JSON */ }
        throw new Error(why);
      }
      const url = URL.createObjectURL(await response.blob());
      const save = el("a");
      save.href = url;
      save.download = a.name;
      document.body.append(save);
      save.click();
      save.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
      get.textContent = "Download";
    } catch (e) {
      get.textContent = "Download";
      status("not downloaded: " + e.message);
    } finally {
      get.disabled = false;
    }
  });
  box.append(get);
  return box;
}

// Uploads `file` to the open group, showing how far it has got.
function upload(file) {
  const group = state.group;
  if (!group) return;
  const bar = document.getElementById("upload");
  const progress = document.getElementById("upload-progress");
  const label = document.getElementById("upload-text");
  bar.hidden = false;
  progress.value = 0;
  label.textContent = "Uploading " + file.name + "…";
  const request = new XMLHttpRequest();
  request.open("POST", "/api/groups/" + encodeURIComponent(group) + "/attachments?name=" + encodeURIComponent(file.name));
  request.setRequestHeader("authorization", "Bearer " + state.session);
  request.setRequestHeader("content-type", "application/octet-stream");
  request.upload.addEventListener("progress", (event) => {
    if (!event.lengthComputable) return;
    progress.value = event.loaded / event.total;
    label.textContent = "Uploading " + file.name + ": " + Math.round((100 * event.loaded) / event.total) + "%";
    if (event.loaded === event.total) label.textContent = "Encrypting and sending " + file.name + "…";
  });
  request.addEventListener("load", () => {
    if (request.status === 200) {
      label.textContent = "Sent " + file.name;
      progress.value = 1;
      refreshMessages();
    } else {
      let why = request.statusText;
      try { why = JSON.parse(request.responseText).error || why; } catch (_) { why = request.responseText || why; }
      label.textContent = file.name + " not sent: " + why;
    }
  });
  request.addEventListener("error", () => { label.textContent = file.name + " not sent: the connection to this device failed"; });
  request.send(file);
}

document.addEventListener("DOMContentLoaded", () => {
  const picker = document.getElementById("file");
  document.getElementById("attach").addEventListener("click", () => picker.click());
  picker.addEventListener("change", () => {
    for (const file of picker.files) upload(file);
    picker.value = "";
  });
  const zone = document.getElementById("conversation");
  zone.addEventListener("dragover", (event) => {
    if (!state.group || !event.dataTransfer.types.includes("Files")) return;
    event.preventDefault();
    zone.classList.add("dropping");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dropping"));
  zone.addEventListener("drop", (event) => {
    zone.classList.remove("dropping");
    if (!state.group || !event.dataTransfer.files.length) return;
    event.preventDefault();
    for (const file of event.dataTransfer.files) upload(file);
  });
  document.getElementById("upload-close").addEventListener("click", () => { document.getElementById("upload").hidden = true; });
});
