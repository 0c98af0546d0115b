// Offline after the first visit: the page shell is kept network-first (updates show when online),
// versioned assets (models, bundles, wasm: …?v=<hash>) are served from the worker's cache, and
// thumbnails are cached as they are seen.
const SHELL_CACHE = 'tuwen-shell-v1';
const THUMBNAIL_CACHE = 'tuwen-thumbnails-v1';
const SHELL = ['./', 'index.html', 'app.js', 'worker.js', 'style.css', 'pkg/tuwen.js', 'manifest.json'];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(SHELL_CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(self.clients.claim());
});

async function networkFirst(request) {
  const cache = await caches.open(SHELL_CACHE);
  try {
    const response = await fetch(request);
    if (response.ok) await cache.put(request, response.clone());
    return response;
  } catch (e) {
    // The page URL carries the query (?q=…): any query string maps to the cached shell.
    const cached = (await cache.match(request)) || (await cache.match(request, { ignoreSearch: true }));
    if (cached) return cached;
    throw e;
  }
}

async function cacheFirst(request, cacheName) {
  const cached = await caches.match(request);
  if (cached) return cached;
  const response = await fetch(request);
  if (response.ok && cacheName) {
    const cache = await caches.open(cacheName);
    await cache.put(request, response.clone()).catch(() => {});
  }
  return response;
}

self.addEventListener('fetch', (event) => {
  const { request } = event;
  const url = new URL(request.url);
  if (request.method !== 'GET' || url.origin !== self.location.origin) return;
  if (url.searchParams.has('v')) event.respondWith(cacheFirst(request, null));
  else if (url.pathname.includes('/thumbnails/')) event.respondWith(cacheFirst(request, THUMBNAIL_CACHE));
  else event.respondWith(networkFirst(request));
});
