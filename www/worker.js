// The worker owns the wasm module: it downloads (with progress) and caches the model towers and the
// bundles, embeds queries and searches, so the page never freezes while a model loads or runs.
// The wasm-bindgen glue of the build chosen at start (pkg/tuwen.js, or pkg/threads/tuwen.js for threads).
import { RELAXED_SIMD_PROBE, RELAXED_SIMD_FASTER, simdVerdict } from './simd_probe.js';
import { PhotoLibrary, sha256Hex } from './photo_library.js';

let wasm = null;

// Versioned URLs (…?v=<sha256>) are immutable: one cache for all of them, old versions pruned.
const ASSET_CACHE = 'tuwen-assets-v1';

let manifest = null;
let backend = null;
const galleries = {}; // images / texts → WasmGallery (none on a site without a gallery)
const encoders = {}; // text / vision → Promise<WasmEncoder>
let library = null; // the visitor's photos (PhotoLibrary)

const post = (message) => self.postMessage(message);
const now = () => performance.now();

class UserError extends Error {}

function versionedUrl(asset) {
  return new URL(`${asset.url}?v=${asset.sha256.slice(0, 16)}`, self.location.href).href;
}

async function openCache() {
  try {
    return await caches.open(ASSET_CACHE);
  } catch (e) {
    post({ type: 'notice', level: 'warning', message: `浏览器拒绝了本地存储（${e.message}）：下载内容不会被缓存，下次打开需重新下载。` });
    return null;
  }
}

// Downloads one asset with progress events, verifies its hash, and keeps it in the Cache API.
async function fetchAsset(asset, label) {
  const url = versionedUrl(asset);
  const cache = await openCache();
  if (cache) {
    const hit = await cache.match(url);
    if (hit) {
      const bytes = new Uint8Array(await hit.arrayBuffer());
      if (bytes.length === asset.bytes) {
        post({ type: 'progress', label, loaded: bytes.length, total: asset.bytes, cached: true });
        return bytes;
      }
      await cache.delete(url);
    }
  }
  let response;
  try {
    response = await fetch(url);
  } catch (e) {
    throw new UserError(`无法下载 ${asset.url}（离线且尚未缓存？）：${e.message}`);
  }
  if (!response.ok) throw new UserError(`下载 ${asset.url} 失败：HTTP ${response.status}`);
  let bytes;
  try {
    bytes = new Uint8Array(asset.bytes);
  } catch (e) {
    throw new UserError(`浏览器拒绝为 ${label} 分配 ${(asset.bytes / 1e6).toFixed(0)} MB 内存：请关闭其他标签页后重试。`);
  }
  const reader = response.body.getReader();
  let loaded = 0;
  let lastPost = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    if (loaded + value.length > bytes.length) throw new UserError(`${asset.url} 比清单所写的 ${asset.bytes} 字节更大：站点不一致，请重新构建。`);
    bytes.set(value, loaded);
    loaded += value.length;
    if (now() - lastPost > 50) {
      post({ type: 'progress', label, loaded, total: asset.bytes });
      lastPost = now();
    }
  }
  if (loaded !== asset.bytes) throw new UserError(`${asset.url} 下载不完整（${loaded} / ${asset.bytes} 字节）`);
  if ((await sha256Hex(bytes)) !== asset.sha256) throw new UserError(`${asset.url} 校验失败（sha256 不符）：文件已损坏或站点不一致。`);
  post({ type: 'progress', label, loaded, total: asset.bytes });
  if (cache) {
    try {
      await cache.put(url, new Response(bytes, { headers: { 'Content-Type': 'application/octet-stream' } }));
      const path = new URL(url).pathname;
      for (const request of await cache.keys()) {
        if (new URL(request.url).pathname === path && request.url !== url) await cache.delete(request);
      }
    } catch (e) {
      post({ type: 'notice', level: 'warning', message: `存储空间不足，${label} 未能缓存（${e.name}）：下次打开需重新下载。` });
    }
  }
  return bytes;
}

