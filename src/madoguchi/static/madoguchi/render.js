// Building list rows and messages from the JSON that events carry. Mirrors the server's
// templates (_conversation_row.html, _message.html). Customer text only ever goes through
// textContent: it is never parsed as HTML.

const gettext = window.gettext || ((s) => s);
const interpolate = window.interpolate || ((fmt, obj) => fmt.replace(/%\((\w+)\)s/g, (_, k) => obj[k]));

export const me = Number(document.body.dataset.user || 0);

// The platform module's stand-ins for messages without text, in the viewer's language
// (the same list as the server's `readable` filter).
const PLACEHOLDERS = {
  "[Empty message]": gettext("[Empty message]"),
  "[Image]": gettext("[Image]"),
  "[Audio]": gettext("[Audio]"),
  "[Voice message]": gettext("[Voice message]"),
  "[Video]": gettext("[Video]"),
  "[Document]": gettext("[Document]"),
  "[Sticker]": gettext("[Sticker]"),
  "[Location]": gettext("[Location]"),
  "[Contact]": gettext("[Contact]"),
  "[Interactive reply]": gettext("[Interactive reply]"),
  "[Button reply]": gettext("[Button reply]"),
  "Reaction removed": gettext("Reaction removed"),
  "[Order]": gettext("[Order]"),
  "[System message]": gettext("[System message]"),
  "[Unsupported message type]": gettext("[Unsupported message type]"),
};
export function readable(text) { return PLACEHOLDERS[text] || text; }
const zone = document.body.dataset.tz || "UTC";

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  const opts = { timeZone: zone };
  const today = new Date().toLocaleDateString("en-CA", opts);
  const day = date.toLocaleDateString("en-CA", opts);
  if (day === today) {
    return date.toLocaleTimeString("en-GB", { ...opts, hour: "2-digit", minute: "2-digit" });
  }
  const [y, m, d] = day.split("-");
  return y === today.slice(0, 4) ? `${m}/${d}` : `${y}/${m}/${d}`;
}

export function windowLeft(expiresIso) {
  if (!expiresIso) return { open: false, text: gettext("Window closed") };
  const seconds = Math.floor((new Date(expiresIso) - Date.now()) / 1000);
  if (seconds <= 0) return { open: false, text: gettext("Window closed") };
  const minutes = Math.floor(seconds / 60);
  const text = interpolate(gettext("%(h)sh %(m)sm left"), {
    h: String(Math.floor(minutes / 60)),
    m: String(minutes % 60).padStart(2, "0"),
  }, true);
  return { open: true, text };
}

export function initials(name) {
  const parts = (name || "?").split(/\s+/).filter(Boolean);
  if (parts.length === 0) return "?";
  if (parts.length === 1) return parts[0].slice(0, 2).toUpperCase();
  return (parts[0][0] + parts[parts.length - 1][0]).toUpperCase();
}

export function conversationRow(c, currentId) {
  // A window open with no end (email, a subscribed Viber user) has nothing to show.
  const open = c.window && c.window.open;
  const w = open && !c.window.expires_at ? { open: true, text: "" }
    : c.window && c.window.reason === "not_subscribed" ? { open: false, text: gettext("Not subscribed") }
    : windowLeft(open ? c.window.expires_at : null);
  const meta = el("span", { class: "row-meta" },
    el("span", { class: "channel", text: c.channel.name }),
    el("span", { class: "assignee", text: c.assignee ? c.assignee.name : gettext("Unassigned") }),
    w.text ? el("span", { class: `window ${w.open ? "open" : "closed"}`, dataset: { expires: c.window.expires_at || "" }, text: w.text }) : null,
  );
  const link = el("a", { href: `/c/${c.id}` },
    el("span", { class: "avatar", "aria-hidden": "true", text: initials(c.contact.name) }),
    el("span", { class: "row-main" },
      el("span", { class: "row-top" },
        el("strong", { class: "name", dir: "auto", text: c.contact.name }),
        el("time", { datetime: c.last_message_at || "", text: when(c.last_message_at) })),
      el("span", { class: "row-mid" },
        el("span", { class: "preview", dir: "auto", text: readable(c.last_message_preview) }),
        c.unread_count ? el("span", { class: "badge", "aria-label": gettext("unread"), text: String(c.unread_count) }) : null),
      meta));
  const classes = ["row"];
  if (c.unread_count) classes.push("unread");
  if (c.id === currentId) classes.push("current");
  const dataset = { id: String(c.id), at: c.last_message_at || "", assignee: c.assignee ? String(c.assignee.id) : "", status: c.status };
  return el("li", { class: classes.join(" "), dataset }, link);
}

