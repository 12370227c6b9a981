// The registration desk (/desk): search, check-in, booking, today's lists, all from the keyboard.
// Texts come from the message catalogue the page embeds; card readers and barcode scanners
// from scanners.yaml. Order changes arrive as server-sent events (/api/desk/events).

import { VIEWER_WINDOW, openInViewer, viewerUrl } from "/static/viewer_window.js";

const messages = JSON.parse(document.getElementById("desk-messages").textContent);
const scanners = JSON.parse(document.getElementById("desk-scanners").textContent);
const csrf = document.querySelector('meta[name="csrf-token"]')?.content ?? "";
const $ = (id) => document.getElementById(id);

const SEARCH_DELAY_MS = 150; // typing pauses this long before a search goes out
const MESSAGE_MS = 8000;

function t(key, values = {}) {
  let text = messages[key] ?? key;
  for (const [name, value] of Object.entries(values)) text = text.replaceAll(`{${name}}`, String(value));
  return text;
}

// -- talking to the server ------------------------------------------------------------------

class Refused extends Error {}

async function api(method, path, body) {
  const options = { method, headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  if (method !== "GET") options.headers["X-CSRF-Token"] = csrf;
  const response = await fetch(path, options);
  if (response.status === 401) {
    window.location.assign(`/login?next=${encodeURIComponent(location.pathname)}&reason=expired`);
    throw new Refused("401");
  }
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) throw new Refused(reasonOf(data) || `${response.status}`);
  return data;
}

function reasonOf(data) {
  if (!data) return "";
  if (typeof data.detail === "string") return data.detail;
  if (Array.isArray(data.detail)) return data.detail.map((d) => d.msg).join("; ");
  if (data.detail?.refusals?.length) {  // a booking refused: in the page's language where the problem is known
    return [...new Set(data.detail.refusals.map((r) => (messages[`desk.refused.${r.problem}`] ?? r.message)))].join("; ");
  }
  if (data.detail?.message) return data.detail.message;
  return data.message ?? "";
}

function say(text, kind = "note") {
  const box = $("message");
  box.textContent = text;
  box.className = `message ${kind}`;
  box.hidden = false;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { box.hidden = true; }, MESSAGE_MS);
}

function failed(error) {
  if (!(error instanceof Refused)) console.error(error); // a fault of the page: the console says where
  if (!(error instanceof Refused) || error.message !== "401") say(t("desk.error", { reason: error.message }), "error");
}

// A list is loaded again whenever something changes; answers can come back out of order, and
// only the answer to the latest load is shown.
function latest() {
  let serial = 0;
  return () => { const mine = ++serial; return () => mine === serial; };
}

// -- lists moved through with the arrow keys --------------------------------------------------

class Listbox {
  constructor(element, render, onEnter) {
    this.element = element;
    this.render = render;
    this.onEnter = onEnter;
    this.items = [];
    this.index = -1;
    element.tabIndex = 0;
    element.addEventListener("keydown", (event) => this.key(event));
    element.addEventListener("click", (event) => {
      const row = event.target.closest("li[data-index]");
      if (row) { this.select(Number(row.dataset.index)); this.onEnter?.(this.current()); }
    });
  }
  show(items, index = items.length ? 0 : -1) {
    this.items = items;
    this.element.replaceChildren(...items.map((item, i) => {
      const row = this.render(item);
      row.dataset.index = i;
      row.setAttribute("role", "option");
      return row;
    }));
    this.select(index);
  }
  select(index) {
    this.index = Math.max(-1, Math.min(index, this.items.length - 1));
    [...this.element.children].forEach((row, i) => row.setAttribute("aria-selected", String(i === this.index)));
    this.element.children[this.index]?.scrollIntoView({ block: "nearest" });
  }
  current() { return this.items[this.index]; }
  key(event) {
    if (event.key === "ArrowDown") { this.select(this.index + 1); event.preventDefault(); }
    else if (event.key === "ArrowUp") { this.select(this.index - 1); event.preventDefault(); }
    else if (event.key === "Enter" && this.current()) { this.onEnter?.(this.current()); event.preventDefault(); }
  }
}

function row(...cells) {
  const li = document.createElement("li");
  for (const cell of cells) {
    if (cell === null || cell === undefined) continue;
    const span = document.createElement("span");
    if (typeof cell === "string") span.textContent = cell;
    else { span.textContent = cell.text; span.className = cell.class ?? ""; if (cell.data) Object.assign(span.dataset, cell.data); }
    li.append(span);
  }
  return li;
}