function explainLoadFailure(e, what) {
  const message = String(e && e.message ? e.message : e);
  if (e instanceof RangeError || /memory|allocat|unreachable/i.test(message)) {
    return new UserError(`浏览器内存不足，无法加载${what}（${message}）：请关闭其他标签页，或换用内存更大的设备。`);
  }
  return e;
}

// Threads beyond this many buy little for one query's products and cost a worker's memory each.
const MAX_THREADS = 8;

// The build to run: threads × SIMD. Threads: the threaded build on a pool of Web Workers where the page is
// cross-origin isolated (shared memory needs it) and the device has cores to spare, else single-threaded;
// ?threads=N caps the pool (1: the single-threaded build). SIMD: ?simd=relaxed the relaxed-SIMD module where
// the browser validates it and the site has it, ?simd=simd128 the SIMD128 one, and ?simd=auto (the default)
// relaxed SIMD where the probe timed its dot product faster. `why` says why fewer threads run than asked for.
async function chooseBuild(manifest, { simd, threads }) {
  const cores = navigator.hardwareConcurrency || 1;
  const asked = /^[0-9]+$/.test(threads || '') ? Number(threads) : cores;
  const wanted = Math.max(1, Math.min(asked, cores, MAX_THREADS));
  let build = { glue: './pkg/tuwen.js', asset: manifest.wasm, relaxed: manifest.wasm_relaxed, threads: 1, why: '' };
  if (wanted >= 2 && manifest.wasm_threads) {
    if (self.crossOriginIsolated) {
      build = { glue: './pkg/threads/tuwen.js', asset: manifest.wasm_threads, relaxed: manifest.wasm_threads_relaxed, threads: wanted, why: '' };
    } else build.why = '页面未跨源隔离（需要 COOP/COEP 或本站的 service worker），只用 1 个线程';
  }
  build.simd = { asked: ['relaxed', 'simd128'].includes(simd) ? simd : 'auto', probe: null };
  if (build.simd.asked === 'simd128' || !build.relaxed || !WebAssembly.validate(RELAXED_SIMD_PROBE)) return build;
  // The probe runs for ?simd=relaxed too: it chooses the relaxed build's dot-product form.
  build.simd.probe = await simdVerdict();
  if (build.simd.asked === 'auto' && !(build.simd.probe.ratio <= RELAXED_SIMD_FASTER)) return build;
  return { ...build, asset: build.relaxed };
}

// The single-threaded build of the same SIMD, when the pool cannot start.
function singleBuild(manifest, build, why) {
  const relaxed = build.asset === build.relaxed && manifest.wasm_relaxed;
  return { ...build, glue: './pkg/tuwen.js', asset: relaxed || manifest.wasm, relaxed: manifest.wasm_relaxed, threads: 1, why };
}

// The CPU engine in words: the SIMD the module was built for and the threads its products run on; and why
// it runs fewer threads than the device has cores, when that is so.
let cpuEngine = 'WASM SIMD';
let cpuNote = '';
function describeCpu(level, threads) {
  const simd = level === 'relaxed-simd' ? 'relaxed SIMD' : 'SIMD128';
  return `WASM ${simd} · ${threads} 线程`;
}

// Why this SIMD build (and, for relaxed SIMD, which dot-product form), when the probe ran.
function describeSimdChoice({ asked, probe }, level) {
  if (!probe) return '';
  const ratio = probe.ratio.toFixed(2);
  const form = probe.form === 'pairs' ? 'i16 成对点积' : 'i32 累加点积';
  if (level !== 'relaxed-simd') return `relaxed SIMD 的 8 位点积在此 CPU 上不够快（耗时为 SIMD128 的 ${ratio} 倍），使用 SIMD128`;
  if (asked === 'relaxed') return `已按 ?simd=relaxed 使用 relaxed SIMD（${form}，实测耗时为 SIMD128 的 ${ratio} 倍）`;
  return `relaxed SIMD 的 8 位点积（${form}）实测耗时为 SIMD128 的 ${ratio} 倍，已选用（?simd=simd128 可改回）`;
}

