// The console's entry module: the live list, the open thread, navigation between them.
// Pages are server-rendered and work without this; it adds live updates and quicker moves.

import { checkTemplateForm, enhanceComposer, enhanceForms, enhancePicker, post, setReplyTo } from "./composer.js";
import { connect } from "./live.js";
import { alertNewMessage, askPermissionOnce } from "./notify.js";
import { conversationRow, me, message as renderMessage, toast, when, windowLeft } from "./render.js";
import { installShortcuts } from "./shortcuts.js";

const gettext = window.gettext || ((s) => s);
const interpolate = window.interpolate || ((fmt, obj) => fmt.replace(/%\((\w+)\)s/g, (_, k) => obj[k]));
const listPane = document.getElementById("list-pane");
const threadPane = document.getElementById("thread-pane");

function thread() { return document.getElementById("thread"); }
function openId() { const t = thread(); return t ? Number(t.dataset.id) : null; }
function list() { return document.getElementById("conversation-list"); }
function listState() { return document.getElementById("list")?.dataset || {}; }

// -- fragments ---------------------------------------------------------------------------
async function fetchHtml(url) {
  const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } });
  if (response.status === 404) return null;
  if (!response.ok) throw new Error(String(response.status));
  return response.text();
}

async function reloadList() {
  if (!listPane) return;
  const query = listState().query || location.search.slice(1);
  const html = await fetchHtml(`/fragments/list?${query}`);
  if (html !== null) {
    listPane.innerHTML = html;
    markCurrent();
    enhanceList();
  }
}

// The reply channel chosen in the open thread, kept across re-renders of that thread.
function chosenVia(id) {
  const t = thread();
  return t && Number(t.dataset.id) === id ? t.dataset.via || "" : "";
}

// The contact's conversations shown in the open thread (its whole history across channels).
function threadConversations() {
  const t = thread();
  return new Set((t?.dataset.conversations || "").split(",").filter(Boolean).map(Number));
}

async function loadThread(id, { push = false } = {}) {
  if (!threadPane) { location.href = `/c/${id}`; return; }
  const via = chosenVia(id);
  const html = await fetchHtml(`/fragments/thread/${id}${via ? `?via=${encodeURIComponent(via)}` : ""}`);
  if (html === null) {
    toast(gettext("This conversation is no longer visible to you."), "error");
    showList(true);
    return;
  }
  threadPane.innerHTML = html;
  document.body.classList.add("has-thread");
  if (push) history.pushState({ id }, "", `/c/${id}${listState().query ? `?${listState().query}` : ""}`);
  document.title = `${thread().querySelector("h1")?.textContent || ""} · Madoguchi`;
  markCurrent();
  enhanceThread();
}

function showList(push) {
  document.body.classList.remove("has-thread");
  if (threadPane) {
    threadPane.replaceChildren();
    const empty = document.createElement("div");
    empty.className = "empty-thread";
    empty.textContent = gettext("Select a conversation to read it.");
    threadPane.append(empty);
  }
  if (push) history.pushState({}, "", `/${listState().query ? `?${listState().query}` : ""}`);
  markCurrent();
}

function markCurrent() {
  const id = openId();
  list()?.querySelectorAll(".row").forEach((row) => row.classList.toggle("current", Number(row.dataset.id) === id));
}

// -- the list ----------------------------------------------------------------------------
function enhanceList() {
  const root = listPane;
  if (!root) return;
  root.querySelector(".filters")?.addEventListener("change", (event) => event.currentTarget.requestSubmit());
  root.addEventListener("click", (event) => {
    const link = event.target.closest(".row a");
    if (!link || event.metaKey || event.ctrlKey || event.shiftKey || !threadPane) return;
    event.preventDefault();
    loadThread(Number(link.closest(".row").dataset.id), { push: true }).catch(() => { location.href = link.href; });
  });
}

function belongsToView(c) {
  const state = listState();
  if (state.status && state.status !== "all" && c.status !== state.status) return false;
  if (state.channel && Number(state.channel) !== c.channel.id) return false;
  if (state.team && Number(state.team) !== c.team) return false;
  if (state.view === "mine") return c.assignee && c.assignee.id === me;
  if (state.view === "unassigned") return !c.assignee;
  return true;
}

