// The page: talks to the worker (which owns the wasm module), renders results. Every id and caption is
// inserted as text (textContent), never as HTML: captions like "胡子<人名>作品" show literally.

import { $, el, formatBytes, formatMs } from './dom.js';
import { initPhotos, photoProgress, photoFile, photoCount } from './photos.js';

const MAX_IMAGE_BYTES = 20 * 1024 * 1024;

const state = { manifest: null, imageIds: [], textIds: [], captions: [], ready: false };

// ---- worker requests -------------------------------------------------------------------------------
let worker = null;
const pending = new Map();
let nextId = 1;

function startWorker() {
  worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module' });
  worker.onmessage = onWorkerMessage;
  worker.onerror = (e) => showError(`后台线程出错：${e.message || '无法启动（浏览器可能不支持模块 Worker）'}`);
}

function ask(type, payload = {}, transfer = []) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    worker.postMessage({ id, type, ...payload }, transfer);
  });
}

function onWorkerMessage({ data }) {
  if (data.type === 'stage') {
    document.body.dataset.stage = data.stage; // where a start that hangs stopped (tests print it)
    return;
  }
  if (data.type === 'progress') return showProgress(data);
  if (data.type === 'photos') return photoProgress(data);
  if (data.type === 'notice') return showNotice(data.message);
  const request = pending.get(data.id);
  if (!request) return;
  pending.delete(data.id);
  if (data.type === 'error') request.reject(new Error(data.message));
  else request.resolve(data.result);
}
startWorker();

// How long the worker may take to start (manifest, module, thread pool, the gallery's bundles) before the page
// starts a new one, once: a fetch through the service worker now and then stalls in Chromium (see
// THUMBNAIL_STALL_MS), and a module import that never settles would leave the page waiting for ever.
const INIT_TIMEOUT_MS = 30_000;

async function initWorker(options) {
  for (let attempt = 1; ; attempt++) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`后台线程启动超时（停在 ${document.body.dataset.stage || '开始'}）`)), INIT_TIMEOUT_MS);
    });
    try {
      return await Promise.race([ask('init', options), timeout]);
    } catch (e) {
      if (attempt > 1 || !/超时/.test(e.message)) throw e;
      console.warn(`${e.message}: starting the worker again`);
      worker.terminate();
      for (const request of pending.values()) request.reject(new Error('后台线程已重启'));
      pending.clear();
      startWorker();
    } finally {
      clearTimeout(timer);
    }
  }
}

// ---- messages ------------------------------------------------------------------------------------
function showError(message) {
  const box = $('error');
  box.textContent = message;
  box.hidden = !message;
}

function showNotice(message) {
  $('notices').append(el('p', { className: 'notice', textContent: message }));
}

// Everything being downloaded (wasm, bundles, towers — a tower a first query needs, too) in one line: bytes,
// rate and what is loading; when all is in it folds to a one-line status.
const downloads = new Map(); // label → { loaded, total, cached }
let downloadStart = 0;
function showProgress({ label, loaded, total, cached }) {
  if (![...downloads.values()].some((d) => d.loaded < d.total)) downloadStart = performance.now();
  downloads.set(label, { loaded, total, cached: Boolean(cached) });
  renderDownloads();
}

function renderDownloads() {
  const box = $('downloads');
  const all = [...downloads.values()];
  const active = [...downloads].filter(([, d]) => d.loaded < d.total);
  const loaded = all.reduce((n, d) => n + d.loaded, 0);
  const total = all.reduce((n, d) => n + d.total, 0);
  box.dataset.items = String(all.length);
  box.dataset.loaded = String(loaded);
  box.dataset.total = String(total);
  box.dataset.state = active.length ? 'loading' : 'done';
  if (active.length) {
    const seconds = (performance.now() - downloadStart) / 1000;
    const fresh = active.reduce((n, [, d]) => n + d.loaded, 0);
    const rate = seconds > 0.2 ? ` · ${formatBytes(fresh / seconds)}/s` : '';
    const names = active.map(([label]) => label).join('、');
    const progress = el('progress', { max: total, value: loaded });
    box.replaceChildren(progress, el('span', { className: 'bytes', textContent: `正在加载 ${names}：${formatBytes(loaded)} / ${formatBytes(total)}${rate}` }));
  } else {
    const offline = navigator.serviceWorker?.controller ? ' · 离线可用' : '';
    const cached = all.filter((d) => d.cached).length;
    const from = cached === all.length ? '（本机缓存）' : '';
    box.replaceChildren(el('span', { className: 'bytes', textContent: `已加载 ${all.length} 项 ${formatBytes(total)}${from}${offline}` }));
  }
}