// The backend badge: the Rust side's report ({backend, detail}) in the page's words.
function describeBackend(report, override) {
  if (report.backend === 'gpu') return { name: 'WebGPU', webgpu: true, reason: `WebGPU：${report.detail}`, detail: report.detail };
  let reason = report.detail;
  if (override) reason = override;
  else if (/CPU-emulated/.test(report.detail)) reason = '唯一的 WebGPU 适配器是 CPU 模拟（如 SwiftShader），比 WASM SIMD 更慢；加 ?backend=gpu 可强制使用';
  else if (/no GPU adapter/.test(report.detail)) reason = '没有可用的 WebGPU 适配器';
  else if (/fell back/.test(report.detail)) reason = `GPU 设备丢失，已回退到 WASM SIMD（${report.detail}）`;
  else if (/chosen/.test(report.detail)) reason = '已按 ?backend=cpu 使用 WASM SIMD';
  if (cpuNote) reason = `${reason}；${cpuNote}`;
  return { name: cpuEngine, webgpu: false, reason, detail: report.detail };
}

// Resolves the page's ?backend= (auto | cpu | gpu) once; the towers then load onto what it found.
async function detectBackend(choice) {
  if (!['auto', 'cpu', 'gpu'].includes(choice)) choice = 'auto';
  if (choice !== 'cpu' && !navigator.gpu) return describeBackend(await wasm.openBackend('cpu'), '此浏览器未提供 WebGPU');
  try {
    return describeBackend(await wasm.openBackend(choice));
  } catch (e) {
    return describeBackend(await wasm.openBackend('cpu'), `WebGPU 不可用（${e.message}），使用 WASM SIMD`);
  }
}

// How long the pool's Web Workers may take to start before the page runs the single-threaded build.
const POOL_START_MS = 20_000;

function withTimeout(promise, ms, message) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(message)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// Downloads (or takes from the cache) a build's module and starts it with its glue.
async function loadBuild(build) {
  const bytes = await fetchAsset(build.asset, 'WebAssembly 模块');
  try {
    const glue = await import(build.glue);
    await glue.default({ module_or_path: bytes });
    return glue;
  } catch (e) {
    throw new UserError(`WebAssembly 模块无法启动（需要支持 WASM SIMD 的浏览器：Chrome 91+、Firefox 89+、Safari 16.4+）：${e.message}`);
  }
}

async function start({ backend: choice, simd, threads }) {
  const stage = (name) => post({ type: 'stage', stage: name });
  stage('manifest');
  const response = await fetch('manifest.json', { cache: 'no-cache' }).catch((e) => {
    throw new UserError(`无法读取站点清单 manifest.json：${e.message}`);
  });
  if (!response.ok) throw new UserError(`无法读取站点清单 manifest.json：HTTP ${response.status}`);
  manifest = await response.json();
  if (manifest.version !== 1) throw new UserError(`不支持的站点清单版本 ${manifest.version}`);
  stage('simd probe');
  let build = await chooseBuild(manifest, { simd, threads });
  stage(`module (${build.threads} threads)`);
  if (build.threads === 1) wasm = await loadBuild(build);
  else {
    try {
      wasm = await loadBuild(build);
      await withTimeout(wasm.initThreadPool(build.threads), POOL_START_MS, 'timed out');
    } catch (e) {
      // No shared memory this large, or the pool's workers could not start (a Content-Security-Policy that
      // forbids blob: workers): the single-threaded build still works, and the badge says why one thread.
      console.error('WASM threads unavailable:', e);
      build = singleBuild(manifest, build, `无法启动 ${build.threads} 个 WASM 线程（${e.message || e}），只用 1 个线程`);
      wasm = await loadBuild(build);
    }
  }
  stage('backend');
  const level = wasm.simdLevel();
  // The relaxed build is loaded only after the probe (chooseBuild), which chose its form.
  if (level === 'relaxed-simd') wasm.setDotForm(build.simd.probe.form);
  cpuEngine = describeCpu(level, wasm.threadCount());
  cpuNote = [build.why, describeSimdChoice(build.simd, level)].filter(Boolean).join('；');
  backend = await detectBackend(choice || 'auto');
  stage('bundles');
  if (manifest.images && manifest.texts) {
    const [images, texts] = await Promise.all([
      fetchAsset(manifest.images.bundle, '图片索引'),
      fetchAsset(manifest.texts.bundle, '文本索引'),
    ]);
    galleries.images = new wasm.WasmGallery(images);
    galleries.texts = new wasm.WasmGallery(texts);
  }
  library = new PhotoLibrary({ wasm, model: manifest.model, vision: () => encoder('vision'), post, idle: queriesDone });
  let photos;
  stage('photos');
  try {
    photos = await library.open();
  } catch (e) {
    // Private windows of some browsers refuse IndexedDB: the site's gallery still works.
    library = null;
    photos = { unavailable: `浏览器不允许本站保存数据（${e.message || e}），无法索引我的图片` };
  }
  return {
    manifest,
    backend,
    simd: { ...build.simd, level, dotForm: wasm.dotForm() },
    images: { ids: galleries.images ? galleries.images.ids : [] },
    texts: { ids: galleries.texts ? galleries.texts.ids : [], captions: galleries.texts ? galleries.texts.captions : [] },
    photos,
  };
}

