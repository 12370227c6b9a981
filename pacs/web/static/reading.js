// The reading pages: the worklist (/reading) and the report editor (/reading/{order}).
// Texts come from the message catalogue the page embeds; data from /api/reading and /api/reports.
// Everything has a key (F1 lists them).

import { openInViewer } from "/static/viewer_window.js";

const messages = JSON.parse(document.getElementById("reading-messages").textContent);
const settings = JSON.parse(document.getElementById("reading-settings").textContent);
const csrf = document.querySelector('meta[name="csrf-token"]')?.content ?? "";
const $ = (id) => document.getElementById(id);
const MESSAGE_MS = 10000;

function t(key, values = {}) {
  let text = messages[key] ?? key;
  for (const [name, value] of Object.entries(values)) text = text.replaceAll(`{${name}}`, String(value ?? ""));
  return text;
}

class Refused extends Error {
  constructor(status, reason) { super(reason); this.status = status; }
}

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
    throw new Refused(401, "401");
  }
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  if (!response.ok) {
    const detail = data?.detail;
    const reason = typeof detail === "string" ? detail : Array.isArray(detail) ? detail.map((d) => d.msg).join("; ") : `${response.status}`;
    throw new Refused(response.status, reason);
  }
  return data;
}

function say(text, kind = "note") {
  const box = $("message");
  box.textContent = text;
  box.className = `message ${kind}`;
  box.hidden = false;
  clearTimeout(say.timer);
  if (kind !== "error") say.timer = setTimeout(() => { box.hidden = true; }, MESSAGE_MS);
}

function when(iso) {
  if (!iso) return "";
  return new Date(iso).toLocaleString(settings.lang, { year: "numeric", month: "2-digit", day: "2-digit",
                                                      hour: "2-digit", minute: "2-digit", hour12: false });
}

function waited(minutes) {
  const hours = Math.floor(minutes / 60);
  return hours ? t("reading.waiting.hours", { h: hours, m: minutes % 60 }) : t("reading.waiting.minutes", { m: minutes });
}

function sexAge(sex, age) {
  const shownSex = sex ? t(`reading.sex.${sex}`) : "";
  const shownAge = age ? t(`reading.age.${age.slice(-1)}`, { n: parseInt(age, 10) }) : "";
  return [shownSex, shownAge].filter(Boolean).join(" · ");
}

function statusText(row) {
  if (row.report_status) return t(`reading.report.${row.report_status}`);
  return t("reading.report.none");
}

function keyOn(event, key) {
  return event.altKey && !event.ctrlKey && !event.metaKey && event.key.toLowerCase() === key;
}

// -- the keys dialog, on both pages ---------------------------------------------------------

$("show-keys")?.addEventListener("click", () => $("keys").showModal());
document.addEventListener("keydown", (event) => {
  if (event.key === "F1") { event.preventDefault(); $("keys").open ? $("keys").close() : $("keys").showModal(); }
});

// -- the worklist ---------------------------------------------------------------------------