function upsertRow(c) {
  const ul = list();
  if (!ul) return;
  const old = ul.querySelector(`.row[data-id="${c.id}"]`);
  if (!belongsToView(c)) { old?.remove(); return; }
  const row = conversationRow(c, openId());
  if (old) old.remove();
  ul.querySelector("[data-empty]")?.remove();
  // newest activity first
  const at = c.last_message_at || "";
  const after = [...ul.querySelectorAll(".row")].find((r) => (r.dataset.at || r.querySelector("time")?.getAttribute("datetime") || "") < at);
  ul.insertBefore(row, after || null);
}

let countsTimer = null;
function refreshCounts() {
  // Coalesced: a burst of events costs one small request, not one per event.
  if (countsTimer) return;
  countsTimer = setTimeout(async () => {
    countsTimer = null;
    try {
      const response = await fetch("/fragments/counts", { credentials: "same-origin" });
      if (!response.ok) return;
      const counts = await response.json();
      for (const [name, value] of Object.entries(counts)) {
        const node = document.querySelector(`[data-count="${name}"]`);
        if (node) node.textContent = String(value);
      }
    } catch { /* the next event or the resync will try again */ }
  }, 1500);
}

// -- the thread --------------------------------------------------------------------------
function enhanceThread() {
  const t = thread();
  if (!t) return;
  enhanceForms(t, { afterAction });
  enhanceComposer(t.querySelector("#composer"), { conversationId: openId() });
  t.querySelectorAll("[data-template-picker]").forEach(enhancePicker);
  t.querySelector("[data-action=back]")?.addEventListener("click", (event) => { event.preventDefault(); showList(true); });
  t.querySelectorAll("form[data-snooze] [data-snooze-hours]").forEach((button) => {
    button.addEventListener("click", () => {
      const input = button.form.querySelector("input[name=snoozed_until]");
      const d = new Date();
      if (button.dataset.snoozeHours === "tomorrow") { d.setDate(d.getDate() + 1); d.setHours(9, 0, 0, 0); }
      else d.setHours(d.getHours() + Number(button.dataset.snoozeHours));
      const pad = (n) => String(n).padStart(2, "0");
      input.value = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
    });
  });
  addReplyButtons(t);
  enhanceViaChooser();
  enhanceMergeSearch(t);
  scrollToEnd();
  markSeen();
}

function addReplyButtons(root) {
  // A quote can only point at a message on the channel the reply goes out on.
  const channel = document.getElementById("composer")?.dataset.channel || "";
  root.querySelectorAll(".msg.in:not(.kind-reaction)").forEach((item) => {
    const elsewhere = channel && item.dataset.channel && item.dataset.channel !== channel;
    if (elsewhere) item.querySelector(".reply-button")?.remove();
    if (elsewhere || item.querySelector(".reply-button") || !document.querySelector(".pane[data-pane=reply]")) return;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "reply-button";
    button.title = gettext("Reply to this message");
    button.textContent = "↩";
    button.addEventListener("click", () => setReplyTo(document.getElementById("composer"), {
      id: item.dataset.id, text: item.querySelector(".text")?.textContent || "",
    }));
    item.append(button);
  });
}

function scrollToEnd() {
  const timeline = document.getElementById("timeline");
  if (!timeline) return;
  const target = location.hash && document.querySelector(location.hash);
  if (target) target.scrollIntoView({ block: "center" });
  else timeline.scrollTop = timeline.scrollHeight;
}

let seenTimer = null;
function markSeen() {
  const t = thread();
  if (!t || Number(t.dataset.assignee) !== me || document.hidden) return;
  const row = list()?.querySelector(`.row[data-id="${t.dataset.id}"]`);
  if (row && !row.classList.contains("unread")) return;
  clearTimeout(seenTimer);
  seenTimer = setTimeout(() => post(`/c/${t.dataset.id}/seen`, new FormData()).catch(() => {}), 300);
}

// The composer again, for another reply channel (or after that channel's state changed);
// what the agent typed stays.
let composerLoading = null;
async function refreshComposer(via) {
  const t = thread();
  if (!t) return;
  const id = openId();
  const wanted = via ?? t.dataset.via ?? "";
  const html = await fetchHtml(`/fragments/thread/${id}${wanted ? `?via=${encodeURIComponent(wanted)}` : ""}`);
  if (html === null || openId() !== id) return;
  const fresh = new DOMParser().parseFromString(html, "text/html");
  const composer = fresh.getElementById("composer");
  const old = document.getElementById("composer");
  if (!composer || !old) return;
  const typed = {};
  old.querySelectorAll(".pane textarea").forEach((area) => { typed[area.closest(".pane").dataset.pane] = area.value; });
  old.replaceWith(composer);
  composer.querySelectorAll(".pane textarea").forEach((area) => {
    const value = typed[area.closest(".pane").dataset.pane];
    if (value) area.value = value;
  });
  t.dataset.via = composer.dataset.via || "";
  const freshThread = fresh.getElementById("thread");
  if (freshThread) t.dataset.conversations = freshThread.dataset.conversations;
  enhanceForms(composer, { afterAction });
  enhanceComposer(composer, { conversationId: id });
  enhanceViaChooser();
  addReplyButtons(document.getElementById("timeline"));
}

