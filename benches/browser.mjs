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
// model as the site) also runs onnxruntime-web int8 (npm, `npm install --no-save onnxruntime-web`) beside
// tuwen, the two pages open at once and taking turns (ratios per round: the host drifts): one thread as on
// GitHub Pages, and two threads on a cross-origin-isolated server (COOP/COEP) against tuwen's threaded build
// (the page isolated through its service worker); a 52-token text and a 224×224 image. Its fp32 towers are
// timed once more on their own, at one thread.
import { chromium } from 'playwright-core';
import { readFileSync, readdirSync, mkdtempSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { CHROMIUM, chromiumArgs, serve, ROOT, TUWEN } from '../tests/e2e/support.mjs';
import { LONG_TEXT, args, option, median, textQuery, imageQuery } from './page_queries.mjs';
import { preparePeerSite, openPeerPage } from './ort_peer.mjs';

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
  // The encoders alone at 1 and 2 threads against onnxruntime-web, taking turns (see `compareWithPeer`).
  const comparisons = [];
  const peerSite = peers ? preparePeerSite(work, peers) : null;
  if (peers) for (const threads of [1, 2]) comparisons.push(await compareWithPeer(browser, server, peerSite, small, threads));
  const version = browser.version();
  await browser.close();
  server.stop();
  const fp32Row = peers ? await peerAlone(peerSite, '') : null;
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
    console.log(`Encoder alone against onnxruntime-web ${peerSite.version} int8 (dynamic), taking turns: ${runs} rounds, each ${PER_TURN} runs of one engine then ${PER_TURN} of the other (the order swapped every round), text then image; ms are medians of every run, the ratio (tuwen ÷ onnxruntime-web) the median of the rounds' ratios, its range in brackets. Text: 52 tokens; image: 224×224, decode included for tuwen.`);
    console.log('');
    console.log('| threads | tuwen | text: tuwen ms | ORT-web ms | tuwen ÷ ORT-web | image: tuwen ms | ORT-web ms | tuwen ÷ ORT-web |');
    console.log('|---|---|---|---|---|---|---|---|');
    const ratio = (r) => `**${median(r).toFixed(2)}×** (${Math.min(...r).toFixed(2)}–${Math.max(...r).toFixed(2)})`;
    for (const c of comparisons) {
      console.log(`| ${c.threads} | ${c.badge} | ${median(c.text.tuwen).toFixed(0)} | ${median(c.text.peer).toFixed(0)} | ${ratio(c.text.ratios)} | ${median(c.image.tuwen).toFixed(0)} | ${median(c.image.peer).toFixed(0)} | ${ratio(c.image.ratios)} |`);
    }
    console.log('');
    console.log(`onnxruntime-web fp32, 1 thread, on its own (median of ${runs}): text ${fp32Row.text.toFixed(0)} ms, image ${fp32Row.vision.toFixed(0)} ms.`);
  }
}

// Runs of one engine per turn: several, so that a turn is not one outlier; few, so that turns alternate
// often enough for both engines to see the same machine.
const PER_TURN = 3;

// tuwen's page and onnxruntime-web's side by side at `threads`, both warm, taking turns: the host's speed
// drifts by 2× over minutes (VMs), and blocks run minutes apart compared different machines. Each round's
// ratio compares two engines measured within seconds of each other.
async function compareWithPeer(browser, server, peerSite, small, threads) {
  const own = await browser.newContext();
  const page = await own.newPage();
  await page.goto(`${server.url}?backend=cpu&simd=${simdChoice}&threads=${threads}`);
  await page.waitForSelector('body[data-ready="true"]', { timeout: 300_000 });
  await textQuery(page, LONG_TEXT);
  await imageQuery(page, small);
  const peer = await openPeerPage(peerSite, '-int8', threads);
  // Each text query is new (prefixed with its round and run), so that no cache can answer it.
  const tuwen = {
    text: async (round, n) => { const t = []; for (let i = 0; i < n; i++) t.push((await textQuery(page, `${round * n + i}${LONG_TEXT}`)).encode); return t; },
    vision: async (round, n) => { const t = []; for (let i = 0; i < n; i++) t.push((await imageQuery(page, small)).encode); return t; },
  };
  const result = { threads, badge: await page.textContent('#backend'), text: { tuwen: [], peer: [], ratios: [] }, image: { tuwen: [], peer: [], ratios: [] } };
  try {
    for (let round = 0; round < runs; round++) {
      for (const [tower, into] of [['text', result.text], ['vision', result.image]]) {
        const turns = { tuwen: () => tuwen[tower](round, PER_TURN), peer: () => peer.time(tower, PER_TURN) };
        const times = {};
        for (const engine of round % 2 ? ['peer', 'tuwen'] : ['tuwen', 'peer']) times[engine] = await turns[engine]();
        into.tuwen.push(...times.tuwen);
        into.peer.push(...times.peer);
        into.ratios.push(median(times.tuwen) / median(times.peer));
      }
    }
  } finally {
    await peer.close();
    await own.close();
  }
  return result;
}

// onnxruntime-web alone at one thread (its fp32 towers, for reference): `runs` text runs, then `runs` image runs.
async function peerAlone(peerSite, suffix) {
  const peer = await openPeerPage(peerSite, suffix, 1);
  try {
    return { text: median(await peer.time('text', runs)), vision: median(await peer.time('vision', runs)) };
  } finally {
    await peer.close();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
