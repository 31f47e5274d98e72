// Forms of the console, enhanced: posted with fetch (same endpoints as without JavaScript),
// canned replies on "/", attachments by picker or drag-and-drop, Ctrl+Enter, the template
// picker's live preview and checks. The server decides; this only helps people get it right.

import { toast } from "./render.js";

const gettext = window.gettext || ((s) => s);

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

export async function post(url, body) {
  const response = await fetch(url, {
    method: "POST",
    body,
    headers: { Accept: "application/json", "X-CSRFToken": csrfToken() },
    credentials: "same-origin",
  });
  let data = {};
  try { data = await response.json(); } catch { /* not JSON: a proxy or a crash page */ }
  if (!response.ok) {
    const error = data.error || { message: gettext("Something went wrong. Please try again.") };
    throw Object.assign(new Error(error.message), { error });
  }
  return data;
}

// -- generic ajax forms -------------------------------------------------------------------
export function enhanceForms(root, { afterAction }) {
  root.querySelectorAll("form[data-ajax]").forEach((form) => {
    if (form.dataset.enhanced) return;
    form.dataset.enhanced = "1";
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (form.dataset.templateIndex !== undefined && !checkTemplateForm(form)) return;
      if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
      const button = form.querySelector("button[type=submit]");
      if (button) button.disabled = true;
      try {
        const data = new FormData(form);
        const result = await post(form.action, data);
        if (form.hasAttribute("data-reset")) {
          form.querySelectorAll("textarea").forEach((t) => { t.value = ""; });
          const replyTo = form.querySelector("input[name=reply_to]");
          if (replyTo) { replyTo.value = ""; form.querySelector(".replying").hidden = true; }
        }
        form.closest("details")?.removeAttribute("open");
        if (result.url) { location.href = result.url; return; }
        afterAction(form, result);
      } catch (err) {
        showProblems(form, err.error);
        toast(err.message, "error");
      } finally {
        if (button) button.disabled = false;
      }
    });
  });
}

function showProblems(form, error) {
  const box = form.querySelector(".field-errors");
  if (!box || !error || !error.problems) return;
  box.textContent = error.problems.map((p) => `${p.field}: ${p.message}`).join(" · ");
  box.hidden = false;
}

// -- reply composer -------------------------------------------------------------------------
export function enhanceComposer(composer, { conversationId }) {
  if (!composer || composer.dataset.enhanced) return;
  composer.dataset.enhanced = "1";

  // tabs: Reply / Template / Private note
  composer.querySelectorAll("[role=tab]").forEach((tab) => {
    tab.addEventListener("click", () => selectTab(composer, tab.dataset.tab));
  });

  const canned = JSON.parse(composer.querySelector("#canned-replies")?.textContent || "[]");
  composer.querySelectorAll("textarea").forEach((area) => {
    area.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        area.form.requestSubmit();
      }
    });
    if (area.hasAttribute("data-canned")) cannedReplies(area, canned);
  });

  const picker = composer.querySelector("input[type=file][data-attach]");
  if (picker) {
    picker.addEventListener("change", () => {
      if (picker.files.length) upload(picker.dataset.attach, picker.files[0], composer);
      picker.value = "";
    });
    ["dragenter", "dragover"].forEach((name) => composer.addEventListener(name, (event) => {
      event.preventDefault();
      composer.classList.add("dragging");
    }));
    ["dragleave", "drop"].forEach((name) => composer.addEventListener(name, () => composer.classList.remove("dragging")));
    composer.addEventListener("drop", (event) => {
      event.preventDefault();
      for (const file of event.dataTransfer.files) upload(picker.dataset.attach, file, composer);
    });
  }
  composer.querySelectorAll("[data-template-picker]").forEach(enhancePicker);
  composer.querySelector("[data-action=cancel-reply]")?.addEventListener("click", () => setReplyTo(composer, null));
}

export function selectTab(composer, name) {
  composer.querySelectorAll("[role=tab]").forEach((tab) => tab.setAttribute("aria-selected", String(tab.dataset.tab === name)));
  composer.querySelectorAll(".pane").forEach((pane) => { pane.hidden = pane.dataset.pane !== name; });
  composer.querySelector(`.pane[data-pane="${name}"] textarea`)?.focus();
}

export function setReplyTo(composer, message) {
  const form = composer?.querySelector(".pane[data-pane=reply]");
  if (!form) return;
  const banner = form.querySelector(".replying");
  form.querySelector("input[name=reply_to]").value = message ? message.id : "";
  banner.hidden = !message;
  if (message) {
    banner.querySelector("span").textContent = gettext("Replying to:") + " " + message.text.slice(0, 80);
    selectTab(composer, "reply");
  }
}

