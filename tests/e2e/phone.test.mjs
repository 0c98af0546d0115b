// The page on a phone (390 × 844, touch) and on a desktop (1280 × 800): laid out for the screen, downloads
// folded to one line once loaded, touch targets of 44 px; and installable: Chromium's own installability check
// passes, the manifest's icons load, and the installed start URL opens and searches offline.
//
// TUWEN_SCREENSHOTS=DIR saves docs/screenshots' phone and desktop shots (with a CJK font installed).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { ROOT, TUWEN, CHROMIUM, chromiumArgs, serve } from './support.mjs';

const work = mkdtempSync(path.join(tmpdir(), 'tuwen-phone-'));
const site = path.join(work, 'site');
const screenshots = process.env.TUWEN_SCREENSHOTS;
const SCREENS = {
  phone: { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 3 },
  desktop: { viewport: { width: 1280, height: 800 } },
};

let server;
let browser;

before(async () => {
  if (!existsSync(path.join(ROOT, 'pkg/tuwen_bg.wasm'))) throw new Error('pkg/ is missing: run ./build.sh test');
  const gallery = path.join(work, 'gallery');
  execFileSync(TUWEN, ['demo-gallery', '--out', gallery, '--count', '24'], { stdio: 'ignore' });
  execFileSync(TUWEN, ['site', '--model', path.join(ROOT, 'tests/fixtures/tiny'), '--pairs', path.join(gallery, 'pairs.csv'),
    '--images', path.join(gallery, 'images'), '--out', site, '--www', path.join(ROOT, 'www'), '--pkg', path.join(ROOT, 'pkg')], { stdio: 'ignore' });
  server = await serve(site);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: chromiumArgs({ webgpu: false }) });
});

after(async () => {
  await browser?.close();
  server?.stop();
  rmSync(work, { recursive: true, force: true });
});

async function snap(page, name) {
  if (!screenshots) return;
  mkdirSync(screenshots, { recursive: true });
  await page.waitForFunction(() => [...document.images].every((i) => i.complete));
  await page.screenshot({ path: path.join(screenshots, `${name}.png`) });
}

// What the layout checks read: overflow, the boxes' positions and every tappable thing's height.
const measure = () => {
  const visible = (e) => e.getClientRects().length > 0 && getComputedStyle(e).visibility !== 'hidden';
  const box = (sel) => document.querySelector(sel).getBoundingClientRect();
  const hint = document.querySelector('#image-drop .hint');
  const hintStyle = getComputedStyle(hint);
  const lineHeight = parseFloat(hintStyle.lineHeight) || parseFloat(hintStyle.fontSize) * 1.5;
  const downloads = document.getElementById('downloads');
  const downloadsStyle = getComputedStyle(downloads);
  const small = [...document.querySelectorAll('button, .button, select, input[type="search"], li.result')]
    .filter(visible)
    .map((e) => ({ what: e.id || e.className || e.tagName, height: e.getBoundingClientRect().height }))
    .filter((e) => e.height < 44);
  const results = [...document.querySelectorAll('#image-results li.result')].slice(0, 2).map((e) => e.getBoundingClientRect().bottom);
  return {
    overflow: document.documentElement.scrollWidth - innerWidth,
    screen: innerHeight,
    textQuery: box('#text-form').bottom,
    imageBox: box('#image-drop').bottom,
    results,
    hint: { width: hint.getBoundingClientRect().width, height: hint.getBoundingClientRect().height, lineHeight },
    downloads: { height: downloads.getBoundingClientRect().height, fontSize: parseFloat(downloadsStyle.fontSize) },
    small,
    captionFont: parseFloat(getComputedStyle(document.querySelector('.caption') || document.body).fontSize),
    engineOpen: document.getElementById('engine').open,
  };
};

