// The visitor's own photos, in the worker: indexed on the page's engine, kept in IndexedDB (photo_store.js),
// searched like the site's gallery. Incremental by content: a file is embedded once per distinct bytes
// (sha256), so a renamed file costs a hash, a changed one is embedded again, and a folder added again drops the
// names no longer in it. Indexing yields to queries between photos and commits a batch at a time.
import { openStore, forgetAll } from './photo_store.js';

// The largest file read (as `tuwen index images`): a video or disk image in the folder is skipped unread.
const MAX_FILE_BYTES = 512 * 1024 * 1024;
// Photos per transaction: what a closed tab can lose, and how often the searchable set grows.
const BATCH_PHOTOS = 8;
const BATCH_MS = 3000;

export class PhotoLibrary {
  // `wasm`: the module; `model`: the site's model stamp (manifest.model); `vision()`: resolves to the vision
  // encoder; `post(message)`: progress to the page; `idle()`: resolves when no query is waiting.
  constructor({ wasm, model, vision, post, idle }) {
    Object.assign(this, { wasm, model, vision, post, idle });
    this.store = null;
    this.photos = new Map(); // sha → { values, scale, bytes }
    this.names = new Map(); // path → { sha, folder }
    this.skipped = []; // { path, reason } of the last run
    this.gallery = null; // WasmGallery over names, rebuilt when they change
    this.ids = [];
    this.job = null;
  }

  async open() {
    this.store = await openStore(this.model.fingerprint);
    const { photos, names } = await this.store.load();
    this.photos = photos;
    // A name whose photo is gone (an interrupted removal) is dropped, not shown without an embedding.
    this.names = new Map([...names].filter(([, n]) => photos.has(n.sha)));
    this.dirty = true;
    await this.collectGarbage();
    return this.summary();
  }

  // Deletes the photos no name points at any more (removed, or changed under their name). Run when an
  // indexing run ends, not during it: a file renamed within the folder finds its photo still there.
  async collectGarbage() {
    const unused = this.unusedPhotos();
    if (unused.length) await this.store.commit({ removePhotos: unused });
  }

  summary(extra = {}) {
    let bytes = 0;
    for (const p of this.photos.values()) bytes += p.bytes + p.values.length + 8;
    return { count: this.names.size, photos: this.photos.size, skipped: this.skipped.length, storedBytes: bytes, ...extra };
  }

  // Indexes `entries` ([{ path, file }]); `folder` (the top folder's name) makes it a folder added again:
  // its names no longer listed are dropped. Resolves with what it did.
  async add(entries, folder) {
    if (this.job) throw new Error('正在索引：请等待完成或取消后再添加');
    const job = { total: entries.length, done: 0, embedded: 0, reused: 0, removed: 0, started: performance.now(), paused: null, cancelled: false };
    this.job = job;
    this.skipped = [];
    try {
      if (folder !== null) job.removed = await this.dropMissing(folder, new Set(entries.map((e) => e.path)));
      await this.index(entries, folder, job);
    } finally {
      this.job = null;
      await this.collectGarbage().catch(() => {});
    }
    const state = job.cancelled ? 'cancelled' : 'done';
    this.progress(job, state);
    return this.summary({ state, embedded: job.embedded, reused: job.reused, removed: job.removed, skippedList: this.skipped });
  }

  async dropMissing(folder, listed) {
    const gone = [...this.names].filter(([path, n]) => n.folder === folder && !listed.has(path)).map(([path]) => path);
    if (!gone.length) return 0;
    for (const path of gone) this.names.delete(path);
    await this.store.commit({ removeNames: gone });
    this.dirty = true;
    return gone.length;
  }

  // Photos no name points at (taken out of memory; the caller deletes them from the store).
  unusedPhotos() {
    const used = new Set([...this.names.values()].map((n) => n.sha));
    const unused = [...this.photos.keys()].filter((sha) => !used.has(sha));
    for (const sha of unused) this.photos.delete(sha);
    return unused;
  }