function scheduleComposerRefresh() {
  if (composerLoading) return;
  composerLoading = setTimeout(() => { composerLoading = null; refreshComposer().catch(() => {}); }, 400);
}

function enhanceViaChooser() {
  const select = document.querySelector("[data-via-chooser] select");
  if (!select || select.dataset.enhanced) return;
  select.dataset.enhanced = "1";
  select.addEventListener("change", () => {
    refreshComposer(select.value).catch(() => { select.form.submit(); });
  });
}

// Merging contacts: the other contact found as one types (the same search without script
// reloads the page with the results).
function enhanceMergeSearch(root) {
  const form = root.querySelector("[data-merge-search]");
  if (!form || form.dataset.enhanced) return;
  form.dataset.enhanced = "1";
  const results = form.parentElement.querySelector("[data-merge-results]");
  const input = form.querySelector("input[name=merge_q]");
  let timer = null;
  async function search() {
    const q = input.value.trim();
    if (q.length < 2) { results.replaceChildren(); return; }
    const response = await fetch(`/api/v1/contacts?q=${encodeURIComponent(q)}&exclude=${form.dataset.mergeSearch}&limit=10`, { credentials: "same-origin" });
    if (!response.ok) return;
    const { items } = await response.json();
    if (input.value.trim() !== q) return;
    results.replaceChildren(...(items.length ? items.map((c) => mergeCandidate(c, form)) : [noMatch()]));
    enhanceForms(results, { afterAction });
  }
  form.addEventListener("submit", (event) => { event.preventDefault(); search().catch(() => {}); });
  input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(() => search().catch(() => {}), 250); });
  enhanceForms(results, { afterAction });
}

function noMatch() {
  const li = document.createElement("li");
  li.className = "muted";
  li.textContent = gettext("No other contact matches.");
  return li;
}

function mergeCandidate(c, searchForm) {
  const li = document.createElement("li");
  const form = document.createElement("form");
  form.method = "post";
  form.action = `/c/${openId()}/merge`;
  form.setAttribute("data-ajax", "");
  form.dataset.confirm = interpolate(gettext("Merge %(name)s into this contact? This cannot be undone."), { name: c.name }, true);
  const csrf = searchForm.closest(".thread-head")?.querySelector("input[name=csrfmiddlewaretoken]");
  if (csrf) form.append(csrf.cloneNode());
  const hidden = document.createElement("input");
  hidden.type = "hidden";
  hidden.name = "contact";
  hidden.value = String(c.id);
  const who = document.createElement("span");
  who.className = "who";
  const name = document.createElement("strong");
  name.dir = "auto";
  name.textContent = c.name;
  who.append(name);
  for (const identity of c.identities) {
    const via = document.createElement("span");
    via.className = "via";
    via.dataset.kind = identity.channel.kind;
    via.textContent = `${identity.channel.name} · ${identity.handle}`;
    who.append(via);
  }
  const button = document.createElement("button");
  button.type = "submit";
  button.textContent = gettext("Merge here");
  form.append(hidden, who, button);
  li.append(form);
  return li;
}

function afterAction(form, result) {
  // Claims, hand-overs and status changes change what the composer may do: re-render it.
  if (result.conversation) {
    upsertRow(result.conversation);
    refreshCounts();
    if (result.conversation.id === openId()) loadThread(openId());
  }
  if (result.message) {
    // Sent on another channel into a conversation this thread does not show yet: re-render.
    if (!threadConversations().has(result.message.conversation)) loadThread(openId());
    else appendMessage(result.message);
  }
}

function appendMessage(m) {
  const timeline = document.getElementById("timeline");
  if (!timeline || (m.conversation !== openId() && !threadConversations().has(m.conversation))) return;
  const existing = document.getElementById(`m${m.id}`);
  const quote = m.reply_to ? document.querySelector(`#m${m.reply_to} .text`)?.textContent : null;
  const node = renderMessage(m, quote ? quote.slice(0, 160) : null);
  if (existing) { existing.replaceWith(node); return; }
  const atBottom = timeline.scrollHeight - timeline.scrollTop - timeline.clientHeight < 120;
  timeline.append(node);
  addReplyButtons(timeline);
  if (atBottom || m.direction === "out") timeline.scrollTop = timeline.scrollHeight;
}

