// Where the wasm CPU engine spends its time, under Node's V8 (the engine Chromium runs), in steady state: the
// model is loaded and warmed up first, then only the encoder runs are sampled. A profile, not a timing.
//
//   cargo build --release --lib --target wasm32-unknown-unknown --no-default-features
//   wasm-bindgen --target web --keep-debug --out-dir out/wasm-profile target/wasm32-unknown-unknown/release/tuwen.wasm
//   node benches/wasm_profile.mjs --model site/models/vision.gguf --tower vision [--image F.jpg] [--runs 6]
//
// (--keep-debug keeps the function names wasm-opt would strip.) Prints each function's share of the samples.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { Session } from 'node:inspector/promises';

const args = process.argv.slice(2);
const option = (name, fallback) => (args.includes(`--${name}`) ? args[args.indexOf(`--${name}`) + 1] : fallback);
const pkg = path.resolve(option('pkg', 'out/wasm-profile'));
const tower = option('tower', 'vision');
const model = option('model', `site/models/${tower}.gguf`);
const runs = Number(option('runs', '6'));
const image = option('image', null);
const TEXT = option('text', null) ?? '一位穿着红色外套的年轻女子站在雪后的古老城墙上，远处是连绵的群山和淡蓝色的天空，她正在用手机拍摄夕阳下的城市风景，身边还有一只黑白相间的小狗';

const glue = await import(pathToFileURL(path.join(pkg, 'tuwen.js')).href);
await glue.default({ module_or_path: readFileSync(path.join(pkg, 'tuwen_bg.wasm')) });
const encoder = await glue.WasmEncoder.fromGguf(readFileSync(model), tower, 'cpu');
if (tower === 'vision' && !image) throw new Error('--image F: the image to embed');
const bytes = image ? readFileSync(image) : null;
const run = () => (tower === 'vision' ? encoder.embedImage(bytes, path.basename(image)) : encoder.embedText(TEXT));
await run();
await run();

const session = new Session();
session.connect();
await session.post('Profiler.enable');
await session.post('Profiler.setSamplingInterval', { interval: 200 });
await session.post('Profiler.start');
const times = [];
for (let i = 0; i < runs; i++) {
  const t = performance.now();
  await run();
  times.push(performance.now() - t);
}
const { profile } = await session.post('Profiler.stop');

const byId = new Map(profile.nodes.map((n) => [n.id, n]));
const self = new Map();
profile.samples.forEach((id, i) => {
  const frame = byId.get(id).callFrame;
  const name = (frame.functionName || frame.url || '(anonymous)').replace(/::h[0-9a-f]{16}$/, '');
  self.set(name, (self.get(name) || 0) + profile.timeDeltas[i]);
});
const total = [...self.values()].reduce((a, b) => a + b, 0);
times.sort((a, b) => a - b);
console.log(`${tower}: median ${times[Math.floor(runs / 2)].toFixed(0)} ms over ${runs} runs (profiled, so slower than unprofiled)`);
for (const [name, t] of [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, 15)) {
  console.log(`${((100 * t) / total).toFixed(1).padStart(5)} %  ${name}`);
}
