// "我的图片" end to end: a folder of generated photos, photos of the Teddy sample (when ../shared has it) and bad
// files is indexed in the page; its scores are checked against the native CLI (`tuwen index images` +
// `tuwen search --bundle`) on the same files; the index survives a reload, is incremental by content, resumes
// after a closed tab, exports to the CLI, imports only from the same model, works offline, and is forgotten on
// request — and no request other than GET/HEAD to the page's own origin is made meanwhile.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync, mkdirSync, copyFileSync, writeFileSync, readFileSync, readdirSync, renameSync, unlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { ROOT, TUWEN, CHROMIUM, chromiumArgs, serve } from './support.mjs';

const work = mkdtempSync(path.join(tmpdir(), 'tuwen-photos-'));
const album = path.join(work, 'album'); // the folder the visitor adds (its name is the paths' first part)
const site = path.join(work, 'site');
const bareSite = path.join(work, 'bare-site');
const SAMPLE = path.resolve(ROOT, '../shared/data/teddy2024-sample/ImageData');
const TINY = path.join(ROOT, 'tests/fixtures/tiny');
const MARKUP_NAME = '<b>粗体&amp;<img src=x>\u0007名字.jpg';
const BAD = { 'notes.txt': '不是图片', 'empty.jpg': '空文件', 'truncated.jpg': 'truncated', 'huge.gif': '16384' };

let server;
let bareServer;
let browser;
const requests = []; // every request any page made: { method, url }

// TUWEN_SCREENSHOTS=DIR saves the README's shots of the page mid-indexing and of a search over one's photos.
async function snap(page, name) {
  const dir = process.env.TUWEN_SCREENSHOTS;
  if (!dir) return;
  mkdirSync(dir, { recursive: true });
  await page.evaluate(() => document.querySelectorAll('img').forEach((i) => { i.loading = 'eager'; }));
  await page.waitForFunction(() => [...document.images].every((i) => i.complete));
  await page.screenshot({ path: path.join(dir, `${name}.png`), fullPage: true });
}

const tuwen = (...args) => execFileSync(TUWEN, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });

function cliSearch(bundle, query, k) {
  const tower = query[0] === '--text' ? 'text' : 'vision';
  const out = tuwen('search', '--model', path.join(site, 'models', `${tower}.gguf`), '--bundle', bundle, '-k', String(k), ...query);
  return out.trim().split('\n').filter(Boolean).map((line) => {
    const [rank, id, score] = line.split('\t');
    return { rank: Number(rank), id, score: Number(score) };
  });
}

// A GIF header declaring 20000×20000 pixels: refused from the header, nothing allocated.
function hugeGif() {
  const bytes = Buffer.alloc(35);
  bytes.write('GIF89a', 0, 'latin1');
  bytes.writeUInt16LE(20000, 6);
  bytes.writeUInt16LE(20000, 8);
  return bytes;
}

function makeAlbum() {
  const generated = path.join(work, 'generated');
  tuwen('demo-gallery', '--out', generated, '--count', '24');
  const images = path.join(generated, 'images');
  mkdirSync(path.join(album, 'trip'), { recursive: true });
  const names = readdirSync(images).sort();
  names.slice(0, 10).forEach((n) => copyFileSync(path.join(images, n), path.join(album, n)));
  names.slice(10, 16).forEach((n) => copyFileSync(path.join(images, n), path.join(album, 'trip', n)));
  // The same bytes under a second name: embedded once, both names searchable.
  copyFileSync(path.join(images, names[0]), path.join(album, 'trip', 'copy-of-first.jpg'));
  copyFileSync(path.join(images, names[1]), path.join(album, MARKUP_NAME));
  if (existsSync(SAMPLE)) {
    // Real photos in several colour modes (L, P, RGBA, RGB) and sizes up to thousands of pixels.
    readdirSync(SAMPLE).sort().slice(0, 6).forEach((n) => copyFileSync(path.join(SAMPLE, n), path.join(album, `sample-${n}`)));
  } else {
    console.log('# ../shared/data/teddy2024-sample is absent: the album has generated photos only');
  }
  writeFileSync(path.join(album, 'notes.txt'), '这不是图片\n');
  writeFileSync(path.join(album, 'empty.jpg'), '');
  const jpeg = readFileSync(path.join(images, names[2]));
  writeFileSync(path.join(album, 'truncated.jpg'), jpeg.subarray(0, Math.floor(jpeg.length / 2)));
  writeFileSync(path.join(album, 'huge.gif'), hugeGif());
  return { spare: names.slice(16).map((n) => path.join(images, n)) };
}