for (const [name, screen] of Object.entries(SCREENS)) {
  test(`${name} (${screen.viewport.width} × ${screen.viewport.height}): fits the width, one-line downloads, the query and the first results on the first screen, 44 px targets`, async () => {
    const context = await browser.newContext(screen);
    const page = await context.newPage();
    await page.goto(server.url);
    await page.waitForSelector('body[data-ready="true"]', { timeout: 60_000 });
    await page.waitForSelector('#downloads[data-state="done"]');
    let m = await page.evaluate(measure);
    assert.ok(m.overflow <= 0, `no horizontal overflow (${m.overflow} px)`);
    assert.ok(m.downloads.height <= m.downloads.fontSize * 2, `the download area is one line once loaded: ${JSON.stringify(m.downloads)}`);
    assert.ok(m.hint.width >= 200 && m.hint.height <= m.hint.lineHeight * 1.5, `the image box's hint reads on one line: ${JSON.stringify(m.hint)}`);
    assert.equal(m.engineOpen, name === 'desktop', 'the model card and backend reason fold away on a phone');
    assert.deepEqual(m.small, [], 'every button and result is at least 44 px tall');
    await snap(page, `${name}-loaded`);

    await page.fill('#text-query', '白色背景上的一个红色圆形');
    await page.click('#text-search');
    await page.waitForFunction(() => document.querySelectorAll('#image-results li.result').length >= 2);
    await page.evaluate(() => window.scrollTo(0, 0));
    m = await page.evaluate(measure);
    assert.ok(m.overflow <= 0, `no horizontal overflow after a query (${m.overflow} px)`);
    for (const [what, bottom] of [['text query', m.textQuery], ['image box', m.imageBox], ['result 1', m.results[0]], ['result 2', m.results[1]]]) {
      assert.ok(bottom <= m.screen, `${what} is on the first screen (bottom ${bottom.toFixed(0)} of ${m.screen})`);
    }
    assert.deepEqual(m.small, [], 'every button and result is at least 44 px tall after a query');
    if (name === 'phone') {
      const columns = await page.$eval('#image-results .grid', (g) => getComputedStyle(g).gridTemplateColumns.split(' ').length);
      assert.equal(columns, 2, 'two result columns on a phone');
      assert.equal(await page.getAttribute('#image-input', 'accept'), 'image/*', 'a tap offers the camera or the photo picker');
    }
    await snap(page, `${name}-text-query`);
    await context.close();
  });
}

test('installable: no installability errors, the icons load, and the start URL opens and searches offline', async () => {
  const profile = path.join(work, 'profile');
  const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM, args: chromiumArgs({ webgpu: false }), viewport: { width: 1100, height: 900 } });
  try {
    const page = await context.newPage();
    await page.goto(server.url);
    await page.waitForSelector('body[data-ready="true"]', { timeout: 60_000 });
    await page.waitForFunction(() => navigator.serviceWorker.controller !== null);
    const cdp = await context.newCDPSession(page);
    const { installabilityErrors } = await cdp.send('Page.getInstallabilityErrors');
    assert.deepEqual(installabilityErrors, [], 'Chromium finds the page installable');
    const manifest = await page.evaluate(async () => {
      const href = document.querySelector('link[rel="manifest"]').href;
      const m = await (await fetch(href)).json();
      const icons = [];
      for (const icon of m.icons) {
        const bitmap = await createImageBitmap(await (await fetch(new URL(icon.src, href))).blob());
        icons.push({ sizes: icon.sizes, purpose: icon.purpose, size: `${bitmap.width}x${bitmap.height}` });
      }
      return { startUrl: new URL(m.start_url, href).href, scope: m.scope, display: m.display, icons };
    });
    assert.equal(manifest.display, 'standalone');
    assert.equal(manifest.scope, './', 'relative: the site works under any sub-path');
    for (const icon of manifest.icons) assert.equal(icon.size, icon.sizes, `icon ${icon.sizes} (${icon.purpose}) loads at its size`);
    assert.ok(manifest.icons.some((i) => i.purpose === 'maskable'));
    // A first query caches the text tower; then the installed app opens with the network off.
    await page.fill('#text-query', '红色圆形');
    await page.click('#text-search');
    await page.waitForFunction(() => document.querySelectorAll('#image-results li.result').length > 0);
    await context.setOffline(true);
    const app = await context.newPage();
    await app.goto(manifest.startUrl);
    await app.waitForSelector('body[data-ready="true"]', { timeout: 60_000 });
    await app.fill('#text-query', '蓝色方块');
    await app.click('#text-search');
    await app.waitForFunction(() => document.querySelectorAll('#image-results li.result').length > 0);
    assert.match(await app.textContent('#downloads'), /离线可用/);
  } finally {
    await context.close();
  }
});
