// The one WebSocket of this tab. Reconnects by itself (with backoff) and, after any gap, asks
// the page to re-fetch its state: events missed while disconnected are not replayed.

export function connect({ onEvent, onResync, onState }) {
  let socket = null;
  let delay = 500;
  let connectedBefore = false;
  let pingTimer = null;

  function open() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}/ws/`);
    socket.addEventListener("open", () => {
      delay = 500;
      onState(true);
      clearInterval(pingTimer);
      pingTimer = setInterval(() => socket.readyState === 1 && socket.send('{"type":"ping"}'), 25000);
    });
    socket.addEventListener("message", (msg) => {
      let frame;
      try { frame = JSON.parse(msg.data); } catch { return; }
      // One event, or several that waited together for this socket, in order.
      for (const event of Array.isArray(frame) ? frame : [frame]) {
        if (!event || typeof event !== "object") continue;
        if (event.type === "hello") {
          if (connectedBefore) onResync();
          connectedBefore = true;
        } else if (event.type === "resync") {
          onResync();  // the server may have missed events
        } else if (event.type !== "pong") {
          onEvent(event);
        }
      }
    });
    socket.addEventListener("close", () => {
      onState(false);
      clearInterval(pingTimer);
      setTimeout(open, delay);
      delay = Math.min(delay * 2, 10000);
    });
  }

  // A laptop waking from sleep: reconnect at once instead of waiting for the backoff.
  window.addEventListener("online", () => { if (socket && socket.readyState > 1) open(); });
  open();
  // For support and tests: drop the connection as a network failure would.
  window.madoguchiLive = { drop: () => socket && socket.close(4000, "dropped") };
}