let spare;

before(async () => {
  for (const needed of [TUWEN, path.join(ROOT, 'pkg/tuwen_bg.wasm')]) {
    if (!existsSync(needed)) throw new Error(`${needed} is missing: run ./build.sh test (it builds the CLI and pkg/)`);
  }
  ({ spare } = makeAlbum());
  const gallery = path.join(work, 'gallery');
  tuwen('demo-gallery', '--out', gallery, '--count', '12');
  const common = ['--www', path.join(ROOT, 'www'), '--pkg', path.join(ROOT, 'pkg')];
  tuwen('site', '--model', TINY, '--pairs', path.join(gallery, 'pairs.csv'), '--images', path.join(gallery, 'images'), '--out', site, ...common);
  tuwen('site', '--model', TINY, '--out', bareSite, ...common);
  server = await serve(site);
  bareServer = await serve(bareSite);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: chromiumArgs({ webgpu: false }) });
});

after(async () => {
  await browser?.close();
  server?.stop();
  bareServer?.stop();
  rmSync(work, { recursive: true, force: true });
});

async function newContext() {
  const context = await browser.newContext({ viewport: { width: 1100, height: 900 }, acceptDownloads: true });
  context.on('request', (r) => requests.push({ method: r.method(), url: r.url() }));
  return context;
}

async function openPage(context, url) {
  const page = await context.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e.message));
  page.on('dialog', (d) => d.accept());
  await page.goto(url);
  await page.waitForSelector('body[data-ready="true"]', { timeout: 60_000 });
  return page;
}

const status = (page) => page.$eval('#photos-status', (s) => ({ ...s.dataset, text: s.textContent }));

async function addFolder(page, dir, input = '#photos-input') {
  await page.setInputFiles(input, dir);
  await page.waitForSelector('#photos-status[data-state="done"]', { timeout: 120_000 });
  const s = await status(page);
  return { count: Number(s.count), skipped: Number(s.skipped), embedded: Number(s.embedded), reused: Number(s.reused), removed: Number(s.removed), text: s.text };
}

async function setScope(page, scope) {
  await page.evaluate((value) => {
    const select = document.getElementById('scope');
    select.value = value;
    select.dispatchEvent(new Event('input'));
  }, scope);
}

async function textQuery(page, text, k = 50) {
  await page.selectOption('#top-k', String(k));
  await page.fill('#text-query', text);
  await page.click('#text-search');
  await page.waitForFunction((q) => document.querySelector('#query-view q')?.textContent === q && !document.body.classList.contains('busy'), text);
  return imageResults(page);
}

function imageResults(page) {
  return page.$$eval('#image-results li.result', (items) => items.map((li) => ({
    rank: Number(li.dataset.rank),
    source: li.dataset.source,
    id: li.querySelector('.id').textContent,
    score: Number(li.querySelector('.score').textContent),
    thumbnail: Boolean(li.querySelector('img')),
  })));
}

// Every page score of the visitor's photos within 0.01 of the CLI's on the same file (paths: album/<id>).
function assertScoresMatch(pageHits, cliHits, what) {
  const cli = new Map(cliHits.map((h) => [`album/${h.id}`, h.score]));
  let compared = 0;
  for (const hit of pageHits) {
    if (!cli.has(hit.id)) continue;
    assert.ok(Math.abs(hit.score - cli.get(hit.id)) < 0.01, `${what}: ${hit.id} scores ${hit.score} in the page, ${cli.get(hit.id)} natively`);
    compared += 1;
  }
  assert.ok(compared >= 15, `${what}: ${compared} photos compared`);
}

const GOOD = () => readdirSync(album, { recursive: true }).filter((n) => !Object.keys(BAD).includes(n) && /\.(jpe?g|png)$/i.test(n)).length;