const statusBadge = (status) => ({ text: t(`desk.status.${status}`), class: `badge ${status}`, data: { status } });

// A time of the hospital as the server wrote it (RFC 3339 with the hospital's offset): shown as
// written, whatever zone the desk's computer is set to.
function when(iso) {
  if (!iso) return "";
  return `${iso.slice(0, 10)} ${iso.slice(11, 16)}`;
}

function today() {
  const now = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  return `${now.getFullYear()}-${pad(now.getMonth() + 1)}-${pad(now.getDate())}`;
}

// -- the patient -----------------------------------------------------------------------------

const state = { patient: null, rooms: [], procedures: [] };

const results = new Listbox($("results"), (p) => row(
  { text: p.name || p.pinyin, class: "name" }, { text: p.pinyin ?? "", class: "pinyin" },
  t(`desk.sex.${p.sex || "U"}`), p.age !== null && p.age !== undefined ? t("desk.age.years", { n: p.age }) : "",
  { text: p.patient_id, class: "id" },
  p.source === "his" ? { text: t("desk.search.from_his"), class: "badge his" } : null,
), (p) => choosePatient(p));

// The exam's images in the viewer, in a window of its own (Alt+V on the selected exam), for the
// roles that may view images (the page says so in data-viewer) and once the modality has begun.
const mayView = document.querySelector(".desk")?.dataset.viewer === "yes";
const WITH_IMAGES = new Set(["in_progress", "completed", "images_received", "reported", "verified"]);
const viewable = (o) => mayView && o?.study_instance_uid && WITH_IMAGES.has(o.status);

function openImages(o) {
  if (viewable(o)) openInViewer(o.study_instance_uid);
}

const exams = new Listbox($("exams"), (o) => {
  const step = o.steps?.[0] ?? {};
  const li = row({ text: o.procedure_text || o.procedure_code, class: "exam" },
    step.station_name || step.station_ae_title || step.modality || "", when(step.start),
    { text: o.accession_number, class: "id" }, statusBadge(o.status));
  if (viewable(o)) {
    const link = document.createElement("a");
    link.href = viewerUrl(o.study_instance_uid);
    link.target = VIEWER_WINDOW;
    link.className = "images";
    link.title = `${t("desk.exams.images")} (Alt+V)`;
    link.style.whiteSpace = "nowrap";
    link.textContent = t("desk.exams.images");
    link.addEventListener("click", (event) => {
      event.stopPropagation();
      if (event.button === 0 && !event.ctrlKey && !event.metaKey && !event.shiftKey) {
        event.preventDefault();  // the open viewer shows it in place; a new tab (Ctrl+click) loads it
        openImages(o);
      }
    });
    li.append(link);
  }
  li.dataset.order = o.id;
  return li;
}, (o) => checkIn(o));

async function choosePatient(patient) {
  state.patient = patient;
  exams.show([]);  // nothing of the patient before stays on screen meanwhile
  $("patient").hidden = false;
  $("patient-name").textContent = patient.name || patient.pinyin;
  $("patient-pinyin").textContent = patient.name ? (patient.pinyin ?? "") : "";
  const facts = [
    ["desk.patient.id", patient.patient_id], ["desk.patient.sex", t(`desk.sex.${patient.sex || "U"}`)],
    ["desk.patient.birth", patient.birth_date ?? ""],
    ["desk.patient.age", patient.age !== null && patient.age !== undefined ? t("desk.age.years", { n: patient.age }) : ""],
    ["desk.patient.phone", patient.phone ?? ""], ["desk.patient.national_id", patient.national_id ?? ""],
    ["desk.patient.cards", (patient.card_numbers ?? []).join("、")],
  ];
  $("patient-facts").replaceChildren(...facts.filter(([, v]) => v).flatMap(([k, v]) => {
    const dt = document.createElement("dt"); dt.textContent = t(k);
    const dd = document.createElement("dd"); dd.textContent = v;
    return [dt, dd];
  }));
  const seen = gestures;
  await loadExams();
  // The exams take the focus unless the clerk has moved on (F2, F3, a click…) while they loaded.
  if (gestures === seen) $("exams").focus();
}

// Every key and click the registrar gives, counted before any handler runs: a list that loads
// late takes the focus only if nothing was asked meanwhile.
let gestures = 0;
for (const kind of ["keydown", "pointerdown"]) document.addEventListener(kind, () => { gestures += 1; }, true);