function encoder(tower) {
  if (!encoders[tower]) {
    encoders[tower] = (async () => {
      const label = tower === 'text' ? '文本编码器' : '图像编码器';
      const bytes = await fetchAsset(manifest.towers[tower], label);
      let model;
      try {
        try {
          model = await wasm.WasmEncoder.fromGguf(bytes, tower, backend.webgpu ? 'gpu' : 'cpu');
        } catch (e) {
          if (!backend.webgpu) throw e;
          // The GPU refused the tower (memory, a lost device): run it on the CPU and say so.
          model = await wasm.WasmEncoder.fromGguf(bytes, tower, 'cpu');
          model.fellBack = describeBackend({ backend: 'cpu', detail: String(e.message || e) }, `WebGPU 无法加载${label}（${e.message || e}），已改用 WASM SIMD`);
        }
      } catch (e) {
        throw explainLoadFailure(e, label);
      }
      const gallery = tower === 'text' ? galleries.images : galleries.texts;
      if (gallery) gallery.checkEncoder(model, `${tower === 'text' ? '图片' : '文本'}索引`);
      else if (model.fingerprint !== manifest.model.fingerprint) throw new UserError(`${label}与站点清单的模型不同：站点不一致，请重新构建。`);
      return model;
    })();
    encoders[tower].catch(() => delete encoders[tower]);
  }
  return encoders[tower];
}

// Where a tower's last query ran: the page's backend, unless the tower fell back to the CPU since.
function ranOn(model) {
  if (model.fellBack) return model.fellBack;
  const report = model.backend;
  return report.backend === 'gpu' || /fell back/.test(report.detail) ? describeBackend(report) : backend;
}

// Runs `embed` with the tower loaded (timing the load separately), then searches. Reports the backend
// the query ran on: a lost GPU moves the towers to the CPU.
async function timed(tower, embed) {
  const t0 = now();
  const model = await encoder(tower);
  const t1 = now();
  const query = await embed(model);
  const t2 = now();
  return { query, timings: { load: t1 - t0, encode: t2 - t1 }, backend: ranOn(model) };
}

function search(gallery, query, k) {
  const t = now();
  const hits = galleries[gallery] ? galleries[gallery].search(query, k) : null;
  return { hits, ms: now() - t };
}

// Images for a query in the chosen scope — the site's gallery, the visitor's photos, or both merged by score
// (one model, one int8 storage: the scores compare). Photos come with their stored thumbnails.
async function searchImages(query, k, scope) {
  const t = now();
  let hits = [];
  if (scope !== 'mine' && galleries.images) hits = galleries.images.search(query, k).map((h) => ({ ...h, source: 'gallery' }));
  if (scope !== 'gallery' && library) hits = hits.concat(library.search(query, k).map((h) => ({ ...h, source: 'mine' })));
  hits.sort((a, b) => b.score - a.score);
  hits = hits.slice(0, k);
  const ms = now() - t;
  for (const hit of hits) if (hit.source === 'mine') hit.thumbnail = await library.thumbnail(hit.id);
  return { hits, ms };
}