test('a folder is indexed in the page: counts, skipped files with reasons, scores within 0.01 of the CLI, export read by the CLI', async () => {
  const context = await newContext();
  const page = await openPage(context, server.url);
  assert.equal((await status(page)).state, 'idle');
  const result = await addFolder(page, album);
  assert.equal(result.skipped, Object.keys(BAD).length, result.text);
  assert.equal(result.count, GOOD(), `every readable photo, under every name: ${result.text}`);
  assert.equal(result.embedded, GOOD() - 2, 'copy-of-first.jpg and the markup-named file repeat bytes: embedded once each');

  // The skipped list, as a CSV download, each file with its reason.
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#photos-skipped')]);
  const csv = readFileSync(await download.path(), 'utf8');
  for (const [name, reason] of Object.entries(BAD)) {
    const line = csv.split('\n').find((l) => l.startsWith(`album/${name},`));
    assert.ok(line && line.includes(reason), `${name} is listed with its reason (${reason}): ${csv}`);
  }

  // The CLI on the same files.
  // (The CLI refuses ids with control characters in a listing, so the markup-named file is left out of its list.)
  const cliBundle = path.join(work, 'album-cli.bundle');
  const list = path.join(work, 'album-list.csv');
  const ids = readdirSync(album, { recursive: true }).filter((n) => n !== MARKUP_NAME && n !== 'trip');
  writeFileSync(list, `image_id\n${ids.join('\n')}\n`);
  try {
    tuwen('index', 'images', '--model', path.join(site, 'models/vision.gguf'), '--images', album, '--list', list, '--out', cliBundle);
  } catch (e) {
    // A non-zero exit with the bundle written: the bad files are skipped natively too.
  }
  assert.ok(existsSync(cliBundle), 'the CLI indexed the album');
  await setScope(page, 'mine');
  const hits = await textQuery(page, '红色圆形');
  assert.ok(hits.every((h) => h.source === 'mine' && h.thumbnail), 'scope "mine": the visitor\'s photos, with thumbnails');
  await page.selectOption('#top-k', '10');
  await page.waitForFunction(() => document.querySelectorAll('#image-results li.result').length === 10);
  await snap(page, '6-my-photos-search');
  await page.selectOption('#top-k', '50');
  await page.waitForFunction(() => document.querySelectorAll('#image-results li.result').length > 10);
  assertScoresMatch(hits, cliSearch(cliBundle, ['--text', '红色圆形'], 50), 'text → my photos');
  const markup = hits.find((h) => h.id === `album/${MARKUP_NAME}`);
  assert.ok(markup, 'a name with markup and a control character is searchable, shown as text');
  assert.equal(await page.evaluate(() => document.querySelectorAll('#image-results b, #image-results img[src="x"]').length), 0, 'no markup injected');

  // An image query (a dropped/chosen file) against my photos.
  const queryImage = path.join(album, 'trip', readdirSync(path.join(album, 'trip')).sort()[0]);
  await page.setInputFiles('#image-input', queryImage);
  await page.waitForFunction(() => document.querySelector('#query-view img') && !document.body.classList.contains('busy'));
  await page.waitForFunction(() => document.querySelectorAll('#image-results li.result').length > 0);
  const imageHits = await imageResults(page);
  assertScoresMatch(imageHits, cliSearch(cliBundle, ['--image', queryImage], 50), 'image → my photos');

  // Both scopes: the site's gallery and mine, merged by score.
  await setScope(page, 'both');
  const both = await textQuery(page, '蓝色方块');
  assert.ok(both.some((h) => h.source === 'gallery') && both.some((h) => h.source === 'mine'), 'both sources');
  assert.deepEqual(both.map((h) => h.score), both.map((h) => h.score).sort((a, b) => b - a), 'one ranking by score');

  // Clicking one of my photos searches with it: it ranks first, at score 1.
  await setScope(page, 'mine');
  await textQuery(page, '红色圆形');
  await page.click('#image-results li.result[data-source="mine"] .result-image');
  await page.waitForFunction(() => document.querySelector('#query-view')?.textContent.includes('以图搜图') && !document.body.classList.contains('busy'));
  await page.waitForFunction(() => document.querySelectorAll('#image-results li.result').length > 0);
  const similar = await imageResults(page);
  assert.ok(similar[0].score > 0.999, `the photo itself first: ${JSON.stringify(similar[0])}`);

  // Export: the CLI reads the page's bundle and ranks as the page does.
  const [exported] = await Promise.all([page.waitForEvent('download'), page.click('#photos-export')]);
  const bundle = path.join(work, 'exported.bundle');
  await exported.saveAs(bundle);
  const pageHits = await textQuery(page, '绿色横条');
  const cliHits = cliSearch(bundle, ['--text', '绿色横条'], 50);
  assert.deepEqual(new Set(cliHits.map((h) => h.id)), new Set(pageHits.map((h) => h.id)), 'the export holds every name');
  pageHits.forEach((hit) => {
    const native = cliHits.find((h) => h.id === hit.id);
    assert.ok(Math.abs(native.score - hit.score) < 2e-3, `${hit.id}: exported ${native.score}, page ${hit.score}`);
  });

  // Kept across visits: a reload shows the same photos, and adding the folder again embeds nothing.
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]');
  assert.equal(Number((await status(page)).count), GOOD());
  const again = await addFolder(page, album);
  assert.equal(again.embedded, 0, again.text);
  assert.equal(again.reused, GOOD());

  // Added, changed, renamed, removed: only the added and the changed are embedded.
  const first = readdirSync(album).filter((n) => n.startsWith('demo-')).sort();
  copyFileSync(spare[0], path.join(album, 'added.jpg'));
  copyFileSync(spare[1], path.join(album, first[3])); // changed bytes under the same name
  renameSync(path.join(album, first[4]), path.join(album, 'renamed.jpg'));
  unlinkSync(path.join(album, first[5]));
  const changed = await addFolder(page, album);
  assert.equal(changed.embedded, 2, `added + changed: ${changed.text}`);
  assert.equal(changed.removed, 2, `removed + the renamed file's old name: ${changed.text}`);
  assert.equal(changed.count, GOOD());
  assert.deepEqual(page.errors, []);
  await context.close();
});