const examsLoad = latest();

async function loadExams(highlight) {
  if (!state.patient) return;
  const current = examsLoad();
  try {
    const page = await api("GET", `/api/orders?patient_id=${encodeURIComponent(state.patient.patient_id)}&limit=100`);
    if (!current()) return;
    const items = page.items;
    const at = highlight ? items.findIndex((o) => o.id === highlight) : 0;
    exams.show(items, items.length ? Math.max(at, 0) : -1);
    if (!items.length) $("exams").replaceChildren(row({ text: t("desk.exams.none"), class: "note" }));
  } catch (error) { failed(error); }
}

// -- the search field: typing, and the card readers and scanners that type into it ------------

const search = $("search");
let typed = []; // when each key of what is in the field came
let searchTimer = null;
let searchSerial = 0;

search.addEventListener("keydown", (event) => {
  if (event.key === "ArrowDown" || event.key === "ArrowUp") { results.key(event); return; }
  if (event.key === "Enter") {
    event.preventDefault();
    const scan = scanned(search.value, typed);
    if (scan) { takeScan(scan); return; }
    if (results.current()) { choosePatient(results.current()); return; }
    runSearch(search.value, true); // Enter: the HIS too, when the registry knows no one
    return;
  }
  if (event.key === "Escape") { clearSearch(); event.preventDefault(); return; }
  if (event.key.length === 1) typed.push(performance.now());
});

search.addEventListener("input", () => {
  if (!search.value) typed = [];
  const scan = scanned(search.value, typed, true);
  if (scan) { takeScan(scan); return; }
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => runSearch(search.value), SEARCH_DELAY_MS);
});

function clearSearch() {
  search.value = ""; typed = [];
  results.show([]);
  $("search-status").textContent = "";
}

// A scan: what a device typed, told from a person by its prefix and suffix and by its speed.
function scanned(value, times, onInput = false) {
  if (value.length < scanners.min_length) return null;
  const fast = times.length >= 2 && (times[times.length - 1] - times[0]) / (times.length - 1) < scanners.max_key_interval_ms;
  for (const device of scanners.devices) {
    if (device.prefix && !value.startsWith(device.prefix)) continue;
    if (device.suffix && !value.endsWith(device.suffix)) continue;
    if (onInput && !device.suffix) continue; // without a suffix, the scan ends at Enter
    if (!device.prefix && !device.suffix && !fast) continue; // a person typing
    const inner = value.slice(device.prefix.length, value.length - device.suffix.length);
    if (device.pattern && !new RegExp(device.pattern).test(inner)) continue;
    return { kind: device.kind, value: inner, device: device.name };
  }
  return null;
}

async function takeScan(scan) {
  clearTimeout(searchTimer);
  search.value = ""; typed = [];
  $("search-status").textContent = t(scan.kind === "card" ? "desk.scan.card" : "desk.scan.barcode", { value: scan.value });
  try {
    if (scan.kind === "card") {
      const found = await api("GET", `/api/patients?q=${encodeURIComponent(scan.value)}&limit=2`);
      if (found.items.length === 1) { results.show(found.items); await choosePatient(found.items[0]); }
      else if (!found.items.length) say(t("desk.scan.unknown_card", { value: scan.value }), "error");
      else { results.show(found.items); search.focus(); }
      return;
    }
    const page = await api("GET", `/api/orders?accession_number=${encodeURIComponent(scan.value)}&limit=1`);
    const order = page.items[0];
    if (!order) { say(t("desk.scan.unknown_order", { value: scan.value }), "error"); return; }
    if (order.status === "cancelled" || order.status === "discontinued") {
      say(t("desk.scan.cancelled_order", { value: scan.value }), "error");
      return;
    }
    const found = await api("GET", `/api/patients?q=${encodeURIComponent(order.patient_id)}&limit=1`);
    if (found.items[0]) {
      state.patient = found.items[0];
      const seen = gestures;
      await choosePatient(found.items[0]);
      await loadExams(order.id);
      if (gestures === seen) $("exams").focus();
    }
  } catch (error) { failed(error); }
}

