// Sound and desktop notifications for new messages in one's own conversations (user setting).

import { me } from "./render.js";

const gettext = window.gettext || ((s) => s);
const wantsSound = document.body.dataset.sound === "1";
const wantsDesktop = document.body.dataset.desktop === "1";
let audio = null;

export function askPermissionOnce() {
  if ("Notification" in window && Notification.permission === "default") Notification.requestPermission();
}

function beep() {
  try {
    audio = audio || new AudioContext();
    const osc = audio.createOscillator();
    const gain = audio.createGain();
    osc.frequency.value = 880;
    gain.gain.setValueAtTime(0.0001, audio.currentTime);
    gain.gain.exponentialRampToValueAtTime(0.15, audio.currentTime + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, audio.currentTime + 0.35);
    osc.connect(gain).connect(audio.destination);
    osc.start();
    osc.stop(audio.currentTime + 0.4);
  } catch { /* no audio device, or autoplay refused until the user interacts */ }
}

export function alertNewMessage(event, { open }) {
  const assignee = event.assignee_id;
  // Only one's own conversations ring; the event says whose it is when the action knows.
  if (assignee !== undefined && assignee !== me) return;
  if (open && !document.hidden) return;
  if (wantsSound) beep();
  if (wantsDesktop && "Notification" in window && Notification.permission === "granted") {
    const note = new Notification(gettext("New message"), {
      body: event.message.text.slice(0, 140),
      tag: `conversation-${event.conversation_id}`,
      icon: "/static/madoguchi/icons/icon-192.png",
    });
    note.onclick = () => { window.focus(); location.href = `/c/${event.conversation_id}`; };
  }
}

document.addEventListener("click", () => { if (wantsDesktop) askPermissionOnce(); }, { once: true });