test('a tab closed mid-indexing loses at most a batch: added again, the rest is embedded, nothing twice', async () => {
  const context = await newContext();
  let page = await openPage(context, `${server.url}?threads=1`);
  await page.click('#photos-forget');
  await page.waitForFunction(() => document.getElementById('photos-status').dataset.count === '0');
  const big = path.join(work, 'big');
  tuwen('demo-gallery', '--out', big, '--count', '60');
  const folder = path.join(big, 'images');
  await page.setInputFiles('#photos-input', folder);
  await page.waitForFunction(() => Number(document.getElementById('photos-status').dataset.count) >= 8, null, { timeout: 60_000 });
  await snap(page, '5-my-photos-indexing');
  // Paused, nothing more is embedded; the tab is then closed while paused, mid-way.
  await page.click('#photos-pause');
  await page.waitForFunction(() => document.getElementById('photos-pause').textContent === '继续');
  await page.waitForTimeout(300); // the photo in flight finishes and the batch is stored
  const paused = Number((await status(page)).count);
  await page.waitForTimeout(800);
  assert.equal(Number((await status(page)).count), paused, 'nothing is indexed while paused');
  assert.match(await page.textContent('#photos-progress-text'), /已暂停/);
  await page.close();
  page = await openPage(context, `${server.url}?threads=1`);
  const kept = Number((await status(page)).count);
  assert.ok(kept >= 8 && kept < 60, `the committed batches survived: ${kept}`);
  const rest = await addFolder(page, folder);
  assert.equal(rest.count, 60);
  assert.equal(rest.embedded, 60 - kept, `only what was not committed is embedded: ${rest.text}`);
  assert.equal(rest.reused, kept);

  // Forget: everything of the visitor's is gone, also after a reload.
  await page.click('#photos-forget');
  await page.waitForFunction(() => document.getElementById('photos-status').dataset.count === '0');
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]');
  assert.equal((await status(page)).count, '0');
  const stored = await page.evaluate(async () => {
    const dbs = await indexedDB.databases();
    return dbs.filter((d) => d.name.startsWith('tuwen-photos'));
  });
  // The page opened an empty database again after the reload; nothing is in it.
  assert.ok(stored.length <= 1, JSON.stringify(stored));
  await context.close();
});