// ---- rendering ----------------------------------------------------------------------------------
const thumbnailUrl = (index) => `${state.manifest.thumbnails}${index}.jpg`;
const topK = () => Number($('top-k').value);

// Empties a result section; with hits, titles it and returns it for the list.
function resultSection(id, hits, title) {
  const section = $(id);
  section.replaceChildren();
  if (!hits) return null;
  section.append(el('h2', { textContent: title }));
  return section;
}

// In Chromium a thumbnail fetched through the service worker now and then neither loads nor fails (seen in
// about 1 of 8 fresh visits, 1–2 of 10 images; not the server's doing: it stalls with `Connection: close`
// too). One still pending after this long is asked for again under a new URL, twice at most (an off-screen
// lazy image that was never fetched stays lazy under the new URL: nothing is loaded early).
const THUMBNAIL_STALL_MS = 5000;
function retryStalledThumbnail(img, src, retries = 2) {
  const timer = setTimeout(() => {
    if (!img.isConnected || img.complete || retries === 0) return;
    img.src = `${src}?retry=${3 - retries}`;
    retryStalledThumbnail(img, src, retries - 1);
  }, THUMBNAIL_STALL_MS);
  img.addEventListener('load', () => clearTimeout(timer), { once: true });
  img.addEventListener('error', () => clearTimeout(timer), { once: true });
}

// Object URLs of the visitor's thumbnails shown now (revoked when the results change).
let photoUrls = [];

function renderImages(hits, title) {
  photoUrls.forEach((url) => URL.revokeObjectURL(url));
  photoUrls = [];
  const section = resultSection('image-results', hits, title);
  if (!section) return;
  const grid = el('ol', { className: 'grid' });
  hits.forEach((hit, rank) => {
    const mine = hit.source === 'mine';
    const id = mine ? hit.id : state.imageIds[hit.index];
    let src = mine ? null : thumbnailUrl(hit.index);
    if (mine && hit.thumbnail && hit.thumbnail.size) photoUrls.push((src = URL.createObjectURL(hit.thumbnail)));
    const picture = src
      ? el('img', { src, alt: id, loading: 'lazy', decoding: 'async' })
      : el('span', { className: 'missing', textContent: '（无缩略图）' });
    if (src) {
      picture.addEventListener('error', () => picture.replaceWith(el('span', { className: 'missing', textContent: '（缩略图不可用）' })), { once: true });
      if (!mine) retryStalledThumbnail(picture, src);
    }
    const button = el('button', { type: 'button', className: 'result-image', title: `用这张图片搜索：${id}` }, picture);
    button.addEventListener('click', () => run(mine ? { photo: id } : { image: id }));
    const meta = el('div', { className: 'meta' },
      el('span', { className: 'rank', textContent: `#${rank + 1}` }),
      el('span', { className: 'score', textContent: hit.score.toFixed(4) }),
      el('span', { className: 'id', textContent: id }));
    if (mine) {
      // The full image where this visit still has the file; else the stored thumbnail.
      const file = photoFile(id);
      const href = file ? URL.createObjectURL(file) : src;
      if (file) photoUrls.push(href);
      if (href) meta.append(el('a', { className: 'open', href, target: '_blank', rel: 'noopener', textContent: file ? '原图' : '缩略图' }));
    }
    grid.append(el('li', { className: `result${mine ? ' mine' : ''}`, dataset: { rank: rank + 1, source: hit.source || 'gallery' } }, button, meta));
  });
  section.append(grid);
}

function renderTexts(hits, title) {
  const section = resultSection('text-results', hits, title);
  if (!section) return;
  const list = el('ol', { className: 'captions' });
  hits.forEach((hit, rank) => {
    const id = state.textIds[hit.index];
    const caption = el('button', { type: 'button', className: 'caption', textContent: state.captions[hit.index], title: '用这段文字搜索图片' });
    caption.addEventListener('click', () => run({ caption: id }));
    list.append(
      el('li', { className: 'result', dataset: { rank: rank + 1 } },
        el('span', { className: 'rank', textContent: `#${rank + 1}` }),
        el('span', { className: 'score', textContent: hit.score.toFixed(4) }),
        caption,
        el('span', { className: 'id', textContent: id })),
    );
  });
  section.append(list);
}

function renderQuery(kind, content) {
  const view = $('query-view');
  view.replaceChildren(el('span', { className: 'label', textContent: kind }), content);
  view.hidden = false;
}

