// "我的图片" indexing in headless Chromium (a benchmark, not a test), side by side in one run:
// - the page's indexing rate on a folder (decode, thumbnail, embedding and IndexedDB storage included), at 1 and
//   2 threads, next to `tuwen index images --threads N` on the same files and to onnxruntime-web int8's vision
//   encoder alone on 224² pixels at the same threads (--peers, as in browser.mjs);
// - a text query while indexing runs against the same query idle;
// - the tab's memory (performance.measureUserAgentSpecificMemory: page + workers) before and after indexing
//   --many generated photos.
// Prints Markdown for BENCHMARKS.md.
//
//   node benches/photos.mjs --site site --photos ../shared/data/teddy2024-sample/ImageData [--peers out/onnx]
//                           [--many 2000] [--queries 7]
import { chromium } from 'playwright-core';
import { readdirSync, mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { CHROMIUM, chromiumArgs, serve, TUWEN } from '../tests/e2e/support.mjs';
import { option, median, textQuery, imageQuery, LONG_TEXT } from './page_queries.mjs';
import { preparePeerSite, openPeerPage } from './ort_peer.mjs';

const site = path.resolve(option('site', 'site'));
const photos = path.resolve(option('photos', '../shared/data/teddy2024-sample/ImageData'));
const peers = option('peers', null);
const many = Number(option('many', '2000'));
const queries = Number(option('queries', '7'));
const count = readdirSync(photos).length;
const work = mkdtempSync(path.join(tmpdir(), 'tuwen-photos-bench-'));

const load = loadavg()[0];
if (load > 0.6 && !process.argv.includes('--force')) {
  console.error(`the 1-minute load average is ${load.toFixed(2)}: something else is running (--force to run anyway)`);
  process.exit(2);
}

async function openPage(browser, server, threads) {
  // The memory API needs a cross-origin isolated page, and Chromium measures at its next GC unless asked now.
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error('page error:', e.message));
  await page.goto(`${server.url}?backend=cpu&threads=${threads}`);
  await page.waitForSelector('body[data-ready="true"]', { timeout: 300_000 });
  return { context, page };
}

// Indexes `dir` in the page; resolves to seconds from the input's change to the status saying done.
async function indexFolder(page, dir) {
  const t0 = Date.now();
  await page.setInputFiles('#photos-input', dir);
  await page.waitForSelector('#photos-status[data-state="done"]', { timeout: 3_600_000 });
  const seconds = (Date.now() - t0) / 1000;
  const status = await page.$eval('#photos-status', (s) => ({ ...s.dataset }));
  return { seconds, embedded: Number(status.embedded), count: Number(status.count), skipped: Number(status.skipped) };
}

function nativeRate(threads) {
  const out = path.join(work, `native-${threads}.bundle`);
  const t0 = Date.now();
  execFileSync(TUWEN, ['index', 'images', '--model', path.join(site, 'models/vision.gguf'), '--images', photos, '--threads', String(threads), '--out', out], { stdio: 'ignore' });
  const seconds = (Date.now() - t0) / 1000;
  rmSync(out, { force: true });
  return count / seconds;
}

async function memory(page) {
  return page.evaluate(async () => (await performance.measureUserAgentSpecificMemory()).bytes);
}

async function main() {
  const server = await serve(site);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [...chromiumArgs({ webgpu: false }), '--enable-blink-features=ForceEagerMeasureMemory'],
  });
  const peerSite = peers ? preparePeerSite(work, peers) : null;
  const small = path.join(work, 'small');
  execFileSync(TUWEN, ['demo-gallery', '--out', small, '--count', '5'], { stdio: 'ignore' });
  const smallImage = path.join(small, 'images', 'demo-0004.jpg'); // 224×224
  const rows = [];
  let contention = null;
  for (const threads of [1, 2]) {
    const native = nativeRate(threads);
    const { context, page } = await openPage(browser, server, threads);
    const badge = await page.textContent('#backend');
    await imageQuery(page, smallImage); // the vision tower loaded before the clock starts
    const idle = [];
    for (let i = 0; i < queries; i++) idle.push((await textQuery(page, `${i}${LONG_TEXT}`)).total);
    // Indexing, with text queries sent while it runs (two threads only: the page's default on this machine).
    const indexing = indexFolder(page, photos);
    const busy = [];
    if (threads === 2) {
      await page.waitForFunction(() => Number(document.getElementById('photos-status').dataset.count) >= 8, null, { timeout: 600_000 });
      for (let i = 0; i < queries; i++) busy.push((await textQuery(page, `${i}忙${LONG_TEXT}`)).total);
      contention = { idle: median(idle), busy: median(busy), threads };
    }
    const result = await indexing;
    await context.close();
    let peer = null;
    if (peerSite) {
      const session = await openPeerPage(peerSite, '-int8', threads);
      try {
        await session.time('vision', 2);
        peer = median(await session.time('vision', 9));
      } finally {
        await session.close();
      }
    }
    rows.push({ threads, badge, page: result.embedded / result.seconds, result, native, peer });
  }

  // Memory over `many` generated photos (2 threads).
  const manyDir = path.join(work, 'many');
  execFileSync(TUWEN, ['demo-gallery', '--out', manyDir, '--count', String(many)], { stdio: 'ignore' });
  const { context, page } = await openPage(browser, server, 2);
  await imageQuery(page, smallImage);
  const before = await memory(page);
  const big = await indexFolder(page, path.join(manyDir, 'images'));
  const after = await memory(page);
  await context.close();
  const version = browser.version();
  await browser.close();
  server.stop();
  rmSync(work, { recursive: true, force: true });

  console.log(`Chromium ${version} headless, ${cpus().length} cores (${cpus()[0].model}), load average ${load.toFixed(2)} at start; ${count} photos from ${photos}.`);
  console.log('');
  console.log('| threads | page build | page: photos/s (decode + thumbnail + embed + store) | `tuwen index images` photos/s | ORT-web int8 vision alone, 224² | page ÷ ORT-web rate (goal ≥ 1.25) |');
  console.log('|---|---|---|---|---|---|');
  for (const r of rows) {
    const peerCells = r.peer ? `${r.peer.toFixed(0)} ms = ${(1000 / r.peer).toFixed(2)}/s | **${(r.page / (1000 / r.peer)).toFixed(2)}×**` : '— | —';
    console.log(`| ${r.threads} | ${r.badge} | ${r.page.toFixed(2)} (${r.result.embedded} in ${r.result.seconds.toFixed(1)} s, ${r.result.skipped} skipped) | ${r.native.toFixed(2)} | ${peerCells} |`);
  }
  console.log('');
  console.log(`A 52-token text query (query → rendered), ${contention.threads} threads, median of ${queries}: idle ${contention.idle.toFixed(0)} ms, while indexing ${contention.busy.toFixed(0)} ms (**${(contention.busy / contention.idle).toFixed(2)}×**, goal ≤ 2×).`);
  console.log('');
  const grown = after - before;
  console.log(`Memory (page + workers), ${big.embedded} generated photos indexed in ${big.seconds.toFixed(0)} s: ${(before / 1e6).toFixed(0)} MB with the model loaded → ${(after / 1e6).toFixed(0)} MB after, **${(grown / big.embedded / 1e3).toFixed(2)} KB per photo** (goal ≤ 1 KB per photo + 100 MB: ${(grown / 1e6).toFixed(0)} MB ≤ ${((big.embedded * 1e3 + 100e6) / 1e6).toFixed(0)} MB).`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