test('a bundle from another model is refused on import with the reason; one from this model is searchable', async () => {
  const other = path.join(work, 'other-model');
  tuwen('init-random', '--config', path.join(TINY, 'config.json'), '--vocab', path.join(TINY, 'vocab.txt'), '--seed', '7', '--out', other);
  const foreign = path.join(work, 'foreign.bundle');
  const own = path.join(work, 'own.bundle');
  const trip = path.join(album, 'trip');
  tuwen('index', 'images', '--model', other, '--images', trip, '--out', foreign);
  tuwen('index', 'images', '--model', path.join(site, 'models/vision.gguf'), '--images', trip, '--out', own);
  const context = await newContext();
  const page = await openPage(context, server.url);
  const before = (await status(page)).count;
  await page.setInputFiles('#photos-import', foreign);
  await page.waitForFunction(() => /无法导入/.test(document.getElementById('photos-status').textContent));
  const refused = await status(page);
  assert.match(refused.text, /another model/);
  assert.equal(refused.count, before, 'nothing indexed is lost');
  await page.setInputFiles('#photos-import', own);
  await page.waitForFunction(() => /已导入/.test(document.getElementById('photos-status').textContent));
  assert.equal(Number((await status(page)).count), Number(before) + readdirSync(trip).length);
  await setScope(page, 'mine');
  const hits = await textQuery(page, '红色圆形', 20);
  const cli = cliSearch(own, ['--text', '红色圆形'], 20);
  const imported = hits.filter((h) => cli.some((c) => c.id === h.id));
  assert.ok(imported.length > 0 && imported.every((h) => Math.abs(h.score - cli.find((c) => c.id === h.id).score) < 2e-3));
  await context.close();
});

test('storage quota exhausted: a clear message, and what was indexed stays searchable', async () => {
  const context = await newContext();
  const page = await openPage(context, `${server.url}?threads=1`);
  await page.click('#photos-forget');
  await page.waitForFunction(() => document.getElementById('photos-status').dataset.count === '0');
  const cdp = await context.newCDPSession(page);
  const origin = new URL(server.url).origin;
  const usage = await page.evaluate(async () => (await navigator.storage.estimate()).usage);
  await cdp.send('Storage.overrideQuotaForOrigin', { origin, quotaSize: usage + 60_000 });
  const big = path.join(work, 'quota');
  tuwen('demo-gallery', '--out', big, '--count', '40');
  const result = await addFolder(page, path.join(big, 'images'));
  assert.match(result.text, /存储空间已满/, result.text);
  assert.ok(result.count > 0 && result.count < 40, `some batches were stored before the quota ran out: ${result.text}`);
  await cdp.send('Storage.overrideQuotaForOrigin', { origin });
  await setScope(page, 'mine');
  const hits = await textQuery(page, '红色圆形', 50);
  assert.equal(hits.length, result.count, 'every stored photo is searchable');
  await context.close();
});

test('offline after the first visit, on a site without a gallery of its own: photos are indexed and searched', async () => {
  const context = await newContext();
  let page = await openPage(context, bareServer.url);
  assert.equal(await page.evaluate(() => document.body.dataset.gallery), 'false');
  assert.match(await page.textContent('#gallery-info'), /没有公共图库/);
  // Both towers cached once (a query loads the text tower; indexing the vision tower).
  await addFolder(page, path.join(album, 'trip'));
  await textQuery(page, '预热', 5);
  await page.waitForFunction(() => navigator.serviceWorker.controller !== null);
  await context.setOffline(true);
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]', { timeout: 60_000 });
  const result = await addFolder(page, path.join(album, 'trip'));
  assert.equal(result.embedded, 0);
  await page.setInputFiles('#photos-files', spare.slice(2, 4));
  await page.waitForSelector('#photos-status[data-state="done"]');
  assert.equal(Number((await status(page)).embedded), 2, 'files chosen one by one are indexed offline');
  assert.equal(await page.isHidden('#scope-choice'), true, 'no scope to choose without a gallery');
  const hits = await textQuery(page, '红色圆形', 50);
  assert.equal(hits.length, readdirSync(path.join(album, 'trip')).length + 2);
  assert.ok(hits.every((h) => h.source === 'mine'));
  await context.setOffline(false);
  await context.close();
});

test('no request other than GET/HEAD to the page\'s own origin was made in any of the above', () => {
  assert.ok(requests.length > 20, `requests were observed (${requests.length})`);
  const origins = new Set([new URL(server.url).origin, new URL(bareServer.url).origin]);
  const foreign = requests.filter((r) => !['GET', 'HEAD'].includes(r.method) || (!origins.has(new URL(r.url).origin) && !r.url.startsWith('blob:') && !r.url.startsWith('data:')));
  assert.deepEqual(foreign, []);
});