function worklistPage() {
  const rows = $("rows");
  let items = [];
  let selected = 0;
  const filters = { modality: $("f-modality"), body_part: $("f-body-part"), priority: $("f-priority"),
                    claimed: $("f-claimed"), sort: $("f-sort") };
  const known = { modality: new Set(), body_part: new Set() };

  async function load() {
    const params = new URLSearchParams();
    for (const [name, select] of Object.entries(filters)) if (select.value) params.set(name, select.value);
    if ($("q").value.trim()) params.set("q", $("q").value.trim());
    let answer;
    try {
      answer = await api("GET", `/api/reading?${params}`);
    } catch (error) {
      say(t("reading.failed", { reason: error.message }), "error");
      return;
    }
    const keep = items[selected]?.order;
    items = answer.items;
    for (const [name, select] of [["modality", filters.modality], ["body_part", filters.body_part]]) {
      for (const item of items) {
        const value = item[name];
        if (value && !known[name].has(value)) {
          known[name].add(value);
          select.add(new Option(value, value));
        }
      }
    }
    $("count").textContent = t("reading.count", { count: answer.total });
    $("empty").hidden = items.length > 0;
    const index = items.findIndex((item) => item.order === keep);
    render(index >= 0 ? index : Math.min(selected, Math.max(items.length - 1, 0)));
  }

  function render(index) {
    rows.replaceChildren();
    items.forEach((item, i) => {
      const tr = rows.insertRow();
      tr.dataset.order = item.order;
      tr.className = item.urgent ? "urgent" : "";
      const cells = [
        item.urgent ? t(item.emergency ? "reading.priority.emergency" : "reading.priority.stat") : t("reading.priority.routine"),
        waited(item.waiting_minutes), item.patient_name, sexAge(item.sex, item.age), item.modality,
        item.body_part, item.procedure, item.accession_number, statusText(item),
        item.claimed_by ? item.claimed_by_name : "",
      ];
      cells.forEach((text, c) => {
        const cell = tr.insertCell();
        cell.textContent = text;
        if (c === 0) cell.className = item.urgent ? "priority stat" : "priority";
        if (c === 8) cell.className = `report ${item.report_status || "none"}`;
        if (c === 9 && item.claimed_by) cell.className = item.claimed_by === settings.user ? "claim mine" : "claim other";
      });
      tr.addEventListener("click", () => select(i));
      tr.addEventListener("dblclick", () => open(item));
    });
    select(index, false);
  }

  function select(index, scroll = true) {
    if (!items.length) { showPriors(null); return; }
    selected = Math.max(0, Math.min(index, items.length - 1));
    [...rows.rows].forEach((tr, i) => tr.setAttribute("aria-selected", i === selected ? "true" : "false"));
    if (scroll) rows.rows[selected]?.scrollIntoView({ block: "nearest" });
    showPriors(items[selected]);
  }

  async function showPriors(item) {
    const list = $("priors");
    list.replaceChildren();
    $("priors-none").hidden = true;
    $("priors-who").textContent = item ? `${item.patient_name} · ${item.patient_id}` : "";
    if (!item) return;
    const asked = item.order;
    let priors;
    try {
      priors = await api("GET", `/api/reading/${item.order}/priors`);
    } catch (error) {
      return;
    }
    if (items[selected]?.order !== asked) return;  // another row was chosen meanwhile
    $("priors-none").hidden = priors.length > 0;
    for (const prior of priors) {
      const li = document.createElement("li");
      const head = document.createElement("div");
      head.className = "prior-head";
      head.textContent = `${prior.study_date} · ${prior.modality} · ${prior.procedure} · ${prior.accession_number}`;
      li.append(head);
      const body = document.createElement("div");
      if (prior.report) {
        body.className = "prior-report";
        const status = document.createElement("span");
        status.className = "badge";
        status.textContent = t(`reading.version.${prior.report.status}`);
        const impression = document.createElement("p");
        impression.textContent = prior.report.impression;
        const findings = document.createElement("p");
        findings.className = "note";
        findings.textContent = prior.report.findings;
        const who = document.createElement("p");
        who.className = "note";
        who.textContent = t("reading.priors.signed", { name: prior.report.author_name, at: when(prior.report.signed_at) });
        body.append(status, impression, findings, who);
      } else {
        body.className = "note";
        body.textContent = t("reading.priors.no_report");
      }
      li.append(body);
      list.append(li);
    }
  }

  async function open(item) {
    if (!item) return;
    try {
      await api("POST", `/api/reports/${item.order}/claim`, {});
    } catch (error) {
      say(t("reading.claim_refused", { reason: error.message }), "error");
      load();
      return;
    }
    window.location.assign(`/reading/${item.order}`);
  }

  rows.addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown") { select(selected + 1); event.preventDefault(); }
    else if (event.key === "ArrowUp") { select(selected - 1); event.preventDefault(); }
    else if (event.key === "Home") { select(0); event.preventDefault(); }
    else if (event.key === "End") { select(items.length - 1); event.preventDefault(); }
    else if (event.key === "Enter") { open(items[selected]); event.preventDefault(); }
  });
  for (const select of Object.values(filters)) {
    select.addEventListener("change", load);
    select.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === "Escape") { rows.focus(); event.preventDefault(); }
    });
  }
  let typing;
  $("q").addEventListener("input", () => { clearTimeout(typing); typing = setTimeout(load, 250); });
  $("q").addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === "ArrowDown") { rows.focus(); event.preventDefault(); }
    if (event.key === "Escape") { $("q").value = ""; load(); rows.focus(); }
  });
  document.addEventListener("keydown", (event) => {
    const typingHere = ["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement?.tagName);
    if (event.key === "/" && !typingHere) { $("q").focus(); event.preventDefault(); return; }
    const keys = { m: filters.modality, b: filters.body_part, p: filters.priority, c: filters.claimed, o: filters.sort };
    for (const [key, select] of Object.entries(keys)) {
      if (keyOn(event, key)) { select.focus(); event.preventDefault(); return; }
    }
  });
  load().then(() => rows.focus());
  setInterval(load, settings.refresh_seconds * 1000);
}