// As the registrar types, the registry alone is searched; Enter asks the HIS as well (it may
// take seconds), when the registry has no one.
async function runSearch(text, his = false) {
  const q = text.trim();
  const serial = ++searchSerial;
  if (!q) { results.show([]); $("search-status").textContent = ""; return; }
  $("search-status").textContent = t("desk.search.searching");
  try {
    const found = await api("GET", `/api/patients?q=${encodeURIComponent(q)}&limit=20&his=${his}`);
    if (serial !== searchSerial) return; // a later search went out meanwhile
    results.show(found.items);
    let status = found.items.length ? t("desk.search.count", { n: found.items.length })
      : t(found.his?.asked ? "desk.search.his_none" : "desk.search.none", { q });
    if (found.his?.error) status += ` · ${t("desk.search.his_error", { error: found.his.error })}`;
    $("search-status").textContent = status;
  } catch (error) { if (serial === searchSerial) failed(error); }
}

// A DICOM person name (PS3.5 6.2.1: Zhang^Wei=张^伟) as people write it: the ideographic group
// run together (张伟), else the alphabetic one with spaces (Zhang Wei).
function personName(pn) {
  const [alphabetic = "", ideographic = ""] = (pn ?? "").split("=");
  const components = (group) => group.split("^").filter(Boolean);
  return ideographic ? components(ideographic).join("") : components(alphabetic).join(" ");
}

// -- check-in, cancel, label ----------------------------------------------------------------

async function checkIn(order) {
  if (order.status !== "scheduled") return;
  try {
    const done = await api("POST", `/api/orders/${order.id}/arrive`, {});
    say(t("desk.requisitions.checked_in", { name: personName(done.patient_name), exam: done.procedure_text }), "ok");
    updateOrder(done.id, done.status);
    loadRequisitions();
  } catch (error) { failed(error); }
}

function selectedExam() {
  return document.activeElement === $("requisitions") ? requisitions.current() : exams.current();
}

function askCancel() {
  const order = selectedExam();
  if (!order) { say(t("desk.patient.none"), "error"); return; }
  $("cancel-what").textContent = `${order.procedure_text} · ${order.accession_number}`;
  $("cancel-reason").value = "";
  $("cancel-error").hidden = true;
  $("cancel").dataset.order = order.id;
  $("cancel").dataset.accession = order.accession_number;
  $("cancel").showModal();
  $("cancel-reason").focus();
}

$("cancel-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const reason = $("cancel-reason").value.trim();
  if (!reason) { $("cancel-error").textContent = t("desk.cancel.reason_required"); $("cancel-error").hidden = false; return; }
  const dialog = $("cancel");
  try {
    const done = await api("POST", `/api/orders/${dialog.dataset.order}/cancel`, { reason });
    dialog.close();
    say(t("desk.cancel.done", { accession: dialog.dataset.accession }), "ok");
    updateOrder(Number(dialog.dataset.order), done?.status ?? "cancelled");
    loadRequisitions();
  } catch (error) {
    $("cancel-error").textContent = t("desk.error", { reason: error.message });
    $("cancel-error").hidden = false;
  }
});

function printLabel() {
  const order = selectedExam();
  if (!order) { say(t("desk.patient.none"), "error"); return; }
  window.open(`/api/orders/${order.id}/label.pdf`, "_blank", "noopener");
}

// -- walk-ins --------------------------------------------------------------------------------

function askWalkIn() {
  $("walkin-form").reset();
  $("walkin-error").hidden = true;
  $("walkin").showModal();
  $("walkin-family").focus();
}

$("walkin-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = {
    family_name: $("walkin-family").value, given_name: $("walkin-given").value, sex: $("walkin-sex").value,
    birth_date: $("walkin-birth").value || null, phone: $("walkin-phone").value,
    national_id: $("walkin-national-id").value, temporary: true,
  };
  try {
    const patient = await api("POST", "/api/patients", body);
    $("walkin").close();
    say(t("desk.walkin.done", { id: patient.patient_id }), "ok");
    results.show([patient]);
    await choosePatient(patient);
  } catch (error) {
    $("walkin-error").textContent = t("desk.error", { reason: error.message });
    $("walkin-error").hidden = false;
  }
});

// -- requisitions ------------------------------------------------------------------------------

const requisitions = new Listbox($("requisitions"), (o) => {
  const li = row({ text: o.name || o.name_pinyin, class: "name" },
    { text: o.procedure_text || o.procedure_code, class: "exam" }, t(`desk.source.${o.source || "other"}`),
    o.department, when(o.start), { text: o.accession_number, class: "id" }, statusBadge(o.status));
  li.dataset.order = o.id;
  return li;
}, (o) => checkIn(o));

const requisitionsLoad = latest();

