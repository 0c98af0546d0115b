// "我的图片": the visitor adds a folder (input, drop, or the directory picker) or files; the worker indexes
// them on the page's engine and keeps them in IndexedDB. Nothing is uploaded: files go to the worker, the
// index to the origin's storage, and an export is a download.
import { $, el, formatBytes, formatSeconds, csvField, download } from './dom.js';
import { openStore } from './photo_store.js';

let ask = null;
let onChange = () => {};
let model = null;
let skippedCsv = '';
const files = new Map(); // path → File added in this visit: results open the full image
let summary = { count: 0 };

export const photoFile = (path) => files.get(path) || null;
export const photoCount = () => summary.count || 0;

// `options.ask(type, payload)`: a worker request; `options.changed(summary)`: after the searchable set changed.
export function initPhotos(options, manifest, initial) {
  ask = options.ask;
  onChange = options.changed;
  model = manifest.model;
  if (initial.unavailable) {
    setStatus('idle', 0, 0, initial.unavailable);
    return;
  }
  summary = initial;
  for (const id of ['photos-input', 'photos-files', 'photos-import', 'photos-forget', 'photos-export']) $(id).disabled = false;
  showSummary();
  wire();
  offerKeptFolder();
}

// Progress from the worker while indexing.
export function photoProgress(p) {
  summary = p;
  const bar = $('photos-bar');
  bar.max = Math.max(p.total, 1);
  bar.value = p.done;
  const parts = [`${p.done} / ${p.total}`, `${p.rate.toFixed(1)} 张/秒`];
  if (p.eta !== null && p.done < p.total) parts.push(`剩余约 ${formatSeconds(p.eta)}`);
  parts.push(`新索引 ${p.embedded}`, `跳过 ${p.skipped}`);
  if (p.paused) parts.push('已暂停');
  $('photos-progress-text').textContent = parts.join(' · ');
  $('photos-pause').textContent = p.paused ? '继续' : '暂停';
  if (p.state === 'indexing') setStatus('indexing', p.count, p.skipped, `正在索引：${p.count} 张可搜索`);
}

function setStatus(state, count, skipped, text) {
  const status = $('photos-status');
  status.dataset.state = state;
  status.dataset.count = String(count);
  status.dataset.skipped = String(skipped);
  status.textContent = text;
}

function showSummary(state = 'idle', extra = '') {
  const parts = [summary.count ? `我的图片：${summary.count} 张可搜索` : '还没有添加图片'];
  if (summary.skipped) parts.push(`跳过 ${summary.skipped} 个文件`);
  if (extra) parts.push(extra);
  setStatus(state, summary.count, summary.skipped || 0, parts.join(' · '));
  $('photos-export').disabled = !summary.count;
  showStorage();
}

async function showStorage() {
  const own = summary.storedBytes || 0;
  let text = summary.count ? `占用约 ${formatBytes(own)}` : '';
  if (navigator.storage?.estimate) {
    const { usage, quota } = await navigator.storage.estimate().catch(() => ({}));
    if (usage !== undefined) text += `${text ? '；' : ''}本站共用 ${formatBytes(usage)} / ${formatBytes(quota)}`;
  }
  if (navigator.storage?.persisted && (await navigator.storage.persisted().catch(() => false))) text += ' · 持久存储';
  $('photos-storage').textContent = text;
}

function wire() {
  $('photos-input').addEventListener('change', (e) => {
    const chosen = [...e.target.files];
    e.target.value = '';
    const entries = chosen.map((file) => ({ path: file.webkitRelativePath || file.name, file }));
    add(entries, topFolder(entries));
  });
  $('photos-files').addEventListener('change', (e) => {
    const chosen = [...e.target.files];
    e.target.value = '';
    add(chosen.map((file) => ({ path: file.name, file })), null);
  });
  const drop = $('photos-drop');
  drop.addEventListener('dragover', (e) => {
    e.preventDefault();
    drop.classList.add('over');
  });
  drop.addEventListener('dragleave', () => drop.classList.remove('over'));
  drop.addEventListener('drop', async (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    const roots = [...e.dataTransfer.items].map((item) => item.webkitGetAsEntry?.()).filter(Boolean);
    const entries = [];
    for (const root of roots) await walkEntry(root, entries);
    const folder = roots.length === 1 && roots[0].isDirectory ? roots[0].name : null;
    add(entries, folder);
  });
  if (self.showDirectoryPicker) {
    $('photos-pick').hidden = false;
    $('photos-pick').addEventListener('click', async () => {
      let handle;
      try {
        handle = await self.showDirectoryPicker({ id: 'tuwen-photos', mode: 'read' });
      } catch (e) {
        return; // the visitor closed the picker
      }
      await keepFolder(handle);
      await addHandle(handle);
    });
  }
  $('photos-pause').addEventListener('click', () => ask(summary.paused ? 'photosResume' : 'photosPause'));
  $('photos-cancel').addEventListener('click', () => ask('photosCancel'));
  $('photos-export').addEventListener('click', async () => {
    try {
      download(await ask('photosExport'), 'my-photos.bundle');
    } catch (e) {
      showSummary('idle', e.message);
    }
  });
  $('photos-import').addEventListener('change', async (e) => {
    const [file] = e.target.files;
    e.target.value = '';
    if (!file) return;
    try {
      const bytes = await file.arrayBuffer();
      summary = await ask('photosImport', { bytes, name: file.name }, [bytes]);
      showSummary('done', `已导入 ${summary.imported} 张（${file.name}）`);
      onChange(summary);
    } catch (e) {
      showSummary('idle', `无法导入 ${file.name}：${e.message}`);
    }
  });
  $('photos-forget').addEventListener('click', async () => {
    if (!confirm('删除本机保存的所有“我的图片”索引与缩略图？（原文件不受影响）')) return;
    summary = await ask('photosForget');
    files.clear();
    skippedCsv = '';
    $('photos-skipped').hidden = true;
    $('photos-resume-folder').hidden = true;
    showSummary('idle', '已清除');
    onChange(summary);
  });
}

