// The page's latency in headless Chromium (a benchmark, not a test): cold load, first text and image
// query (tower download + load), then warm query latency, end to end as a user sees it (query → rendered
// results) and the worker's encode/search split. Prints a Markdown table for BENCHMARKS.md.
//
//   node benches/browser.mjs --site site [--runs 15] [--images DIR] [--peers out/onnx] [--backend auto|cpu|gpu]
//                            [--simd auto|relaxed|simd128] [--threads auto|N]
//
// Build the site first (./build.sh builds the demo site into site/). Run on an idle machine: the script
// refuses to start when the 1-minute load average says something else is running (--force to override).
//
// --peers DIR (text.onnx, text-int8.onnx, vision.onnx, vision-int8.onnx from scripts/export_onnx.py, same
// model as the site) also runs onnxruntime-web (npm, `npm install --no-save onnxruntime-web`) in the same
// browser: one thread as on GitHub Pages, and two threads on a cross-origin-isolated server (COOP/COEP),
// next to tuwen's encode time for a 52-token text and a 224×224 image at 1 thread (?threads=1) and at 2
// (the threaded build, the page isolated through its service worker).
import { chromium } from 'playwright-core';
import { cpSync, linkSync, readFileSync, readdirSync, mkdtempSync, mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { CHROMIUM, chromiumArgs, serve, ROOT, TUWEN } from '../tests/e2e/support.mjs';
import { LONG_TEXT, args, option, median, textQuery, imageQuery } from './page_queries.mjs';

const site = path.resolve(option('site', path.join(ROOT, 'site')));
const runs = Number(option('runs', '15'));
const manifest = JSON.parse(readFileSync(path.join(site, 'manifest.json'), 'utf8'));
const imagesDir = option('images', null);
const peers = option('peers', null);
// The page's ?backend=: `gpu` runs the encoders on WebGPU even on a CPU-emulated adapter (SwiftShader here).
const backendChoice = option('backend', 'auto');
// The page's ?simd=: `auto` (its probe decides), `relaxed` or `simd128`.
const simdChoice = option('simd', 'auto');
// The page's ?threads=: how many WASM threads at most (auto: every core, where the page is isolated).
const threadsChoice = option('threads', 'auto');

const load = loadavg()[0];
if (load > 0.6 && !args.includes('--force')) {
  console.error(`the 1-minute load average is ${load.toFixed(2)}: something else is running and would distort the timings (--force to run anyway)`);
  process.exit(2);
}

// Query images: the gallery's own files when --images is given, else its thumbnails.
const queryImages = imagesDir
  ? readdirSync(imagesDir).filter((f) => /\.(jpe?g|png|webp)$/i.test(f)).sort().slice(0, runs + 1).map((f) => path.join(imagesDir, f))
  : Array.from({ length: Math.min(runs + 1, manifest.images.count) }, (_, i) => path.join(site, 'thumbnails', `${i}.jpg`));

async function main() {
  const server = await serve(site);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: chromiumArgs({ webgpu: true }) });
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error('page error:', e.message));
  const t0 = Date.now();
  await page.goto(`${server.url}?backend=${backendChoice}&simd=${simdChoice}&threads=${threadsChoice}`);
  await page.waitForSelector('body[data-ready="true"]', { timeout: 300_000 });
  const ready = Date.now() - t0;
  const backend = `${await page.textContent('#backend')} (${await page.textContent('.backend-reason')})`;
  const examples = manifest.examples.length ? manifest.examples : ['一只猫坐在窗台上'];
  const firstText = await textQuery(page, examples[0]);
  const warmText = [];
  for (let i = 0; i < runs; i++) warmText.push(await textQuery(page, `${examples[(i + 1) % examples.length]}${i}`));
  const firstImage = await imageQuery(page, queryImages[0]);
  const warmImage = [];
  for (let i = 0; i < runs; i++) warmImage.push(await imageQuery(page, queryImages[(i + 1) % queryImages.length]));
  // A reload: everything comes from the Cache API.
  const t1 = Date.now();
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]', { timeout: 300_000 });
  const reloadReady = Date.now() - t1;
  const reloadText = await textQuery(page, examples[0]);
  // Model cost alone: a 52-token text and a 224×224 image (no large-JPEG decode), as the peers measure.
  const work = mkdtempSync(path.join(tmpdir(), 'tuwen-bench-'));
  execFileSync(TUWEN, ['demo-gallery', '--out', work, '--count', '5'], { stdio: 'ignore' });
  const small = path.join(work, 'images', 'demo-0004.jpg'); // 224×224
  const longText = [];
  const smallImage = [];
  for (let i = 0; i < runs; i++) longText.push(await textQuery(page, `${i}${LONG_TEXT}`));
  for (let i = 0; i < runs; i++) smallImage.push(await imageQuery(page, small));
  // The encoders alone at 1 and 2 threads, each in a fresh context, for the table next to the peers.
  const encoderRows = [];
  if (peers) {
    for (const threads of [1, 2]) {
      const own = await browser.newContext();
      const p = await own.newPage();
      await p.goto(`${server.url}?backend=cpu&simd=${simdChoice}&threads=${threads}`);
      await p.waitForSelector('body[data-ready="true"]', { timeout: 300_000 });
      await textQuery(p, LONG_TEXT);
      await imageQuery(p, small);
      const [texts, images] = [[], []];
      for (let i = 0; i < runs; i++) texts.push((await textQuery(p, `${i}${LONG_TEXT}`)).encode);
      for (let i = 0; i < runs; i++) images.push((await imageQuery(p, small)).encode);
      encoderRows.push({ badge: await p.textContent('#backend'), threads, text: median(texts), vision: median(images) });
      await own.close();
    }
  }
  const version = browser.version();
  await browser.close();
  server.stop();
  const peerRows = peers ? await runPeers(work) : [];
  rmSync(work, { recursive: true, force: true });

  const mb = (a) => (a.bytes / 1e6).toFixed(1);
  const row = (name, xs) => `| ${name} | ${median(xs.map((x) => x.total)).toFixed(0)} | ${median(xs.map((x) => x.encode)).toFixed(0)} | ${median(xs.map((x) => x.search)).toFixed(2)} | ${median(xs.map((x) => x.render)).toFixed(0)} |`;
  console.log(`Chromium ${version} headless, ${cpus().length} cores (${cpus()[0].model}), load average ${load.toFixed(2)} at start.`);
  console.log(`Site: ${manifest.model.name} ${manifest.model.dtype}${manifest.model.random_weights ? ' (random weights)' : ''}; text tower ${mb(manifest.towers.text)} MB, vision tower ${mb(manifest.towers.vision)} MB, wasm ${mb(manifest.wasm)} MB; gallery ${manifest.images.count} images / ${manifest.texts.count} captions. Backend: ${backend}. Served from 127.0.0.1.`);
  console.log('');
  console.log('| step | ms |');
  console.log('|---|---|');
  console.log(`| cold load: page → ready (wasm + both bundles downloaded) | ${ready} |`);
  console.log(`| first text query (text tower download + load + encode + search + render) | ${firstText.total.toFixed(0)} |`);
  console.log(`| first image query (vision tower download + load + encode + search + render) | ${firstImage.total.toFixed(0)} |`);
  console.log(`| reload → ready (everything from the Cache API) | ${reloadReady} |`);
  console.log(`| first text query after the reload (tower from the cache) | ${reloadText.total.toFixed(0)} |`);
  console.log('');
  console.log(`Warm queries, median of ${runs}:`);
  console.log('');
  console.log('| query | total ms (query → rendered) | encode ms | search ms | render ms (to the next frame) |');
  console.log('|---|---|---|---|---|');
  console.log(row('text → images', warmText));
  console.log(row('image → captions + images', warmImage));
  console.log(row('text of 52 tokens → images', longText));
  console.log(row('224×224 image → captions + images', smallImage));
  if (peers) {
    console.log('');
    console.log(`Encoder alone, median of ${runs} (text: 52 tokens; image: 224×224, decode included for tuwen), same browser:`);
    console.log('');
    console.log('| engine | weights | threads | text ms | image ms |');
    console.log('|---|---|---|---|---|');
    for (const r of encoderRows) console.log(`| tuwen (${r.badge}) | q8_0 | ${r.threads} | ${r.text.toFixed(0)} | ${r.vision.toFixed(0)} |`);
    for (const r of peerRows) console.log(`| onnxruntime-web ${r.version} (wasm) | ${r.weights} | ${r.threads} | ${r.text.toFixed(0)} | ${r.vision.toFixed(0)} |`);
  }
}

