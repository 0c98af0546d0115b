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
import { readdirSync, readFileSync, writeFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { CHROMIUM, chromiumArgs, serve, TUWEN } from '../tests/e2e/support.mjs';
import { option, median, textQuery, imageQuery, timed, LONG_TEXT } from './page_queries.mjs';
import { preparePeerSite, openPeerPage } from './ort_peer.mjs';

const site = path.resolve(option('site', 'site'));
const photos = path.resolve(option('photos', '../shared/data/teddy2024-sample/ImageData'));
const peers = option('peers', null);
const many = Number(option('many', '2000'));
const queries = Number(option('queries', '7'));
// --rates 0 skips the indexing rates (and the CLI and the peer): the query and memory measurements only.
const measureRates = option('rates', '1') !== '0';
const count = readdirSync(photos).length;
const work = mkdtempSync(path.join(tmpdir(), 'tuwen-photos-bench-'));

const load = loadavg()[0];
if (load > 0.6 && !process.argv.includes('--force')) {
  console.error(`the 1-minute load average is ${load.toFixed(2)}: something else is running (--force to run anyway)`);
  process.exit(2);
}

const step = (what) => console.error(`[${new Date().toISOString().slice(11, 19)}] ${what}`);

async function openPage(browser, server, threads) {
  step(`opening the page at ${threads} thread(s)`);
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
  step(`indexing ${dir} in the page`);
  const t0 = Date.now();
  await page.setInputFiles('#photos-input', dir);
  await page.waitForSelector('#photos-status[data-state="done"]', { timeout: 3_600_000 });
  const seconds = (Date.now() - t0) / 1000;
  const status = await page.$eval('#photos-status', (s) => ({ ...s.dataset }));
  return { seconds, embedded: Number(status.embedded), count: Number(status.count), skipped: Number(status.skipped) };
}

function nativeRate(threads) {
  step(`tuwen index images --threads ${threads}`);
  const out = path.join(work, `native-${threads}.bundle`);
  const t0 = Date.now();
  execFileSync(TUWEN, ['index', 'images', '--model', path.join(site, 'models/vision.gguf'), '--images', photos, '--threads', String(threads), '--out', out], { stdio: 'ignore' });
  const seconds = (Date.now() - t0) / 1000;
  rmSync(out, { force: true });
  return count / seconds;
}

// A query typed as a person types it (the page holds indexing meanwhile), timed from its submit.
const TYPED = '海边的日落和沙滩';
const TYPING_MS = 80;
async function typedQuery(page, i) {
  await page.fill('#text-query', '');
  await page.type('#text-query', `${TYPED}${i}`, { delay: TYPING_MS });
  return timed(page, () => page.evaluate(() => document.getElementById('text-form').requestSubmit()));
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
  for (const threads of measureRates ? [1, 2] : [2]) {
    const native = measureRates ? nativeRate(threads) : null;
    const { context, page } = await openPage(browser, server, threads);
    const badge = await page.textContent('#backend');
    await imageQuery(page, smallImage); // the vision tower loaded before the clock starts
    const idle = [];
    const idleTyped = [];
    for (let i = 0; i < queries; i++) idle.push((await textQuery(page, `${i}${LONG_TEXT}`)).total);
    for (let i = 0; i < queries; i++) idleTyped.push((await typedQuery(page, i)).total);
    // Indexing, with text queries sent while it runs (two threads only: the page's default on this machine).
    const indexing = indexFolder(page, photos);
    const busy = [];
    if (threads === 2) {
      await page.waitForFunction(() => Number(document.getElementById('photos-status').dataset.count) >= 8, null, { timeout: 600_000 });
      const busyTyped = [];
      for (let i = 0; i < queries; i++) {
        busy.push((await textQuery(page, `${i}忙${LONG_TEXT}`)).total);
        const typed = await typedQuery(page, i + queries);
        busyTyped.push(typed.total);
        step(`typed while indexing: ${JSON.stringify(typed)}`);
      }
      contention = { idle: median(idle), busy: median(busy), idleTyped: median(idleTyped), busyTyped: median(busyTyped), threads };
    }
    const result = await indexing;
    await context.close();
    let peer = null;
    if (peerSite && measureRates) {
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

  if (!many) {
    console.log(JSON.stringify(contention));
    await browser.close();
    server.stop();
    return;
  }
  // Memory over `many` distinct photos (2 threads): the generated gallery repeats itself after 270 images, so
  // each copy gets bytes after its end-of-image marker (decoders ignore them; the content hash differs).
  const manyDir = path.join(work, 'many');
  execFileSync(TUWEN, ['demo-gallery', '--out', manyDir, '--count', '270'], { stdio: 'ignore' });
  const distinct = path.join(work, 'distinct');
  mkdirSync(distinct);
  const generated = readdirSync(path.join(manyDir, 'images')).sort();
  for (let i = 0; i < many; i++) {
    const bytes = readFileSync(path.join(manyDir, 'images', generated[i % generated.length]));
    writeFileSync(path.join(distinct, `${i}.jpg`), Buffer.concat([bytes, Buffer.from(`copy ${i}`)]));
  }
  const { context, page } = await openPage(browser, server, 2);
  await imageQuery(page, smallImage);
  const before = await memory(page);
  const big = await indexFolder(page, distinct);
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
  for (const r of rows.filter(() => measureRates)) {
    const peerCells = r.peer ? `${r.peer.toFixed(0)} ms = ${(1000 / r.peer).toFixed(2)}/s | **${(r.page / (1000 / r.peer)).toFixed(2)}×**` : '— | —';
    console.log(`| ${r.threads} | ${r.badge} | ${r.page.toFixed(2)} (${r.result.embedded} in ${r.result.seconds.toFixed(1)} s, ${r.result.skipped} skipped) | ${r.native.toFixed(2)} | ${peerCells} |`);
  }
  console.log('');
  console.log(`Text queries (submit → rendered), ${contention.threads} threads, medians of ${queries}:`);
  console.log('');
  console.log('| query | idle ms | while indexing ms | ratio (goal ≤ 2×) |');
  console.log('|---|---|---|---|');
  console.log(`| typed (${TYPED.length} characters, ${TYPING_MS} ms apart), then submitted | ${contention.idleTyped.toFixed(0)} | ${contention.busyTyped.toFixed(0)} | **${(contention.busyTyped / contention.idleTyped).toFixed(2)}×** |`);
  console.log(`| 52 tokens set and submitted at once (no typing: waits for the photo in flight) | ${contention.idle.toFixed(0)} | ${contention.busy.toFixed(0)} | **${(contention.busy / contention.idle).toFixed(2)}×** |`);
  console.log('');
  const grown = after - before;
  console.log(`Memory (page + workers), ${big.embedded} generated photos indexed in ${big.seconds.toFixed(0)} s: ${(before / 1e6).toFixed(0)} MB with the model loaded → ${(after / 1e6).toFixed(0)} MB after, **${(grown / big.embedded / 1e3).toFixed(2)} KB per photo** (goal ≤ 1 KB per photo + 100 MB: ${(grown / 1e6).toFixed(0)} MB ≤ ${((big.embedded * 1e3 + 100e6) / 1e6).toFixed(0)} MB).`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