// The top folder all paths share (a folder added again drops its names no longer in it), else null.
function topFolder(entries) {
  const first = entries[0]?.path.split('/')[0];
  if (!first || !entries.every((e) => e.path.includes('/') && e.path.split('/')[0] === first)) return null;
  return first;
}

function walkEntry(entry, out) {
  if (entry.isFile) {
    return new Promise((resolve) => entry.file((file) => {
      out.push({ path: entry.fullPath.replace(/^\//, ''), file });
      resolve();
    }, () => resolve()));
  }
  return new Promise((resolve) => {
    const reader = entry.createReader();
    const children = [];
    const more = () => reader.readEntries(async (batch) => {
      if (batch.length) {
        children.push(...batch);
        more();
        return;
      }
      for (const child of children) await walkEntry(child, out);
      resolve();
    }, () => resolve());
    more();
  });
}

async function walkHandle(handle, prefix, out) {
  for await (const child of handle.values()) {
    const path = `${prefix}/${child.name}`;
    if (child.kind === 'file') out.push({ path, file: await child.getFile() });
    else await walkHandle(child, path, out);
  }
}

async function addHandle(handle) {
  const entries = [];
  try {
    await walkHandle(handle, handle.name, entries);
  } catch (e) {
    showSummary('idle', `无法读取文件夹「${handle.name}」（${e.message}）：已索引的图片不受影响`);
    return;
  }
  await add(entries, handle.name);
}

async function keepFolder(handle) {
  try {
    const store = await openStore(model.fingerprint);
    await store.keepHandle(handle);
    store.close();
  } catch (e) {
    // Keeping the handle is a convenience; indexing goes on without it.
  }
}

// A folder picked in an earlier visit: one click continues or updates it, if the browser still allows.
async function offerKeptFolder() {
  if (!self.showDirectoryPicker) return;
  let handle;
  try {
    const store = await openStore(model.fingerprint);
    handle = await store.handle();
    store.close();
  } catch (e) {
    return;
  }
  if (!handle) return;
  const button = $('photos-resume-folder');
  button.textContent = `更新文件夹「${handle.name}」`;
  button.hidden = false;
  button.onclick = async () => {
    const permission = await handle.requestPermission({ mode: 'read' }).catch(() => 'denied');
    if (permission !== 'granted') {
      showSummary('idle', `浏览器未允许读取「${handle.name}」：请重新选择文件夹（已索引的图片不受影响）`);
      return;
    }
    await addHandle(handle);
  };
}

async function add(entries, folder) {
  if (!entries.length) return;
  for (const { path, file } of entries) files.set(path, file);
  // Asked once the visitor keeps photos here: persistent storage is not evicted under pressure.
  navigator.storage?.persist?.().catch(() => false);
  $('photos-progress').hidden = false;
  setStatus('indexing', summary.count, 0, `正在索引 ${entries.length} 个文件…`);
  let result;
  try {
    result = await ask('photosAdd', { entries, folder });
  } catch (e) {
    // What was committed before the failure stays searchable.
    summary = await ask('photosSummary').catch(() => summary);
    $('photos-progress').hidden = true;
    showSummary('done', e.message);
    onChange(summary);
    return;
  }
  summary = result;
  $('photos-progress').hidden = true;
  skippedCsv = ['path,reason', ...result.skippedList.map((s) => `${csvField(s.path)},${csvField(s.reason)}`)].join('\n');
  const link = $('photos-skipped');
  link.hidden = !result.skippedList.length;
  link.onclick = (e) => {
    e.preventDefault();
    download(new TextEncoder().encode(`${skippedCsv}\n`), 'tuwen-skipped.csv', 'text/csv');
  };
  const parts = [`新索引 ${result.embedded}`, `未变 ${result.reused}`];
  if (result.removed) parts.push(`移除 ${result.removed}`);
  if (result.state === 'cancelled') parts.push('已取消');
  showSummary('done', parts.join('，'));
  const status = $('photos-status');
  status.dataset.embedded = String(result.embedded);
  status.dataset.reused = String(result.reused);
  status.dataset.removed = String(result.removed);
  onChange(summary);
}