// -- the report editor ----------------------------------------------------------------------

function editorPage() {
  const order = settings.order;
  const findings = $("findings");
  const impression = $("impression");
  const critical = $("critical");
  const told = $("critical-told");
  const toldAt = $("critical-told-at");
  let report = null;
  let keyImages = [];
  let revision = 0;
  let dirty = false;
  let stale = false;
  let saving = null;
  let saveTimer = null;
  let templates = [];
  let lastField = findings;
  let applied = null;  // the template applied since the last save
  let thumbs = [];

  const mine = () => report && report.claimed_by === settings.user;

  async function load() {
    report = await api("GET", `/api/reports/${order}`);
    revision = report.draft_revision;
    keyImages = report.key_images.map((k) => ({ ...k }));
    findings.value = report.findings;
    impression.value = report.impression;
    critical.checked = report.critical;
    told.value = report.critical_told;
    toldAt.value = report.critical_told_at ? localInput(report.critical_told_at) : "";
    dirty = false;
    stale = false;
    showHeader();
    showVersions();
    markThumbs();
  }

  function localInput(iso) {
    const d = new Date(iso);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  function showHeader() {
    const o = report.order;
    $("h-name").textContent = o.patient_name;
    $("h-facts").textContent = [o.patient_id, sexAge(o.sex, o.age)].filter(Boolean).join(" · ");
    $("h-exam").textContent = [o.accession_number, o.modality, o.body_part, o.procedure,
                               o.priority && o.priority !== "ROUTINE" ? o.priority : "", o.reason].filter(Boolean).join(" · ");
    const status = report.status || "none";
    $("h-status").textContent = t(`reading.report.${status}`);
    $("h-status").className = `badge report ${status}`;
    $("h-claim").textContent = report.claimed_by
      ? t(mine() ? "reading.editor.claimed_by_you" : "reading.editor.claimed_by", { name: report.claimed_by_name })
      : t("reading.editor.unclaimed");
    const editable = mine();
    for (const field of [findings, impression, critical, told, toldAt, $("template"), $("apply-template")]) {
      field.disabled = !editable;
    }
    $("claim").hidden = editable;
    $("claim").innerHTML = "";
    $("claim").append(Object.assign(document.createElement("kbd"), { textContent: "Alt+L" }),
                      ` ${t(report.status === "final" || report.status === "corrected" ? "reading.editor.claim_amend" : "reading.editor.claim")}`);
    $("release").hidden = !editable;
    const signed = ["preliminary", "final", "corrected"].includes(report.status);
    $("sign").hidden = signed;
    $("sign-label").textContent = t(settings.attending ? "reading.editor.sign_final" : "reading.editor.sign_preliminary");
    $("verify").hidden = !(settings.attending && report.status === "preliminary");
    $("amend").hidden = !(report.status === "final" || report.status === "corrected");
    $("sign").disabled = !editable;
    $("amend").disabled = !editable;
    $("saved").textContent = report.draft_saved_at ? t("reading.editor.saved", { at: when(report.draft_saved_at) }) : "";
  }

  function showVersions() {
    const list = $("versions");
    list.replaceChildren();
    for (const v of report.versions) {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "link version-link";
      button.dataset.number = v.number;
      const who = v.verifier_name ? t("reading.version.verified_by", { author: v.author_name, verifier: v.verifier_name })
                                  : v.author_name;
      button.textContent = `${t("reading.version.number", { n: v.number })} · ${t(`reading.version.${v.status}`)} · ${who} · ${when(v.signed_at)}`;
      button.addEventListener("click", () => showVersion(v.number));
      button.addEventListener("keydown", (event) => {
        const links = [...list.querySelectorAll("button")];
        const at = links.indexOf(button);
        if (event.key === "ArrowDown") { links[Math.min(at + 1, links.length - 1)].focus(); event.preventDefault(); }
        if (event.key === "ArrowUp") { links[Math.max(at - 1, 0)].focus(); event.preventDefault(); }
      });
      li.append(button);
      list.append(li);
    }
  }

  async function showVersion(number) {
    const v = await api("GET", `/api/reports/${order}/versions/${number}`);
    $("version").hidden = false;
    $("version-title").textContent = `${t("reading.version.number", { n: v.number })} · ${t(`reading.version.${v.status}`)}`;
    const who = [t("reading.version.signed", { name: v.author_name || v.author, at: when(v.signed_at) })];
    if (v.verifier) who.push(t("reading.version.verified", { name: v.verifier_name || v.verifier, at: when(v.verified_at) }));
    if (v.critical) who.push(t("reading.version.critical", { name: v.critical_told, at: when(v.critical_told_at) }));
    $("version-who").textContent = who.join(" · ");
    $("version-findings").textContent = v.findings;
    $("version-impression").textContent = v.impression;
    $("version-reason").textContent = v.reason ? t("reading.version.reason", { reason: v.reason }) : "";
    $("version").dataset.number = v.number;
  }

  // saving as the radiologist types
  function changed() {
    if (!mine() || stale) return;
    dirty = true;
    $("saved").textContent = t("reading.editor.unsaved");
    clearTimeout(saveTimer);
    saveTimer = setTimeout(save, settings.autosave_ms);
  }

  async function save() {
    clearTimeout(saveTimer);
    if (saving) await saving;
    if (!dirty || stale || !mine()) return;
    const body = {
      revision, findings: findings.value, impression: impression.value, key_images: keyImages,
      critical: critical.checked, critical_told: told.value,
      critical_told_at: toldAt.value ? new Date(toldAt.value).toISOString() : null,
    };
    if (applied) body.template = applied;
    dirty = false;
    saving = api("PUT", `/api/reports/${order}/draft`, body).then((answer) => {
      revision = answer.draft_revision;
      applied = null;
      $("saved").textContent = t("reading.editor.saved", { at: when(answer.draft_saved_at) });
    }).catch((error) => {
      if (error.status === 409) stale = true;
      else dirty = true;
      $("saved").textContent = "";
      say(t(error.status === 409 ? "reading.editor.stale" : "reading.failed", { reason: error.message }), "error");
    }).finally(() => { saving = null; });
    await saving;
  }

  for (const field of [findings, impression, told, toldAt]) field.addEventListener("input", changed);
  critical.addEventListener("change", changed);
  findings.addEventListener("focus", () => { lastField = findings; });
  impression.addEventListener("focus", () => { lastField = impression; });
  window.addEventListener("beforeunload", () => { if (dirty) save(); });

  // templates
  async function loadTemplates() {
    const answer = await api("GET", `/api/reports/${order}/templates`);
    templates = answer.templates;
    const select = $("template");
    select.replaceChildren(new Option(t("reading.editor.template_choose"), ""));
    for (const template of templates) select.add(new Option(template.name, template.id));
    $("template-problems").hidden = answer.problems.length === 0;
    $("template-problems").textContent = answer.problems.length
      ? t("reading.editor.template_problems", { problems: answer.problems.join("; ") }) : "";
    if (report.template) select.value = report.template;
  }

  function applyTemplate() {
    const template = templates.find((item) => item.id === $("template").value);
    if (!template || !mine()) return;
    const join = (had, added) => (had.trim() ? `${had.replace(/\s+$/, "")}\n${added}` : added);
    findings.value = join(findings.value, template.findings);
    impression.value = join(impression.value, template.impression);
    applied = template.id;
    changed();
    findings.focus();
    findings.setSelectionRange(findings.value.length, findings.value.length);
    say(t("reading.editor.template_applied", { name: template.name }));
  }

  $("apply-template").addEventListener("click", applyTemplate);
  $("template").addEventListener("keydown", (event) => {
    if (event.key === "Enter") { applyTemplate(); event.preventDefault(); }
  });

  // phrases: Alt+K in the findings or impression; typed letters filter, Enter inserts
  let phrases = [];
  let chosen = 0;
  async function loadPhrases() {
    const answer = await api("GET", `/api/reports/phrases?modality=${encodeURIComponent(report.order.modality)}`);
    phrases = [...answer.mine.map((p) => ({ ...p, own: true })), ...answer.department];
    if ($("phrases").open) listPhrases();
  }

  function openPhrases() {
    if (!mine()) return;
    const field = lastField;
    $("phrase-filter").value = "";
    $("phrases").dataset.field = field.id;
    $("phrases").dataset.start = field.selectionStart;
    $("phrases").dataset.end = field.selectionEnd;
    chosen = 0;
    listPhrases();
    $("phrases").showModal();
    $("phrase-filter").focus();
    loadPhrases().catch(() => {});  // one's own phrases may have changed in another tab
  }

  function matching() {
    const typed = $("phrase-filter").value.trim().toLowerCase();
    return phrases.filter((p) => !typed || p.abbreviation.startsWith(typed) || p.title.includes(typed) || p.text.includes(typed));
  }

  function listPhrases() {
    const list = $("phrase-list");
    list.replaceChildren();
    const shown = matching();
    chosen = Math.min(chosen, Math.max(shown.length - 1, 0));
    shown.forEach((phrase, i) => {
      const li = document.createElement("li");
      li.setAttribute("aria-selected", i === chosen ? "true" : "false");
      const abbreviation = Object.assign(document.createElement("kbd"), { textContent: phrase.abbreviation });
      const title = Object.assign(document.createElement("span"), { className: "name", textContent: phrase.title });
      const text = Object.assign(document.createElement("span"), { className: "exam", textContent: phrase.text });
      const whose = Object.assign(document.createElement("span"), { className: "badge",
        textContent: t(phrase.own ? "reading.phrases.mine" : "reading.phrases.department") });
      li.append(abbreviation, title, text, whose);
      li.addEventListener("click", () => { chosen = i; insertPhrase(); });
      list.append(li);
    });
  }

  function insertPhrase() {
    const phrase = matching()[chosen];
    const dialog = $("phrases");
    dialog.close();
    const field = $(dialog.dataset.field) ?? findings;
    if (!phrase) { field.focus(); return; }
    const start = Number(dialog.dataset.start ?? field.value.length);
    const end = Number(dialog.dataset.end ?? start);
    field.value = field.value.slice(0, start) + phrase.text + field.value.slice(end);
    field.focus();
    field.setSelectionRange(start + phrase.text.length, start + phrase.text.length);
    changed();
  }

  $("phrase-filter").addEventListener("input", () => { chosen = 0; listPhrases(); });
  $("phrase-filter").addEventListener("keydown", (event) => {
    if (event.key === "ArrowDown") { chosen += 1; listPhrases(); event.preventDefault(); }
    else if (event.key === "ArrowUp") { chosen = Math.max(chosen - 1, 0); listPhrases(); event.preventDefault(); }
    else if (event.key === "Enter") { insertPhrase(); event.preventDefault(); }
  });
  $("phrases").addEventListener("close", () => { if (document.activeElement === document.body) lastField.focus(); });
  $("phrase-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("POST", "/api/reports/phrases", { abbreviation: $("phrase-abbreviation").value,
                                                  text: $("phrase-text").value, modality: report.order.modality });
      $("phrases").close();
      say(t("reading.phrases.saved", { abbreviation: $("phrase-abbreviation").value }));
      loadPhrases();
      $("phrase-abbreviation").value = $("phrase-text").value = "";
    } catch (error) {
      say(t("reading.failed", { reason: error.message }), "error");
    }
  });

  // key images: the study's thumbnails; Space or a click marks one
  async function loadImages() {
    const series = await api("GET", `/api/reports/${order}/images`);
    const box = $("thumbs");
    box.replaceChildren();
    thumbs = [];
    for (const s of series) {
      for (const image of s.instances) {
        const figure = document.createElement("figure");
        figure.className = "thumb";
        figure.setAttribute("role", "option");
        figure.tabIndex = -1;
        figure.dataset.series = s.series_instance_uid;
        figure.dataset.sop = image.sop;
        figure.dataset.sopClass = image.sop_class;
        const img = document.createElement("img");
        img.loading = "lazy";
        img.alt = t("reading.editor.image_alt", { series: s.series_number ?? "", number: image.number ?? "" });
        img.src = `/dicomweb/studies/${report.order.study_instance_uid}/series/${s.series_instance_uid}/instances/${image.sop}/thumbnail`;
        const caption = document.createElement("figcaption");
        caption.textContent = `${s.series_number ?? ""}-${image.number ?? ""}`;
        figure.append(img, caption);
        figure.addEventListener("click", () => { focusThumb(thumbs.indexOf(figure)); toggleKey(figure); });
        box.append(figure);
        thumbs.push(figure);
      }
    }
    if (!thumbs.length) box.textContent = t("reading.editor.no_images");
    markThumbs();
  }

  function focusThumb(index) {
    if (!thumbs.length) return;
    const at = Math.max(0, Math.min(index, thumbs.length - 1));
    thumbs.forEach((thumb, i) => { thumb.tabIndex = i === at ? 0 : -1; });
    thumbs[at].focus();
  }

  function markThumbs() {
    for (const thumb of thumbs) {
      const marked = keyImages.some((k) => k.sop === thumb.dataset.sop);
      thumb.classList.toggle("key", marked);
      thumb.setAttribute("aria-selected", marked ? "true" : "false");
    }
    $("key-count").textContent = t("reading.editor.key_count", { count: keyImages.length });
  }

  function toggleKey(thumb) {
    if (!mine()) { say(t("reading.editor.claim_first"), "error"); return; }
    const at = keyImages.findIndex((k) => k.sop === thumb.dataset.sop);
    if (at >= 0) keyImages.splice(at, 1);
    else keyImages.push({ series: thumb.dataset.series, sop: thumb.dataset.sop, sop_class: thumb.dataset.sopClass });
    markThumbs();
    changed();
  }

  $("thumbs").addEventListener("keydown", (event) => {
    const at = thumbs.indexOf(document.activeElement);
    if (at < 0) return;
    const across = Math.max(1, Math.round($("thumbs").clientWidth / (thumbs[0].offsetWidth + 6)));
    const moves = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: across, ArrowUp: -across };
    if (event.key in moves) { focusThumb(at + moves[event.key]); event.preventDefault(); }
    else if (event.key === " " || event.key === "Enter") { toggleKey(thumbs[at]); event.preventDefault(); }
  });

  // the claim, signing, verifying, amending
  async function act(method, path, body, done, refused = "reading.failed") {
    await save();
    if (stale) return;
    try {
      const answer = await api(method, path, body);
      await load();
      if (done) say(done(answer), "ok");
      return answer;
    } catch (error) {
      say(t(refused, { reason: error.message }), "error");
      return null;
    }
  }

  const claim = () => act("POST", `/api/reports/${order}/claim`, {}, () => t("reading.editor.claimed"),
                          "reading.claim_refused").then(() => {
    if (mine()) findings.focus();
  });
  const release = () => act("POST", `/api/reports/${order}/release`, undefined, () => t("reading.editor.released"));
  const sign = () => act("POST", `/api/reports/${order}/sign`, undefined,
                         (v) => t("reading.editor.signed", { n: v.number, status: t(`reading.version.${v.status}`) }),
                         "reading.editor.sign_refused");
  const verify = () => act("POST", `/api/reports/${order}/verify`, undefined,
                           (v) => t("reading.editor.verified", { n: v.number }));

  function amend() {
    if (!mine()) { say(t("reading.editor.claim_first"), "error"); return; }
    $("amend-error").hidden = true;
    $("amend-reason").value = "";
    $("amend-dialog").showModal();
    $("amend-reason").focus();
  }

  $("amend-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const reason = $("amend-reason").value;
    if (!reason.trim()) {
      $("amend-error").textContent = t("reading.amend.reason_needed");
      $("amend-error").hidden = false;
      return;
    }
    $("amend-dialog").close();
    await act("POST", `/api/reports/${order}/amend`, { reason },
              (v) => t("reading.editor.amended", { n: v.number }));
  });
  $("amend-cancel").addEventListener("click", () => $("amend-dialog").close());

  function openViewer() {
    const uid = report?.order.study_instance_uid;
    if (!uid) return;
    openInViewer(uid, "popup=yes,width=1600,height=1000");
  }

  $("claim").addEventListener("click", claim);
  $("release").addEventListener("click", release);
  $("sign").addEventListener("click", sign);
  $("verify").addEventListener("click", verify);
  $("amend").addEventListener("click", amend);
  $("viewer").addEventListener("click", openViewer);

  document.addEventListener("keydown", (event) => {
    if (document.querySelector("dialog[open]")) return;
    const keys = {
      t: () => $("template").focus(), f: () => findings.focus(), i: () => impression.focus(),
      k: openPhrases, g: () => focusThumb(Math.max(0, thumbs.findIndex((th) => th.tabIndex === 0))),
      v: openViewer, x: () => { if (mine()) { critical.checked = !critical.checked; changed(); (critical.checked ? told : findings).focus(); } },
      s: () => { if (!$("sign").hidden) sign(); }, y: () => { if (!$("verify").hidden) verify(); },
      a: () => { if (!$("amend").hidden) amend(); }, r: () => { if (mine()) release(); },
      l: () => { if (!mine()) claim(); },
      h: () => $("versions").querySelector("button")?.focus(),
    };
    for (const [key, run] of Object.entries(keys)) {
      if (keyOn(event, key)) { event.preventDefault(); run(); return; }
    }
    if (event.key === "Escape" && !["TEXTAREA", "INPUT", "SELECT"].includes(document.activeElement?.tagName)) {
      save().then(() => window.location.assign("/reading"));
    }
  });
  $("back").addEventListener("click", (event) => {
    event.preventDefault();
    save().then(() => window.location.assign("/reading"));
  });

  load().then(() => Promise.all([loadTemplates(), loadImages(), loadPhrases()])).then(() => {
    if (mine()) (report.status === "draft" && !findings.value ? $("template") : findings).focus();
  }).catch((error) => say(t("reading.failed", { reason: error.message }), "error"));
}

if ($("reading-list")) worklistPage();
else if ($("editor")) editorPage();