// Queries take precedence over indexing: the indexer waits between photos while any is in flight.
let queriesInFlight = 0;
let queriesIdle = null;
// A photo being embedded cannot be interrupted (one wasm call), so a query sent meanwhile waits for it: while
// the visitor is about to ask (typing in the query box, pointing at the image box: the page says so with
// `hold`), no new photo is started.
const HOLD_MS = 2000;
let heldUntil = 0;

async function queriesDone() {
  while (now() < heldUntil && queriesInFlight === 0) await new Promise((r) => setTimeout(r, heldUntil - now()));
  if (queriesInFlight === 0) return;
  if (!queriesIdle) {
    let resolve;
    queriesIdle = new Promise((r) => { resolve = r; });
    queriesIdle.resolve = resolve;
  }
  await queriesIdle;
}
function queryFinished() {
  queriesInFlight -= 1;
  if (queriesInFlight === 0 && queriesIdle) {
    queriesIdle.resolve();
    queriesIdle = null;
  }
}
const QUERIES = new Set(['text', 'image', 'galleryImage', 'caption', 'photo']);

function photos() {
  if (!library) throw new UserError('此浏览器不允许本站保存数据，无法使用我的图片');
  return library;
}

const handlers = {
  init: start,
  async text({ text, k, scope }) {
    if (!text.trim()) throw new UserError('请输入要搜索的文字');
    const { query, timings, backend: ran } = await timed('text', (m) => m.embedText(text));
    const images = await searchImages(query, k, scope);
    return { images: images.hits, timings: { ...timings, search: images.ms }, backend: ran };
  },
  async image({ bytes, name, k, scope }) {
    const { query, timings, backend: ran } = await timed('vision', (m) => m.embedImage(new Uint8Array(bytes), name));
    const texts = search('texts', query, k);
    const images = await searchImages(query, k, scope);
    return { texts: texts.hits, images: images.hits, timings: { ...timings, search: texts.ms + images.ms }, backend: ran };
  },
  // A gallery image or caption, or one of the visitor's photos, as the query: its stored embedding, no encoder.
  async galleryImage({ index, k, scope }) {
    const query = galleries.images.row(index);
    const texts = search('texts', query, k);
    const images = await searchImages(query, k, scope);
    return { texts: texts.hits, images: images.hits, timings: { load: 0, encode: 0, search: texts.ms + images.ms } };
  },
  async caption({ index, k, scope }) {
    const query = galleries.texts.row(index);
    const images = await searchImages(query, k, scope);
    return { images: images.hits, timings: { load: 0, encode: 0, search: images.ms } };
  },
  async photo({ path, k, scope }) {
    const query = photos().row(path);
    const texts = search('texts', query, k);
    const images = await searchImages(query, k, scope);
    return { texts: texts.hits, images: images.hits, timings: { load: 0, encode: 0, search: texts.ms + images.ms } };
  },
  photoThumbnail: ({ path }) => photos().thumbnail(path),
  photosAdd: ({ entries, folder }) => photos().add(entries, folder ?? null),
  photosPause: () => photos().pause(),
  photosResume: () => photos().resume(),
  photosCancel: () => photos().cancel(),
  photosExport: () => photos().exportBundle(),
  photosImport: ({ bytes, name }) => photos().importBundle(new Uint8Array(bytes), name),
  photosForget: () => photos().forget(),
  photosSummary: () => photos().summary(),
  hold: () => {
    heldUntil = now() + HOLD_MS;
  },
};

self.onmessage = async ({ data }) => {
  const { id, type } = data;
  const query = QUERIES.has(type);
  if (query) queriesInFlight += 1;
  try {
    const handler = handlers[type];
    if (!handler) throw new Error(`unknown request ${type}`);
    post({ id, type: 'result', result: await handler(data) });
  } catch (e) {
    console.error(e);
    post({ id, type: 'error', message: String(e && e.message ? e.message : e) });
  } finally {
    if (query) queryFinished();
  }
};
