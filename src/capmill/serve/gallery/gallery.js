// capmill web gallery: caption uploaded images through /v1/captions, and browse a run folder (--browse).
"use strict";

const $ = (sel) => document.querySelector(sel);
const STATUSES = ["ok", "repaired", "invalid", "error"];
const PAGE = 60;
const MAX_PARALLEL = 8; // uploads in flight at once; the server batches them
let info = null;

async function api(path, options = {}) {
  const res = await fetch(path, { credentials: "same-origin", ...options });
  const type = res.headers.get("content-type") || "";
  const body = type.includes("json") ? await res.json() : await res.text();
  if (!res.ok) {
    const message = body && body.error ? body.error.message : `HTTP ${res.status}`;
    throw Object.assign(new Error(message), { status: res.status });
  }
  return body;
}

function card(name) {
  const node = $("#card-template").content.firstElementChild.cloneNode(true);
  node.querySelector(".name").textContent = name.split("/").pop() || name; // ids may be whole paths
  node.querySelector(".name").title = name;
  return node;
}

function setBadge(node, status, edited) {
  const badge = node.querySelector(".badge");
  badge.textContent = status;
  badge.className = "badge " + status;
  badge.dataset.status = status;
  node.dataset.status = status;
  let mark = node.querySelector(".badge.edited");
  if (edited && !mark) {
    mark = document.createElement("span");
    mark.className = "badge edited";
    mark.textContent = "edited";
    badge.after(mark);
  } else if (!edited && mark) {
    mark.remove();
  }
}

function fillRecord(node, rec) {
  node.querySelector(".caption").textContent = rec.edited_caption ?? rec.caption ?? "";
  node.querySelector(".message").textContent = rec.error || "";
  node.querySelector(".raw").textContent = rec.raw ?? "";
  const box = node.querySelector(".structured-box");
  if (rec.structured) {
    node.querySelector(".structured").textContent = JSON.stringify(rec.structured, null, 2);
    box.hidden = false;
  }
  setBadge(node, rec.status, rec.edited_caption != null);
}

// ---------------------------------------------------------------- caption tab

let queue = [];
let active = 0;
let done = 0;

function summarize() {
  const total = document.querySelectorAll("#upload-grid .card").length;
  $("#upload-summary").textContent = total ? `${done} of ${total} captioned` : "";
}

function enqueue(files) {
  for (const file of files) {
    const node = card(file.name);
    const img = node.querySelector("img");
    img.src = URL.createObjectURL(file);
    setBadge(node, "queued");
    $("#upload-grid").prepend(node);
    queue.push({ file, node });
  }
  summarize();
  pump();
}

function pump() {
  while (active < MAX_PARALLEL && queue.length) {
    const job = queue.shift();
    active += 1;
    captionOne(job).finally(() => { active -= 1; done += 1; summarize(); pump(); });
  }
}

async function captionOne({ file, node, text }) {
  setBadge(node, "running");
  const form = new FormData();
  if (file) form.append("file", file, file.name);
  if (text) form.append("text", text);
  const mode = $("#mode-select").value;
  if (mode && !text) form.append("mode", mode);
  if (text) form.append("mode", "text");
  try {
    const rec = await api("/v1/captions", { method: "POST", body: form });
    fillRecord(node, rec);
    node.dataset.id = rec.id;
  } catch (err) {
    node.querySelector(".message").textContent = err.message;
    setBadge(node, "error");
  }
}

function setupCaption() {
  const zone = $("#dropzone");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    enqueue([...e.dataTransfer.files]);
  });
  $("#file-input").addEventListener("change", (e) => { enqueue([...e.target.files]); e.target.value = ""; });
  const select = $("#mode-select");
  const imageModes = (info.modes || []).filter((m) => m !== "text");
  for (const m of imageModes) select.add(new Option(m, m, false, m === info.default_mode));
  $("#mode-label").hidden = imageModes.length < 2;
  if ((info.modes || []).includes("text")) {
    $("#text-form").hidden = false;
    $("#text-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const text = $("#text-input").value.trim();
      if (!text) return;
      const node = card(text.slice(0, 60));
      node.querySelector(".thumb").classList.add("empty");
      $("#upload-grid").prepend(node);
      active += 1;
      captionOne({ node, text }).finally(() => { active -= 1; done += 1; summarize(); pump(); });
      summarize();
    });
  }
}

