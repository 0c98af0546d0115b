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

// Each shell file is cached on its own, given NETWORK_WAIT_MS: one that fails or stalls is left to be cached
// when the page fetches it (networkFirst), and installation — and with it control of the page, offline use and
// the isolation that wasm threads need — never waits for ever on one stalled fetch.
self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(SHELL_CACHE).then((cache) => Promise.all(SHELL.map((url) => cacheWithin(cache, url)))).then(() => self.skipWaiting()));
});

async function cacheWithin(cache, url) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), NETWORK_WAIT_MS);
  try {
    const response = await fetch(url, { signal: abort.signal });
    if (response.ok) await cache.put(url, response);
  } catch (e) {
    // Cached later, when the page asks for it.
  } finally {
    clearTimeout(timer);
  }
}

self.addEventListener('activate', (event) => {
  event.waitUntil(self.clients.claim());
});

// A shell file the network has not answered after this long is taken from the cache where it is there (else
// the network is waited for): now and then a fetch in Chromium neither completes nor fails, and a page must not
// wait for ever on its own files.
const NETWORK_WAIT_MS = 4000;

async function cachedShell(cache, request) {
  // The page URL carries the query (?q=…): any query string maps to the cached shell.
  return (await cache.match(request)) || (await cache.match(request, { ignoreSearch: true }));
}

async function networkFirst(request) {
  const cache = await caches.open(SHELL_CACHE);
  const network = fetch(request).then(async (response) => {
    if (response.ok) await cache.put(request, response.clone());
    return response;
  });
  network.catch(() => {}); // answered from the cache meanwhile: its failure is no one's to report
  const slow = new Promise((resolve) => setTimeout(resolve, NETWORK_WAIT_MS)).then(() => cachedShell(cache, request));
  try {
    const first = await Promise.race([network, slow]);
    return first || (await network); // slow, with nothing cached: the network it is
  } catch (e) {
    const cached = await cachedShell(cache, request);
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