  async index(entries, folder, job) {
    let batch = newBatch();
    const flush = async () => {
      if (!batch.names.length) return;
      const pending = batch;
      batch = newBatch();
      try {
        for (const n of pending.names) this.names.set(n.path, { sha: n.sha, folder: n.folder });
        await this.store.commit({ photos: pending.photos, names: pending.names });
      } catch (e) {
        // Nothing of this batch was stored: forget it in memory too, keep everything committed before.
        for (const n of pending.names) this.names.delete(n.path);
        const reloaded = await this.store.load();
        this.photos = reloaded.photos;
        this.names = new Map([...reloaded.names].filter(([, n]) => reloaded.photos.has(n.sha)));
        this.dirty = true;
        throw storageError(e);
      }
      for (const p of pending.photos) this.photos.set(p.sha, { values: p.values, scale: p.scale, bytes: p.thumbnail.size });
      this.dirty = true;
    };
    for (const { path, file } of entries) {
      if (job.cancelled) break;
      await nextTask(); // lets a query's message in before the next photo
      await this.idle();
      if (job.paused) {
        await flush(); // a tab closed while paused loses nothing
        this.progress(job, 'indexing');
        await job.paused.promise;
      }
      if (job.cancelled) break;
      try {
        const outcome = await this.indexOne(path, file, folder, batch);
        job[outcome] += 1;
      } catch (e) {
        this.skipped.push({ path, reason: String(e && e.message ? e.message : e) });
      }
      job.done += 1;
      if (batch.photos.length >= BATCH_PHOTOS || performance.now() - batch.started > BATCH_MS) await flush();
      this.progress(job, 'indexing');
    }
    await flush();
  }

  // One file → 'embedded' (new bytes), 'reused' (bytes already indexed, under any name); throws the reason
  // it is skipped.
  async indexOne(path, file, folder, batch) {
    if (file.size === 0) throw new Error('空文件（0 字节）');
    if (file.size > MAX_FILE_BYTES) throw new Error(`文件 ${(file.size / 1e6).toFixed(0)} MB，超过图片上限 ${MAX_FILE_BYTES / 1e6} MB`);
    const head = new Uint8Array(await file.slice(0, 64).arrayBuffer());
    const crateReads = this.wasm.crateDecodes(head);
    if (!crateReads && !file.type.startsWith('image/')) throw new Error('不是图片（无法识别的格式）');
    const bytes = new Uint8Array(await file.arrayBuffer());
    const sha = await sha256Hex(bytes);
    const name = { path, sha, folder };
    const known = this.photos.has(sha) || batch.photos.some((p) => p.sha === sha);
    if (this.names.get(path)?.sha === sha || known) {
      batch.names.push(name);
      return 'reused';
    }
    const encoder = await this.vision();
    const photo = crateReads ? await encoder.indexPhoto(bytes, path) : await indexThroughBrowser(encoder, bytes, file.type, path);
    batch.photos.push({ sha, values: photo.values, scale: photo.scale, thumbnail: new Blob([photo.thumbnail], { type: 'image/jpeg' }) });
    photo.free();
    batch.names.push(name);
    return 'embedded';
  }

  progress(job, state) {
    const seconds = (performance.now() - job.started) / 1000;
    const rate = job.done / Math.max(seconds, 1e-3);
    this.post({
      type: 'photos',
      ...this.summary(),
      state,
      done: job.done,
      total: job.total,
      embedded: job.embedded,
      reused: job.reused,
      removed: job.removed,
      rate,
      eta: rate > 0 ? (job.total - job.done) / rate : null,
      paused: Boolean(job.paused),
    });
  }

  pause() {
    if (this.job && !this.job.paused) {
      let resume;
      const promise = new Promise((r) => { resume = r; });
      this.job.paused = { promise, resume };
      this.progress(this.job, 'indexing');
    }
  }

  resume() {
    const paused = this.job?.paused;
    if (paused) {
      this.job.paused = null;
      paused.resume();
    }
  }

  cancel() {
    if (!this.job) return;
    this.job.cancelled = true;
    this.resume();
  }

  // The searchable gallery of names (one row per name; names of the same bytes share the embedding).
  searchable() {
    if (this.dirty) {
      this.gallery?.free();
      this.gallery = null;
      this.ids = [...this.names.keys()].sort();
      if (this.ids.length) this.gallery = new this.wasm.WasmGallery(this.bundle(this.ids));
      this.dirty = false;
    }
    return this.gallery;
  }

