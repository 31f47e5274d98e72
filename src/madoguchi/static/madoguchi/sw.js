/* Madoguchi service worker: keeps the app shell (styles, script, icon, offline page) in a
 * cache so the installed app starts, and says "offline", without a network.
 *
 * Served at /sw.js (so its scope is the whole site). Conversations, API data, media and
 * the login pages are never cached: they are private and must always be fresh.
 * Bump CACHE whenever SHELL changes; activate() then removes the old cache.
 */
"use strict";

const CACHE = "madoguchi-shell-v1";
const CACHE_PREFIX = "madoguchi-shell-";
const OFFLINE_URL = "/offline/";

// Precached on install.
const SHELL = [
  "/static/madoguchi/app.css",
  "/static/madoguchi/app.js",
  "/static/madoguchi/icons/icon-192.png",
  OFFLINE_URL,
];

// Never cached, never answered from the cache: live data, sockets, inbound webhooks,
// private attachments, and the session pages.
const NEVER_CACHE = ["/api/", "/ws/", "/webhooks/", "/media/", "/login/", "/logout/"];

// Only plain, complete, same-origin answers go into the cache (no errors, no redirects
// to the login page, no opaque or partial responses).
const cacheable = (response) =>
  response.status === 200 && response.type === "basic" && !response.redirected;

async function precache(cache, url) {
  const response = await fetch(url, { cache: "reload" });
  if (!cacheable(response)) throw new Error(`precache ${url}: HTTP ${response.status}`);
  await cache.put(url, response);
}

self.addEventListener("install", (event) => {
  event.waitUntil(
    (async () => {
      const cache = await caches.open(CACHE);
      // The offline page is essential: without it the install fails (and is retried on a
      // later visit). A missing static asset must not block the worker; it is fetched and
      // cached on first use instead.
      await precache(cache, OFFLINE_URL);
      await Promise.allSettled(
        SHELL.filter((url) => url !== OFFLINE_URL).map((url) => precache(cache, url)),
      );
      await self.skipWaiting();
    })(),
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    (async () => {
      const names = await caches.keys();
      await Promise.all(
        names
          .filter((name) => name.startsWith(CACHE_PREFIX) && name !== CACHE)
          .map((name) => caches.delete(name)),
      );
      await self.clients.claim();
    })(),
  );
});

self.addEventListener("fetch", (event) => {
  const { request } = event;
  if (request.method !== "GET") return; // forms, API writes: straight to the network
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return;

  // Pages: network-first; nothing is stored, the offline page stands in when it fails.
  if (request.mode === "navigate") {
    event.respondWith(navigate(request));
    return;
  }
  if (NEVER_CACHE.some((prefix) => url.pathname.startsWith(prefix))) return;
  if (url.pathname.startsWith("/static/")) {
    event.respondWith(staticAsset(event, request));
  }
  // Anything else is left to the browser, exactly as without a service worker.
});

async function navigate(request) {
  try {
    return await fetch(request);
  } catch {
    const cache = await caches.open(CACHE);
    return (await cache.match(OFFLINE_URL)) ?? Response.error();
  }
}

// Cache-first: answer from the cache at once, then fetch a fresh copy in the background
// for next time (static files are not fingerprinted, so a deploy must reach the cache).
// On a miss, go to the network and keep the answer.
async function staticAsset(event, request) {
  const cache = await caches.open(CACHE);
  const cached = await cache.match(request);
  const fresh = fetch(request).then(async (response) => {
    if (cacheable(response)) await cache.put(request, response.clone());
    return response;
  });
  if (cached) {
    event.waitUntil(fresh.catch(() => {})); // offline: keep the cached copy
    return cached;
  }
  return fresh;
}