function renderTimings(t, renderMs) {
  const parts = [];
  if (t.load > 1) parts.push(`加载模型 ${formatMs(t.load)}`);
  if (t.encode > 0) parts.push(`编码 ${formatMs(t.encode)}`);
  parts.push(`检索 ${formatMs(t.search)}`, `渲染 ${formatMs(renderMs)}`);
  $('timings').textContent = parts.join(' · ');
  $('timings').dataset.encodeMs = t.encode.toFixed(2);
  $('timings').dataset.searchMs = t.search.toFixed(2);
  $('timings').dataset.renderMs = renderMs.toFixed(2);
}

// ---- queries ----------------------------------------------------------------------------------------
let generation = 0;

// Where image results come from: the site's gallery, the visitor's photos, or both.
const scope = () => $('scope').value;

// One query: `text`, `image` (a gallery id), `caption` (a gallery caption id), `photo` (the path of one of the
// visitor's photos) or `file` (a File).
async function run(query, { push = true } = {}) {
  if (!state.ready) return;
  const mine = ++generation;
  showError('');
  document.body.classList.add('busy');
  const k = topK();
  const where = scope();
  try {
    let result;
    if (query.text !== undefined) {
      $('text-query').value = query.text;
      renderQuery('以文搜图', el('q', { textContent: query.text }));
      result = await ask('text', { text: query.text, k, scope: where });
    } else if (query.image !== undefined) {
      const index = state.imageIds.indexOf(query.image);
      if (index < 0) throw new Error(`图库中没有图片 ${query.image}`);
      renderQuery('以图搜文', el('img', { src: thumbnailUrl(index), alt: query.image }));
      result = await ask('galleryImage', { index, k, scope: where });
    } else if (query.caption !== undefined) {
      const index = state.textIds.indexOf(query.caption);
      if (index < 0) throw new Error(`图库中没有文本 ${query.caption}`);
      renderQuery('以文搜图', el('q', { textContent: state.captions[index] }));
      result = await ask('caption', { index, k, scope: where });
    } else if (query.photo !== undefined) {
      const thumbnail = await ask('photoThumbnail', { path: query.photo });
      const src = thumbnail && thumbnail.size ? URL.createObjectURL(thumbnail) : '';
      renderQuery('以图搜图', src ? el('img', { src, alt: query.photo }) : el('span', { textContent: query.photo }));
      result = await ask('photo', { path: query.photo, k, scope: where });
    } else if (query.file) {
      const file = query.file;
      if (file.size > MAX_IMAGE_BYTES) throw new Error(`图片太大（${formatBytes(file.size)}），上限 ${formatBytes(MAX_IMAGE_BYTES)}`);
      renderQuery('以图搜文', el('img', { src: URL.createObjectURL(file), alt: file.name }));
      const bytes = await file.arrayBuffer();
      result = await ask('image', { bytes, name: file.name || 'pasted image', k, scope: where }, [bytes]);
    }
    if (mine !== generation) return;
    const t0 = performance.now();
    renderTexts(result.texts && result.texts.length ? result.texts : null, '最相关的文字');
    renderImages(result.images, result.texts ? '相似图片' : '最相关的图片');
    await new Promise(requestAnimationFrame);
    renderTimings(result.timings, performance.now() - t0);
    if (result.backend) showBackend(result.backend);
    if (push) saveInUrl(query, k);
  } catch (e) {
    if (mine === generation) showError(e.message);
  } finally {
    if (mine === generation) document.body.classList.remove('busy');
  }
}

// The query lives in the URL (?q=…, ?image=…, ?caption=…, &k=…) so a search can be shared; a chosen
// ?backend=, ?simd= and ?threads= stay.
function saveInUrl(query, k) {
  const params = new URLSearchParams();
  for (const kept of ['backend', 'simd', 'threads']) {
    const value = new URLSearchParams(location.search).get(kept);
    if (value) params.set(kept, value);
  }
  if (query.text !== undefined) params.set('q', query.text);
  else if (query.image !== undefined) params.set('image', query.image);
  else if (query.caption !== undefined) params.set('caption', query.caption);
  else return; // an uploaded file or one's own photo is not shared
  params.set('k', String(k));
  const url = `${location.pathname}?${params}`;
  if (url !== `${location.pathname}${location.search}`) history.pushState(null, '', url);
}

