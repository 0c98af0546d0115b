// What the page benchmarks share (benches/browser.mjs, benches/page_ab.mjs): their command line, medians,
// and how a query is timed.

export const args = process.argv.slice(2);
export const option = (name, fallback) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : fallback;
};

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

// 52 tokens after truncation: the longest text the model reads, as in the targets.
export const LONG_TEXT = '一位穿着红色外套的年轻女子站在雪后的古老城墙上，远处是连绵的群山和淡蓝色的天空，她正在用手机拍摄夕阳下的城市风景，身边还有一只黑白相间的小狗';

// One query timed inside the page, as its user sees it: from the moment the query reaches the page (the
// form's submit, the file input's change: capture listeners on the document, which run before the page's
// own) to the frame its results are rendered in (the page writes #timings after that frame's
// requestAnimationFrame; a MutationObserver sees it at once). Neither the harness's round trips to the
// browser nor a polling interval is counted.
export async function timed(page, start) {
  await page.evaluate(() => {
    const timings = document.getElementById('timings');
    timings.textContent = '';
    const listening = new AbortController();
    const started = () => {
      window.__t0 = performance.now();
      listening.abort();
    };
    for (const type of ['submit', 'change']) document.addEventListener(type, started, { capture: true, signal: listening.signal });
    window.__done = new Promise((resolve) => {
      const seen = new MutationObserver(() => {
        if (!timings.textContent) return;
        seen.disconnect();
        resolve(performance.now());
      });
      seen.observe(timings, { childList: true, characterData: true, subtree: true });
    });
  });
  await start();
  return page.evaluate(async () => {
    const end = await window.__done;
    const { encodeMs, searchMs, renderMs } = document.getElementById('timings').dataset;
    return { total: end - window.__t0, encode: Number(encodeMs), search: Number(searchMs), render: Number(renderMs) };
  });
}

export const textQuery = (page, text) => timed(page, () => page.evaluate((t) => {
  document.getElementById('text-query').value = t;
  document.getElementById('text-form').requestSubmit();
}, text));
export const imageQuery = (page, file) => timed(page, () => page.setInputFiles('#image-input', file));