async function upload(url, file, composer) {
  const body = new FormData();
  body.append("file", file, file.name);
  if (composer.dataset.via) body.append("via", composer.dataset.via); // the chosen channel
  const area = composer.querySelector(".pane[data-pane=reply] textarea");
  if (area && area.value.trim() && file.type.match(/^(image|video)\/|pdf/)) {
    body.append("caption", area.value.trim());
    area.value = "";
  }
  try {
    await post(url, body);
  } catch (err) {
    toast(err.message, "error");
  }
}

function cannedReplies(area, canned) {
  const list = area.form.querySelector(".canned-list");
  let matches = [];
  let selected = 0;
  function wordAtCursor() {
    const before = area.value.slice(0, area.selectionStart);
    const match = before.match(/(?:^|\s)\/([\w-]*)$/);
    return match ? match[1] : null;
  }
  function render() {
    list.replaceChildren(...matches.map((reply, i) => {
      const li = document.createElement("li");
      li.setAttribute("role", "option");
      li.setAttribute("aria-selected", String(i === selected));
      const key = document.createElement("strong");
      key.textContent = `/${reply.shortcut} `;
      li.append(key, reply.text.slice(0, 80));
      li.addEventListener("mousedown", (event) => { event.preventDefault(); insert(reply); });
      return li;
    }));
    list.hidden = matches.length === 0;
  }
  function insert(reply) {
    const before = area.value.slice(0, area.selectionStart).replace(/\/([\w-]*)$/, "");
    area.value = before + reply.text + area.value.slice(area.selectionStart);
    matches = [];
    render();
    area.focus();
  }
  area.addEventListener("input", () => {
    const word = wordAtCursor();
    matches = word === null ? [] : canned.filter((r) => r.shortcut.startsWith(word.toLowerCase())).slice(0, 8);
    selected = 0;
    render();
  });
  area.addEventListener("keydown", (event) => {
    if (!matches.length) return;
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      selected = (selected + (event.key === "ArrowDown" ? 1 : matches.length - 1)) % matches.length;
      render();
    } else if (event.key === "Enter" || event.key === "Tab") {
      event.preventDefault();
      insert(matches[selected]);
    } else if (event.key === "Escape") {
      matches = [];
      render();
    }
  });
}

// -- template picker ------------------------------------------------------------------------
const BAD_TEXT = /[\n\t]| {5,}/;

export function enhancePicker(picker) {
  if (picker.dataset.enhanced) return;
  picker.dataset.enhanced = "1";
  const select = picker.querySelector("[data-template-select]");
  const forms = [...picker.querySelectorAll(".template-form")];
  const show = () => forms.forEach((form) => { form.hidden = form.dataset.templateIndex !== select.value; });
  select?.addEventListener("change", show);
  if (forms.length > 1) show();
  else if (forms.length === 1 && select) { select.value = forms[0].dataset.templateIndex; }
  forms.forEach((form) => {
    form.querySelectorAll("input[data-param]").forEach((input) => {
      input.addEventListener("input", () => { preview(form); checkTemplateForm(form, true); });
    });
    preview(form);
    checkTemplateForm(form, true);
  });
}

function fill(text, values) {
  return text.replace(/\{\{\s*([\w]+)\s*\}\}/g, (whole, key) => (values[key] ? values[key] : whole));
}

function preview(form) {
  const values = {};
  form.querySelectorAll("input[data-param=body]").forEach((input) => { values[input.dataset.key] = input.value.trim(); });
  const body = form.querySelector(".pv-body");
  if (body) body.textContent = fill(body.dataset.text, values);
  const header = form.querySelector(".pv-header");
  const headerInput = form.querySelector("input[data-param=header]");
  if (header && headerInput) header.textContent = header.dataset.text.replace(/\{\{\s*\w+\s*\}\}/, headerInput.value.trim() || "$&");
}

export function checkTemplateForm(form, quiet = false) {
  let ok = true;
  form.querySelectorAll("input[data-param]").forEach((input) => {
    const value = input.value;
    const bad = !value.trim() || BAD_TEXT.test(value) || (input.type === "url" && !/^https:\/\//.test(value));
    input.classList.toggle("invalid", bad && (!quiet || value !== ""));
    input.setAttribute("aria-invalid", String(bad));
    if (bad) ok = false;
  });
  const to = form.querySelector("input[name=to]");
  if (to) {
    const typed = document.querySelector("[data-to]");
    to.value = typed ? typed.value : "";
    if (!to.value.trim()) ok = false;
  }
  const submit = form.querySelector("button[type=submit]");
  if (submit) submit.disabled = !ok;
  if (!ok && !quiet) toast(gettext("Fill in every value of the template (no line breaks)."), "error");
  return ok;
}