// onnxruntime-web on the exported ONNX towers: a page that times InferenceSession.run.
const PEER_PAGE = `<!doctype html><meta charset="utf-8"><title>onnxruntime-web peer</title>
<script type="module">
import * as ort from './ort/ort.wasm.min.mjs';
ort.env.wasm.wasmPaths = new URL('./ort/', location.href).href;
window.runPeer = async (file, tower, runs, threads) => {
  ort.env.wasm.numThreads = threads;
  const session = await ort.InferenceSession.create(file, { executionProviders: ['wasm'] });
  const feeds = tower === 'text'
    ? { input_ids: new ort.Tensor('int64', BigInt64Array.from({ length: 52 }, (_, i) => BigInt(i === 0 ? 101 : i === 51 ? 102 : 1000 + i * 37)), [1, 52]),
        attention_mask: new ort.Tensor('int64', new BigInt64Array(52).fill(1n), [1, 52]) }
    : { pixel_values: new ort.Tensor('float32', Float32Array.from({ length: 3 * 224 * 224 }, (_, i) => Math.sin(i) * 1.5), [1, 3, 224, 224]) };
  await session.run(feeds);
  const times = [];
  for (let i = 0; i < runs; i++) { const t = performance.now(); await session.run(feeds); times.push(performance.now() - t); }
  await session.release();
  times.sort((a, b) => a - b);
  return { median: times[Math.floor(times.length / 2)], isolated: self.crossOriginIsolated };
};
window.peerReady = true;
</script>`;