// The query in the URL; `k` from it too, unless the visitor just chose another (`keepK`).
function queryFromUrl({ keepK = false } = {}) {
  const params = new URLSearchParams(location.search);
  const k = params.get('k');
  if (!keepK && k && [...$('top-k').options].some((o) => o.value === k)) $('top-k').value = k;
  if (params.has('q')) return { text: params.get('q') };
  if (params.has('image')) return { image: params.get('image') };
  if (params.has('caption')) return { caption: params.get('caption') };
  return null;
}

// ---- wiring -------------------------------------------------------------------------------------------
// About to query (typing, pointing at the image box, pasting): indexing starts no new photo for a moment, so
// the query does not wait for one (at most one message a few hundred ms).
let lastHold = 0;
function hold() {
  if (!state.ready || performance.now() - lastHold < 300) return;
  lastHold = performance.now();
  worker.postMessage({ id: 0, type: 'hold' });
}
for (const type of ['focus', 'keydown', 'input']) $('text-query').addEventListener(type, hold);
for (const type of ['pointerdown', 'dragenter']) $('image-drop').addEventListener(type, hold);
document.addEventListener('paste', hold, { capture: true });

$('text-form').addEventListener('submit', (e) => {
  e.preventDefault();
  run({ text: $('text-query').value });
});
$('image-input').addEventListener('change', (e) => {
  const [file] = e.target.files;
  if (file) run({ file });
  e.target.value = '';
});
const drop = $('image-drop');
drop.addEventListener('dragover', (e) => {
  e.preventDefault();
  drop.classList.add('over');
});
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault();
  drop.classList.remove('over');
  const file = [...e.dataTransfer.files].find((f) => f.type.startsWith('image/')) || e.dataTransfer.files[0];
  if (file) run({ file });
});
document.addEventListener('paste', (e) => {
  const file = [...(e.clipboardData?.files || [])].find((f) => f.type.startsWith('image/'));
  if (file) run({ file });
});
// A new scope or k reruns the query on screen (one's own photo or file queries are not in the URL: the
// next query uses the choice).
for (const id of ['scope', 'top-k']) {
  $(id).addEventListener('change', () => {
    const query = queryFromUrl({ keepK: true });
    if (query) run(query);
  });
}
window.addEventListener('popstate', () => {
  const query = queryFromUrl();
  if (query) run(query, { push: false });
});

function showBackend(backend) {
  const badge = $('backend');
  badge.textContent = backend.name;
  badge.title = backend.detail;
  badge.dataset.backend = backend.webgpu ? 'webgpu' : 'wasm';
  let reason = document.querySelector('.backend-reason');
  if (!reason) {
    reason = el('span', { className: 'backend-reason' });
    $('model-card').before(reason);
  }
  reason.textContent = backend.reason;
  reason.title = backend.reason;
}

// The engine's details (model card, why this backend) are open on wide screens, folded on phones.
if (matchMedia('(min-width: 700px)').matches) $('engine').open = true;

function showModel(manifest, backend) {
  showBackend(backend);
  const m = manifest.model;
  $('model-card').replaceChildren(
    el('span', { textContent: m.name }),
    el('span', { textContent: m.dtype }),
    el('code', { textContent: m.fingerprint.replace('sha256:', '').slice(0, 12), title: m.fingerprint }),
  );
  $('random-warning').hidden = !m.random_weights;
  if (m.random_weights) $('random-warning').title = m.random_weights;
  const hasGallery = Boolean(manifest.images);
  document.body.dataset.gallery = hasGallery ? 'true' : 'false';
  $('gallery-info').textContent = hasGallery
    ? `图库：${manifest.images.count} 张图片、${manifest.texts.count} 条文字`
    : '本站没有公共图库：搜索你自己添加的图片';
  const examples = $('examples');
  for (const text of manifest.examples) {
    const chip = el('button', { type: 'button', className: 'chip', textContent: text });
    chip.addEventListener('click', () => run({ text }));
    examples.append(chip);
  }
}

// The scope choice: offered when there is something to choose between (a gallery and one's own photos).
function updateScope(summary) {
  const select = $('scope');
  const hasGallery = Boolean(state.manifest.images);
  const hasPhotos = (summary?.count ?? photoCount()) > 0;
  select.querySelector('[value="gallery"]').disabled = !hasGallery;
  if (!hasGallery) select.value = 'mine';
  else if (hasPhotos && select.dataset.chosen !== 'true') select.value = 'both';
  else if (!hasPhotos) select.value = 'gallery';
  $('scope-choice').hidden = !(hasGallery && hasPhotos);
}
$('scope').addEventListener('input', () => { $('scope').dataset.chosen = 'true'; });

// How long the first visit waits for its service worker to take control before running without isolation.
const ISOLATION_WAIT_MS = 5000;