// ---------------------------------------------------------------- browse tab

const browse = { status: "", q: "", offset: 0 };

function browseQuery(extra = {}) {
  const params = new URLSearchParams();
  if (browse.status) params.set("status", browse.status);
  if (browse.q) params.set("q", browse.q);
  for (const [k, v] of Object.entries(extra)) params.set(k, v);
  return params.toString();
}

function browseCard(rec) {
  const node = card(rec.id);
  node.dataset.id = rec.id;
  const img = node.querySelector("img");
  img.loading = "lazy";
  img.src = "/browse/thumb/" + encodeURIComponent(rec.id);
  img.addEventListener("error", () => { img.removeAttribute("src"); node.querySelector(".thumb").classList.add("empty"); });
  fillRecord(node, rec);
  const editor = node.querySelector(".editor");
  editor.hidden = false;
  const area = editor.querySelector("textarea");
  area.value = rec.edited_caption ?? rec.caption ?? "";
  const modelCaption = () => rec.edited_caption != null ? "model: " + (rec.caption ?? "") : "";
  editor.querySelector(".model-caption").textContent = modelCaption();
  editor.querySelector(".save").addEventListener("click", async () => {
    const saved = editor.querySelector(".saved");
    saved.textContent = "saving…";
    try {
      const updated = await api("/browse/edits/" + encodeURIComponent(rec.id), {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ caption: area.value }),
      });
      Object.assign(rec, updated);
      fillRecord(node, rec);
      editor.querySelector(".model-caption").textContent = modelCaption();
      saved.textContent = "saved";
      refreshCounts();
    } catch (err) {
      saved.textContent = "not saved: " + err.message;
    }
  });
  return node;
}

function renderFilters(counts, total) {
  const box = $("#status-filter");
  box.textContent = "";
  const options = [["", `all ${total}`], ...STATUSES.map((s) => [s, `${s} ${counts[s] || 0}`]), ["edited", `edited ${counts.edited || 0}`]];
  for (const [value, label] of options) {
    const b = document.createElement("button");
    b.textContent = label;
    b.dataset.status = value || "all";
    if (value === browse.status) b.classList.add("active");
    b.addEventListener("click", () => { browse.status = value; loadBrowse(); });
    box.append(b);
  }
}

async function refreshCounts() {
  const data = await api("/browse/records?" + browseQuery({ limit: 1 }));
  renderFilters(data.counts, data.total);
}

async function loadBrowse(append = false) {
  if (!append) browse.offset = 0;
  const data = await api("/browse/records?" + browseQuery({ offset: browse.offset, limit: PAGE }));
  renderFilters(data.counts, data.total);
  $("#run-dir").textContent = data.run_dir;
  const grid = $("#browse-grid");
  if (!append) grid.textContent = "";
  for (const rec of data.records) grid.append(browseCard(rec));
  browse.offset += data.records.length;
  $("#browse-summary").textContent = `${data.matched} of ${data.total} records shown by this filter`;
  $("#more").hidden = browse.offset >= data.matched;
  $("#export").href = "/browse/export?" + browseQuery();
  grid.dataset.loaded = String(Date.now());
}

function setupBrowse() {
  $("#tab-browse").hidden = false;
  let timer = null;
  $("#search").addEventListener("input", (e) => {
    clearTimeout(timer);
    timer = setTimeout(() => { browse.q = e.target.value.trim(); loadBrowse(); }, 200);
  });
  $("#more").addEventListener("click", () => loadBrowse(true));
}

function show(tab) {
  for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t.dataset.tab === tab);
  $("#view-caption").hidden = tab !== "caption";
  $("#view-browse").hidden = tab !== "browse";
  if (tab === "browse") loadBrowse();
}

async function main() {
  info = await api("/gallery/info");
  $("#model-info").textContent = info.model ? `${info.model} · profile ${info.profile}` : "no model loaded (browse only)";
  for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => show(t.dataset.tab));
  if (info.model) setupCaption(); else $("#tab-caption").hidden = true;
  if (info.browse) setupBrowse();
  show(info.model ? (location.hash === "#browse" && info.browse ? "browse" : "caption") : "browse");
  document.body.dataset.ready = "1";
}

main().catch((err) => { $("#model-info").textContent = "error: " + err.message; });
