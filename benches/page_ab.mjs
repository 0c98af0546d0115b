// Two builds of the page, side by side in one headless Chromium: their encoders timed alternately, query by
// query, so that a machine whose speed drifts (a VM's neighbours) moves both alike. For changes to the wasm
// kernels, whose effect is smaller than the drift between two runs of benches/browser.mjs.
//
//   node benches/page_ab.mjs --a SITE --b SITE [--rounds 9] [--simd auto|relaxed|simd128] [--threads 1]
//                            [--simd-a auto|relaxed|simd128] [--simd-b …]   (one site, two wasm builds)
//                            [--threads-a N] [--threads-b N]                   (one site, two thread counts)
//                            [--text TEXT]                                     (instead of the 52-token text)
//
// Each round runs on A then B (B then A on odd rounds) a 52-token text (or --text) and a 224×224 image; prints each
// build's median encode ms and B ÷ A per round with its median. Warm queries only (one of each first).
import { chromium } from 'playwright-core';
import { mkdtempSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { CHROMIUM, chromiumArgs, serve, TUWEN } from '../tests/e2e/support.mjs';
import { LONG_TEXT, option, median, textQuery, imageQuery } from './page_queries.mjs';

const sites = { A: option('a', null), B: option('b', null) };
if (!sites.A || !sites.B) throw new Error('usage: page_ab.mjs --a SITE --b SITE [--rounds N] [--simd auto|relaxed|simd128] [--threads N]');
const rounds = Number(option('rounds', '9'));
const simd = option('simd', 'auto');
const threads = option('threads', '1');
// A query's text is prefixed with the round's number, so that no page can answer from a cache.
const text = option('text', LONG_TEXT);
const queries = Object.fromEntries(['A', 'B'].map((name) => [name,
  `backend=cpu&simd=${option(`simd-${name.toLowerCase()}`, simd)}&threads=${option(`threads-${name.toLowerCase()}`, threads)}`]));

const work = mkdtempSync(path.join(tmpdir(), 'tuwen-ab-'));
execFileSync(TUWEN, ['demo-gallery', '--out', work, '--count', '5'], { stdio: 'ignore' });
const image = path.join(work, 'images', 'demo-0004.jpg'); // 224×224

const servers = {};
const pages = {};
const browser = await chromium.launch({ executablePath: CHROMIUM, args: chromiumArgs({ webgpu: false }) });
try {
  for (const name of ['A', 'B']) {
    servers[name] = await serve(path.resolve(sites[name]));
    pages[name] = await (await browser.newContext()).newPage();
    pages[name].on('pageerror', (e) => console.error(`page ${name} error:`, e.message));
    await pages[name].goto(`${servers[name].url}?${queries[name]}`);
    await pages[name].waitForSelector('body[data-ready="true"]', { timeout: 300_000 });
    await textQuery(pages[name], text);
    await imageQuery(pages[name], image);
  }
  console.log(`Chromium headless, ${cpus().length} cores (${cpus()[0].model}), load ${loadavg()[0].toFixed(2)}`);
  for (const name of ['A', 'B']) console.log(`${name}: ${sites[name]}?${queries[name]} — ${await pages[name].textContent('#backend')}`);
  const times = { A: { text: [], image: [] }, B: { text: [], image: [] } };
  for (let round = 0; round < rounds; round++) {
    for (const name of round % 2 ? ['B', 'A'] : ['A', 'B']) {
      times[name].text.push((await textQuery(pages[name], `${round}${text}`)).encode);
      times[name].image.push((await imageQuery(pages[name], image)).encode);
    }
  }
  console.log('\n| measure | A ms (median) | B ms (median) | B ÷ A per round | median |\n|---|---|---|---|---|');
  for (const kind of ['text', 'image']) {
    const ratios = times.A[kind].map((a, i) => times.B[kind][i] / a);
    const label = kind === 'image' ? '224×224 image' : text === LONG_TEXT ? '52-token text' : `text «${text}»`;
    console.log(`| ${label} | ${median(times.A[kind]).toFixed(0)} | ${median(times.B[kind]).toFixed(0)} | ` +
      `${ratios.map((r) => r.toFixed(2)).join(', ')} | **${median(ratios).toFixed(2)}** |`);
  }
} finally {
  await browser.close();
  for (const s of Object.values(servers)) s.stop();
}
