// Offline after the first visit (and installable: the web app manifest and its icons are in the shell): the
// page shell is kept network-first (updates show when online),
// versioned assets (models, bundles, wasm: …?v=<hash>) are served from the worker's cache, and
// thumbnails are cached as they are seen. Every response it serves carries COOP/COEP, which makes the page
// cross-origin isolated (shared memory for WASM threads) on hosts that cannot send headers.
const SHELL_CACHE = 'tuwen-shell-v1';
const THUMBNAIL_CACHE = 'tuwen-thumbnails-v1';
const SHELL = ['./', 'index.html', 'app.js', 'dom.js', 'photos.js', 'photo_store.js', 'photo_library.js', 'worker.js',
  'simd_probe.js', 'style.css', 'pkg/tuwen.js', 'manifest.json', 'manifest.webmanifest', 'icons/icon-192.png',
  'icons/icon-512.png', 'icons/icon-maskable-512.png'];

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

// The page and its workers are all same-origin, so require-corp blocks nothing the page loads.
function isolated(response) {
  if (response.status === 0) return response;
  const headers = new Headers(response.headers);
  headers.set('Cross-Origin-Opener-Policy', 'same-origin');
  headers.set('Cross-Origin-Embedder-Policy', 'require-corp');
  return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
}

self.addEventListener('fetch', (event) => {
  const { request } = event;
  const url = new URL(request.url);
  if (request.method !== 'GET' || url.origin !== self.location.origin) return;
  let response;
  if (url.searchParams.has('v')) response = cacheFirst(request, null);
  else if (url.pathname.includes('/thumbnails/')) response = cacheFirst(request, THUMBNAIL_CACHE);
  else response = networkFirst(request);
  event.respondWith(response.then(isolated));
});
