// onnxruntime-web as the benchmarks' peer: a page of its own that times InferenceSession.run on the ONNX towers
// of scripts/export_onnx.py (npm: `npm install --no-save onnxruntime-web`). Used by browser.mjs and photos.mjs.
import { chromium } from 'playwright-core';
import { cpSync, linkSync, readFileSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { CHROMIUM, chromiumArgs, serve, ROOT } from '../tests/e2e/support.mjs';

// onnxruntime-web on the exported ONNX towers: a page that times InferenceSession.run.
const PEER_PAGE = `<!doctype html><meta charset="utf-8"><title>onnxruntime-web peer</title>
<script type="module">
import * as ort from './ort/ort.wasm.min.mjs';
ort.env.wasm.wasmPaths = new URL('./ort/', location.href).href;
// Sessions stay open between turns: timePeer runs one of them a number of times and returns each time.
const sessions = {};
const feedsFor = (tower) => tower === 'text'
  ? { input_ids: new ort.Tensor('int64', BigInt64Array.from({ length: 52 }, (_, i) => BigInt(i === 0 ? 101 : i === 51 ? 102 : 1000 + i * 37)), [1, 52]),
      attention_mask: new ort.Tensor('int64', new BigInt64Array(52).fill(1n), [1, 52]) }
  : { pixel_values: new ort.Tensor('float32', Float32Array.from({ length: 3 * 224 * 224 }, (_, i) => Math.sin(i) * 1.5), [1, 3, 224, 224]) };
window.openPeer = async (file, tower, threads) => {
  ort.env.wasm.numThreads = threads;
  sessions[tower] = await ort.InferenceSession.create(file, { executionProviders: ['wasm'] });
  await sessions[tower].run(feedsFor(tower));
  return self.crossOriginIsolated;
};
window.timePeer = async (tower, runs) => {
  const feeds = feedsFor(tower);
  const times = [];
  for (let i = 0; i < runs; i++) { const t = performance.now(); await sessions[tower].run(feeds); times.push(performance.now() - t); }
  return times;
};
window.peerReady = true;
</script>`;

// The peer's folder: its page, onnxruntime-web's files and the ONNX towers.
export function preparePeerSite(work, peers) {
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
  return { dir, version };
}

// onnxruntime-web's page with both towers open, on a server of its own (cross-origin isolated for threads).
export async function openPeerPage(peerSite, suffix, threads) {
  const server = await serve(peerSite.dir, { isolated: threads > 1 });
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: chromiumArgs({ webgpu: false }) });
  const close = async () => {
    await browser.close();
    server.stop();
  };
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error('peer page error:', e.message));
  try {
    await page.goto(server.url);
    await page.waitForFunction(() => window.peerReady === true);
    for (const tower of ['text', 'vision']) {
      const isolated = await page.evaluate(([f, t, n]) => window.openPeer(f, t, n), [`models/${tower}${suffix}.onnx`, tower, threads]);
      if (threads > 1 && !isolated) throw new Error('the peer page is not cross-origin isolated: no wasm threads');
    }
  } catch (e) {
    await close();
    throw e;
  }
  return { time: (tower, n) => page.evaluate(([t, r]) => window.timePeer(t, r), [tower, n]), close };
}