  bundle(ids) {
    const first = this.photos.get(this.names.get(ids[0]).sha);
    const dim = first.values.length;
    const values = new Int8Array(ids.length * dim);
    const scales = new Float32Array(ids.length);
    ids.forEach((id, i) => {
      const photo = this.photos.get(this.names.get(id).sha);
      values.set(photo.values, i * dim);
      scales[i] = photo.scale;
    });
    return this.wasm.photoBundle(ids, values, scales, this.model);
  }

  search(query, k) {
    const gallery = this.searchable();
    if (!gallery) return [];
    return gallery.search(query, k).map((hit) => ({ ...hit, id: this.ids[hit.index] }));
  }

  row(path) {
    const gallery = this.searchable();
    const index = this.ids.indexOf(path);
    if (!gallery || index < 0) throw new Error(`我的图片中没有 ${path}`);
    return gallery.row(index);
  }

  thumbnail(path) {
    const name = this.names.get(path);
    return name ? this.store.thumbnail(name.sha) : null;
  }

  // The index as a bundle file (docs/bundle.md) that `tuwen search --bundle` reads.
  exportBundle() {
    if (!this.names.size) throw new Error('还没有可导出的图片');
    return this.bundle([...this.names.keys()].sort());
  }

  // A bundle from `tuwen index images` (same model) as photos: ids become names (no thumbnails; their
  // bytes are unknown, so the same files added later are embedded again).
  async importBundle(bytes, fileName) {
    if (this.job) throw new Error('正在索引：请等待完成或取消后再导入');
    const gallery = new this.wasm.WasmGallery(bytes);
    try {
      gallery.checkPhotos(this.model, fileName);
      const ids = gallery.ids;
      const photos = [];
      const names = [];
      for (let i = 0; i < ids.length; i++) {
        const row = gallery.storedRow(i);
        const sha = `imported:${await sha256Hex(new TextEncoder().encode(`${fileName}\n${ids[i]}`))}`;
        photos.push({ sha, values: row.values, scale: row.scale, thumbnail: new Blob([]) });
        row.free();
        names.push({ path: ids[i], sha, folder: `imported:${fileName}` });
      }
      for (const n of names) this.names.set(n.path, { sha: n.sha, folder: n.folder });
      try {
        await this.store.commit({ photos, names });
      } catch (e) {
        await this.open();
        throw storageError(e);
      }
      for (const p of photos) this.photos.set(p.sha, { values: p.values, scale: p.scale, bytes: 0 });
      this.dirty = true;
      await this.collectGarbage();
      return this.summary({ imported: ids.length });
    } finally {
      gallery.free();
    }
  }

  async forget() {
    this.cancel();
    this.store?.close();
    await forgetAll(this.model.fingerprint);
    this.photos = new Map();
    this.names = new Map();
    this.skipped = [];
    this.dirty = true;
    return this.open();
  }
}

const newBatch = () => ({ photos: [], names: [], started: performance.now() });

// A macrotask boundary: messages queued while a photo was embedded (queries) are handled before the next.
const nextTask = () => new Promise((resolve) => setTimeout(resolve, 0));

export async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

// Formats the crate does not read (AVIF; HEIC where the browser has it): the browser decodes, the crate
// resizes, normalises and thumbnails as for every other photo.
async function indexThroughBrowser(encoder, bytes, type, path) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(new Blob([bytes], { type }), { premultiplyAlpha: 'none', colorSpaceConversion: 'none' });
  } catch (e) {
    throw new Error('不是图片，或浏览器无法解码这种格式');
  }
  try {
    const { width, height } = bitmap;
    if (width > 16384 || height > 16384) throw new Error(`${width}×${height} 像素，超过每边 16384 的上限`);
    const canvas = new OffscreenCanvas(width, height);
    const context = canvas.getContext('2d', { willReadFrequently: true });
    context.drawImage(bitmap, 0, 0);
    const rgba = new Uint8Array(context.getImageData(0, 0, width, height).data.buffer);
    return await encoder.indexRgba(rgba, width, height, path);
  } finally {
    bitmap.close();
  }
}

function storageError(e) {
  if (e && (e.name === 'QuotaExceededError' || /quota/i.test(e.message || ''))) {
    return new Error('浏览器存储空间已满：已索引的图片仍可搜索；请清理空间（或清除我的图片）后继续。');
  }
  return new Error(`无法保存到浏览器存储（${e && e.message ? e.message : e}）：已保存的部分仍可搜索。`);
}