async function runPeers(work) {
  const dir = path.join(work, 'peer');
  mkdirSync(path.join(dir, 'models'), { recursive: true });
  writeFileSync(path.join(dir, 'index.html'), PEER_PAGE);
  // Copies and hard links, not symlinks: `tuwen serve` refuses links that lead out of the folder it serves.
  cpSync(path.join(ROOT, 'node_modules/onnxruntime-web/dist'), path.join(dir, 'ort'), { recursive: true });
  for (const f of ['text.onnx', 'text-int8.onnx', 'vision.onnx', 'vision-int8.onnx']) {
    try {
      linkSync(path.resolve(peers, f), path.join(dir, 'models', f));
    } catch {
      cpSync(path.resolve(peers, f), path.join(dir, 'models', f)); // another file system
    }
  }
  const version = JSON.parse(readFileSync(path.join(ROOT, 'node_modules/onnxruntime-web/package.json'), 'utf8')).version;
  const rows = [];
  for (const [weights, suffix, threads] of [['int8 (dynamic)', '-int8', 1], ['fp32', '', 1], ['int8 (dynamic)', '-int8', 2]]) {
    const server = await serve(dir, { isolated: threads > 1 });
    const browser = await chromium.launch({ executablePath: CHROMIUM, args: chromiumArgs({ webgpu: false }) });
    try {
      const page = await browser.newPage();
      page.on('pageerror', (e) => console.error('peer page error:', e.message));
      await page.goto(server.url);
      await page.waitForFunction(() => window.peerReady === true);
      const text = await page.evaluate(([f, r, t]) => window.runPeer(f, 'text', r, t), [`models/text${suffix}.onnx`, runs, threads]);
      const vision = await page.evaluate(([f, r, t]) => window.runPeer(f, 'vision', r, t), [`models/vision${suffix}.onnx`, runs, threads]);
      if (threads > 1 && !text.isolated) throw new Error('the peer page is not cross-origin isolated: no wasm threads');
      rows.push({ version, weights, threads, text: text.median, vision: vision.median });
    } finally {
      await browser.close();
      server.stop();
    }
  }
  return rows;
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
