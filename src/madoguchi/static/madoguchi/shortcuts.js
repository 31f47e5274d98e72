// Keyboard shortcuts on desktop (press ? for the list).

export function installShortcuts({ openId, loadThread, showList }) {
  let pendingG = false;
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    const typing = target.closest("input, textarea, select, [contenteditable]");
    if (event.key === "Escape") {
      if (typing) { target.blur(); return; }
      if (openId()) showList(true);
      return;
    }
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    const rows = [...document.querySelectorAll("#conversation-list .row")];
    const current = rows.findIndex((row) => row.classList.contains("current"));
    const go = (index) => {
      const row = rows[Math.max(0, Math.min(rows.length - 1, index))];
      if (row) loadThread(Number(row.dataset.id), { push: true });
    };
    if (pendingG) {
      pendingG = false;
      const view = { m: "mine", u: "unassigned", a: "all" }[event.key];
      if (view) location.href = `/?view=${view}`;
      return;
    }
    switch (event.key) {
      case "j": go(current + 1); break;
      case "k": go(current < 0 ? 0 : current - 1); break;
      case "/": event.preventDefault(); document.querySelector("[data-shortcut='/']")?.focus(); break;
      case "r": event.preventDefault(); document.querySelector("[data-tab=reply]")?.click(); break;
      case "n": event.preventDefault(); document.querySelector("[data-tab=note]")?.click(); break;
      case "c": document.querySelector("[data-action=claim]")?.click(); break;
      case "e": document.querySelector("[data-action=resolve]")?.click(); break;
      case "g": pendingG = true; setTimeout(() => { pendingG = false; }, 1200); break;
      case "?": document.getElementById("shortcuts")?.showModal(); break;
      default: break;
    }
  });
  document.querySelector("[data-action=shortcuts-help]")?.addEventListener("click", () => document.getElementById("shortcuts")?.showModal());
}