// WASM threads share memory, which browsers give only to cross-origin isolated pages. Static hosts (GitHub
// Pages) send no COOP/COEP headers, so the service worker adds them to what it serves: the first visit, not
// yet served by it, reloads once under it. Resolves true when that reload is under way.
async function isolateThroughServiceWorker(registration, params) {
  if (self.crossOriginIsolated || !registration || params.get('threads') === '1') return false;
  if ((navigator.hardwareConcurrency || 1) < 2 || navigator.serviceWorker.controller) return false;
  // Once per tab session: a page the worker cannot isolate (a hard reload bypasses it) runs on one thread.
  if (sessionStorage.getItem('tuwen-isolation-reload')) return false;
  // A worker that fails to install (its shell files unreachable) never takes control: after a few seconds
  // the page goes on without isolation rather than wait for it.
  const controlled = new Promise((resolve) => {
    if (navigator.serviceWorker.controller) resolve(true);
    navigator.serviceWorker.addEventListener('controllerchange', () => resolve(true), { once: true });
    setTimeout(() => resolve(false), ISOLATION_WAIT_MS);
  });
  if (!(await controlled)) return false;
  sessionStorage.setItem('tuwen-isolation-reload', '1');
  location.reload();
  return true;
}

// Browsers give the page what it rests on — SHA-256 of every download (crypto.subtle), the Cache API and the
// service worker (offline use, WASM threads) — only in a secure context: https://, or http://localhost and
// 127.0.0.1 (`tuwen serve`). Served over plain http from another address (a LAN IP, `python -m http.server`
// opened from another machine) it would fail on the first of them with an engine's message; say why instead.
function insecureContextMessage() {
  if (self.isSecureContext) return '';
  return `此页面需要安全上下文（https://，或本机的 http://localhost、http://127.0.0.1，例如 tuwen serve）：` +
    `${location.origin} 不是，浏览器在这里不提供校验下载所需的 crypto.subtle、离线缓存和 service worker。`;
}

async function main() {
  const params = new URL(location.href).searchParams;
  const insecure = insecureContextMessage();
  if (insecure) {
    $('backend').textContent = '无法运行';
    showError(insecure);
    return;
  }
  let registration = null;
  if ('serviceWorker' in navigator) {
    // A registration that never settles (its script's fetch stalled) must not hold the page: go on without.
    const stalled = new Promise((_, reject) => setTimeout(() => reject(new Error('注册超时')), ISOLATION_WAIT_MS));
    registration = await Promise.race([navigator.serviceWorker.register('sw.js'), stalled]).catch((e) => {
      showNotice(`离线模式不可用：${e.message}`);
      return null;
    });
  }
  try {
    if (await isolateThroughServiceWorker(registration, params)) return;
    const started = performance.now();
    // ?backend=auto|cpu|gpu: where the encoders run (auto: WebGPU on a real GPU, else WASM SIMD);
    // ?simd=auto|relaxed|simd128: the wasm build's SIMD (auto: relaxed SIMD where a probe times its 8-bit dot
    // product faster); ?threads=N: at most N WASM threads (default: every core).
    const init = await initWorker({
      backend: params.get('backend') || 'auto',
      simd: params.get('simd') || 'auto',
      threads: params.get('threads') || 'auto',
    });
    state.manifest = init.manifest;
    state.imageIds = init.images.ids;
    state.textIds = init.texts.ids;
    state.captions = init.texts.captions;
    showModel(init.manifest, init.backend);
    // What the SIMD choice rested on, for whoever checks it (tests, benchmarks).
    document.body.dataset.simd = init.simd.level;
    document.body.dataset.dotForm = init.simd.dotForm; // the relaxed build's dot-product form ('' in SIMD128)
    if (init.simd.probe) {
      document.body.dataset.simdProbe = String(init.simd.probe.ratio);
      document.body.dataset.simdProbeCached = String(init.simd.probe.cached);
      document.body.dataset.simdProbeForm = init.simd.probe.form;
    }
    initPhotos({ ask, changed: updateScope }, init.manifest, init.photos);
    updateScope(init.photos);
    state.ready = true;
    for (const id of ['text-query', 'text-search', 'image-input']) $(id).disabled = false;
    renderDownloads();
    document.body.dataset.ready = 'true';
    document.body.dataset.readyMs = (performance.now() - started).toFixed(0);
    const query = queryFromUrl();
    if (query) await run(query, { push: false });
  } catch (e) {
    showError(e.message);
  }
}

main();