async function loadRequisitions() {
  const current = requisitionsLoad();
  const params = new URLSearchParams();
  if ($("req-source").value) params.set("source", $("req-source").value);
  if ($("req-department").value.trim()) params.set("department", $("req-department").value.trim());
  try {
    const found = await api("GET", `/api/desk/requisitions?${params}`);
    if (!current()) return;
    const items = found.groups.flatMap((group) => group.items);
    requisitions.show(items);
    if (!items.length) $("requisitions").replaceChildren(row({ text: t("desk.requisitions.none"), class: "note" }));
  } catch (error) { failed(error); }
}

$("req-source").addEventListener("change", loadRequisitions);
$("req-department").addEventListener("change", loadRequisitions);

// -- booking ---------------------------------------------------------------------------------

const slots = new Listbox($("slots"), (s) => {
  // a time that has passed has no free place without being booked full
  const state = s.free > 0 ? t("desk.book.slot_free", { n: s.free })
    : s.booked >= s.capacity ? t("desk.book.slot_full") : t("desk.book.slot_past");
  const li = row({ text: s.start.slice(11, 16), class: "time" }, state);
  if (s.free <= 0) li.classList.add("full");
  return li;
}, () => $("book").requestSubmit());

async function loadRooms() {
  try {
    [state.rooms, state.procedures] = await Promise.all([api("GET", "/api/desk/rooms"), api("GET", "/api/desk/procedures")]);
    $("book-procedure").replaceChildren(...state.procedures.map((p) => new Option(`${p.text} (${p.code})`, p.code)));
    fillRooms();
  } catch (error) { failed(error); }
}

function fillRooms() {
  const procedure = state.procedures.find((p) => p.code === $("book-procedure").value);
  const fitting = state.rooms.filter((r) => !procedure || r.modality === procedure.modality);
  $("book-room").replaceChildren(...fitting.map((r) => new Option(r.name ? `${r.name} (${r.room})` : r.room, r.room)));
  loadSlots();
}

const slotsLoad = latest();

// keep: a refresh of the list keeps the time the clerk has moved to (a slower answer to an
// earlier change may land while the clerk goes down the list); after a booking, not kept
async function loadSlots(keep = true) {
  const current = slotsLoad();
  const room = $("book-room").value, day = $("book-date").value, procedure = $("book-procedure").value;
  if (!room || !day) { slots.show([]); return; }
  try {
    const found = await api("GET", `/api/desk/slots?room=${encodeURIComponent(room)}&date=${day}&procedure=${encodeURIComponent(procedure)}`);
    if (!current()) return;
    const items = found.slots ?? [];
    const chosen = keep === false ? -1 : items.findIndex((s) => s.start === slots.current()?.start);
    // else the first free time; when none is free, the first, so that Enter gets the server's reason
    slots.show(items, chosen >= 0 ? chosen : Math.max(items.findIndex((s) => s.free > 0), 0));
    if (!items.length) $("slots").replaceChildren(row({ text: t("desk.book.no_slots"), class: "note" }));
  } catch (error) { failed(error); }
}

$("book-procedure").addEventListener("change", fillRooms);
$("book-room").addEventListener("change", loadSlots);
$("book-date").addEventListener("change", loadSlots);

$("book").addEventListener("submit", async (event) => {
  event.preventDefault();
  if (!state.patient) { say(t("desk.patient.none"), "error"); search.focus(); return; }
  const slot = slots.current();
  if (!slot) { say(t("desk.book.choose_slot"), "error"); $("slots").focus(); return; }
  const exam = {
    procedure_code: $("book-procedure").value, room: $("book-room").value, start: slot.start,
    priority: $("book-priority").value, reason: $("book-reason").value.trim(),
    requisition_number: $("book-requisition").value.trim(),
  };
  try {
    const booked = await api("POST", "/api/orders", { patient_id: state.patient.patient_id, exams: [exam] });
    const order = booked.orders[0];
    say(t("desk.book.done", { exam: order.procedure_text, room: order.room || exam.room, when: when(order.start), accession: order.accession_number }), "ok");
    await loadExams(order.id);
    loadSlots(false);
  } catch (error) { failed(error); loadSlots(false); }
});

// -- today's lists ---------------------------------------------------------------------------

const todayLoad = latest();