// -- live events ---------------------------------------------------------------------------
function onEvent(event) {
  if (event.type === "message") {
    appendMessage(event.message);
    if (event.op === "add" && event.message.direction === "in") {
      alertNewMessage(event, { open: event.conversation_id === openId() });
      if (event.conversation_id === openId()) markSeen();
    }
  } else if (event.type === "conversation" && event.op === "upsert") {
    const c = event.conversation;
    upsertRow(c);
    refreshCounts();
    const t = thread();
    if (t && c.id === openId()) {
      const assignee = c.assignee ? String(c.assignee.id) : "";
      const windowOpen = c.window.open ? "1" : "0";
      if (assignee !== t.dataset.assignee || windowOpen !== t.dataset.windowOpen || (c.status !== "open") !== !!t.querySelector(".status-pill")) {
        loadThread(c.id); // who may reply (or how) changed: the composer must follow
      }
    }
    if (t && c.id !== openId() && c.contact && String(c.contact.id) === t.dataset.contact) {
      // Another conversation with this contact: new ones join the thread; the others may have
      // changed what the reply-channel chooser offers.
      if (!threadConversations().has(c.id)) loadThread(openId());
      else scheduleComposerRefresh();
    }
  } else if (event.type === "contact" && event.op === "merged") {
    const t = thread();
    if (t && [String(event.id), String(event.merged)].includes(t.dataset.contact)) loadThread(openId());
  } else if (event.type === "conversation" && event.op === "remove") {
    list()?.querySelector(`.row[data-id="${event.id}"]`)?.remove();
    refreshCounts();
    if (event.id === openId()) {
      toast(gettext("This conversation is no longer visible to you."), "error");
      showList(true);
    }
  }
}

function onResync() {
  reloadList().catch(() => {});
  if (openId()) loadThread(openId()).catch(() => {});
}

function setLive(on) {
  const dot = document.getElementById("live-state");
  if (!dot) return;
  dot.classList.toggle("on", on);
  dot.classList.toggle("off", !on);
  dot.title = on ? gettext("Live") : gettext("Reconnecting…");
}

// -- clocks ----------------------------------------------------------------------------------
function tick() {
  document.querySelectorAll(".window[data-expires], .countdown[data-expires]").forEach((node) => {
    if (!node.dataset.expires) return; // no time limit (email, Viber): nothing changes by the clock
    const w = windowLeft(node.dataset.expires);
    node.textContent = w.text;
    node.classList.toggle("open", w.open);
    node.classList.toggle("closed", !w.open);
  });
  const t = thread();
  if (t && t.dataset.windowOpen === "1" && t.dataset.expires && !windowLeft(t.dataset.expires).open) loadThread(openId());
  document.querySelectorAll("time[datetime]").forEach((node) => { if (node.closest(".row")) node.textContent = when(node.getAttribute("datetime")); });
}

// -- boot ------------------------------------------------------------------------------------
if (document.body.classList.contains("app")) {
  enhanceList();
  enhanceThread();
  connect({ onEvent, onResync, onState: setLive });
  window.addEventListener("popstate", () => {
    const match = location.pathname.match(/^\/c\/(\d+)/);
    if (match) loadThread(Number(match[1])); else showList(false);
  });
  document.addEventListener("visibilitychange", markSeen);
  setInterval(tick, 30000);
}
enhanceForms(document, { afterAction });
document.querySelectorAll("[data-new-conversation]").forEach((box) => {
  const select = box.querySelector("[data-channel-select]");
  const sync = () => box.querySelectorAll("[data-channel-templates]").forEach((group) => { group.hidden = group.dataset.channelTemplates !== select.value; });
  select?.addEventListener("change", sync);
  sync();
  box.querySelector("[data-to]")?.addEventListener("input", () => box.querySelectorAll(".template-form").forEach((form) => checkTemplateForm(form, true)));
});
document.querySelectorAll("[data-template-picker]").forEach(enhancePicker);
document.querySelector("[data-ask-notifications]")?.addEventListener("change", (event) => { if (event.target.checked) askPermissionOnce(); });
installShortcuts({ openId, loadThread, showList });
if ("serviceWorker" in navigator) navigator.serviceWorker.register("/sw.js").catch(() => {});