const TICKS = { queued: "🕓", sent: "✓", delivered: "✓✓", read: "✓✓", failed: "⚠" };
const MEDIA_KINDS = new Set(["image", "sticker", "audio", "video", "document"]);

export function message(m, quoteText) {
  const classes = ["msg", m.direction, `kind-${m.kind}`];
  if (m.status === "failed") classes.push("failed");
  const item = el("li", { class: classes.join(" "), id: `m${m.id}`, dataset: { id: String(m.id), channel: m.channel ? String(m.channel.id) : "" } });
  if (m.kind === "note") {
    item.append(el("span", { class: "note-label", text: gettext("Private note") + (m.author ? ` · ${m.author.name}` : "") }));
  } else if (m.direction === "out" && m.author) {
    item.append(el("span", { class: "author", text: m.author.name }));
  }
  if (quoteText) item.append(el("blockquote", { class: "quote", dir: "auto", text: quoteText }));
  // Mail: the subject tells one thread's topics apart.
  if (m.kind === "text" && m.data && m.data.subject) item.append(el("p", { class: "subject", dir: "auto", text: m.data.subject }));
  const media = m.media;
  if (media && media.url) {
    if (m.kind === "image" || m.kind === "sticker") {
      item.append(el("a", { href: media.url, target: "_blank", rel: "noopener" },
        el("img", { class: `media ${m.kind}`, src: media.url, alt: m.text, loading: "lazy" })));
    } else if (m.kind === "audio") {
      item.append(el("audio", { class: "media", controls: true, preload: "none", src: media.url }));
    } else if (m.kind === "video") {
      item.append(el("video", { class: "media", controls: true, preload: "metadata", src: media.url }));
    } else {
      item.append(el("a", { class: "file", href: `${media.url}?download=1`, text: `📄 ${media.filename || gettext("Document")}` }));
    }
  } else if (media && media.state === "pending") {
    item.append(el("span", { class: "muted", text: gettext("Downloading media…") }));
  } else if (media && media.state === "too_large") {
    item.append(el("span", { class: "muted", text: gettext("The file is larger than the platform's limit and was not kept.") }));
  }
  if (m.kind === "reaction") {
    item.append(el("span", { class: "reaction", text: m.text }));
  } else if (m.kind === "location" && m.data && m.data.latitude !== undefined) {
    item.append(el("a", {
      class: "location", target: "_blank", rel: "noopener noreferrer",
      href: `https://www.openstreetmap.org/?mlat=${encodeURIComponent(m.data.latitude)}&mlon=${encodeURIComponent(m.data.longitude)}`,
      text: `📍 ${m.text}`,
    }));
  } else if (!(MEDIA_KINDS.has(m.kind) && (m.text.startsWith("[") || (media && m.text === media.filename)) && !(m.data && m.data.caption))) {
    item.append(el("p", { class: "text", dir: "auto", text: readable(m.text) }));
  }
  // The customer's own time for inbound messages (a late delivery keeps its real time).
  const at = m.platform_timestamp || m.created_at;
  const meta = el("span", { class: "meta" });
  // The channel each message came or went on: one thread holds the contact's every channel.
  if (m.channel) {
    meta.append(el("span", {
      class: "via", dataset: { kind: m.channel.kind }, text: m.channel.name,
      title: interpolate(gettext("On %(name)s"), { name: m.channel.name }, true),
    }), " ");
  }
  meta.append(el("time", { datetime: at, text: when(at) }));
  if (m.direction === "out" && m.kind !== "note" && m.status) {
    meta.append(" ", el("span", { class: `tick ${m.status}`, title: m.status, "aria-label": m.status, text: TICKS[m.status] || "" }));
  }
  item.append(meta);
  if (m.error) {
    const reason = m.error.reason || m.error.title;
    const prefix = m.direction === "out" ? gettext("Not delivered:") + " " : "";
    const p = el("p", { class: "error-reason", text: prefix + reason });
    if (m.error.code) p.append(" ", el("span", { class: "muted", text: `(${m.error.code})` }));
    item.append(p);
  }
  return item;
}

export function toast(text, kind = "") {
  const node = el("div", { class: `toast ${kind}`, role: "status", text });
  document.body.append(node);
  setTimeout(() => node.remove(), 4000);
}