async function loadToday() {
  const current = todayLoad();
  const day = $("today-date").value || today();
  $("today-csv").href = `/api/desk/today?date=${day}&format=csv`;
  try {
    const found = await api("GET", `/api/desk/today?date=${day}`);
    if (!current()) return;
    const box = $("today");
    box.replaceChildren();
    const stages = [["registered", "desk.today.registered"], ["examined", "desk.today.examined"], ["completed", "desk.today.completed"]];
    const summary = document.createElement("p");
    summary.className = "totals";
    summary.id = "today-totals";
    summary.textContent = stages.map(([k, label]) => `${t(label)} ${found.stages[k]?.total ?? 0}`).join(" · ");
    box.append(summary);
    for (const [key, label] of [["by_modality", "desk.today.by_modality"], ["by_room", "desk.today.by_room"], ["by_source", "desk.today.by_source"]]) {
      const table = document.createElement("table");
      table.className = "totals";
      table.dataset.by = key;
      const caption = table.createCaption(); caption.textContent = t(label);
      const head = table.createTHead().insertRow();
      head.insertCell();
      for (const [, stageLabel] of stages) head.insertCell().textContent = t(stageLabel);
      const names = [...new Set(stages.flatMap(([k]) => Object.keys(found.stages[k]?.[key] ?? {})))].sort();
      for (const name of names) {
        const tr = table.insertRow();
        tr.insertCell().textContent = key === "by_source" ? t(`desk.source.${name}`) : name;
        for (const [k] of stages) tr.insertCell().textContent = found.stages[k]?.[key]?.[name] ?? 0;
      }
      box.append(table);
    }
  } catch (error) { failed(error); }
}

$("today-date").addEventListener("change", loadToday);
$("today-print").addEventListener("click", () => window.print());

// -- tabs and keys ---------------------------------------------------------------------------

function showTab(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.hidden = tab.id !== `tab-${name}`;
  for (const button of document.querySelectorAll("[data-tab]")) button.setAttribute("aria-selected", String(button.dataset.tab === name));
  if (name === "requisitions") { loadRequisitions(); $("requisitions").focus(); }
  if (name === "book") {
    if (!$("book-date").value) $("book-date").value = today();
    if (!state.rooms.length) loadRooms(); else loadSlots();
    $("book-procedure").focus();
  }
  if (name === "today") { if (!$("today-date").value) $("today-date").value = today(); loadToday(); $("today-date").focus(); }
}

for (const button of document.querySelectorAll("[data-tab]")) button.addEventListener("click", () => showTab(button.dataset.tab));
$("show-keys").addEventListener("click", () => $("keys").showModal());

const KEYS = {
  F1: () => $("keys").showModal(),
  F2: () => { search.focus(); search.select(); },
  F3: () => showTab("requisitions"),
  F4: () => showTab("book"),
  F6: () => showTab("today"),
  F7: () => askWalkIn(),
  F8: () => printLabel(),
  F9: () => askCancel(),
};

document.addEventListener("keydown", (event) => {
  if (event.altKey && event.key.toLowerCase() === "v" && viewable(exams.current())) {
    event.preventDefault(); openImages(exams.current()); return;
  }
  const action = KEYS[event.key];
  if (action) { event.preventDefault(); action(); return; }
  if (event.key === "Escape" && !document.querySelector("dialog[open]") && document.activeElement !== search) {
    search.focus(); search.select(); event.preventDefault();
  }
  if (event.key === "/" && document.activeElement?.tagName !== "INPUT") { search.focus(); event.preventDefault(); }
});

// Enter confirms a dialog from any of its fields (a select too, which alone would not submit).
for (const form of document.querySelectorAll("dialog form")) {
  form.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && event.target.tagName === "SELECT") { event.preventDefault(); form.requestSubmit(); }
  });
}

// -- live changes ----------------------------------------------------------------------------

function updateOrder(id, status) {
  for (const list of [exams, requisitions]) {
    const item = list.items.find((o) => o.id === id);
    if (item) item.status = status;
  }
  for (const badge of document.querySelectorAll(`li[data-order="${id}"] .badge`)) {
    badge.textContent = t(`desk.status.${status}`);
    badge.className = `badge ${status}`;
    badge.dataset.status = status;
  }
}

function listen() {
  const source = new EventSource("/api/desk/events");
  source.addEventListener("order", (event) => {
    const change = JSON.parse(event.data);
    updateOrder(change.order, change.status);
    if (!$("tab-today").hidden) loadToday();
  });
  source.addEventListener("open", () => { document.body.classList.remove("offline"); });
  source.addEventListener("error", () => { document.body.classList.add("offline"); });
}

showTab("requisitions");
search.focus();
listen();
