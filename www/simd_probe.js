// Which SIMD build: relaxed SIMD's 8-bit dot product is one instruction on some CPUs and five on others.
// `WebAssembly.validate` says only that the browser has it; a probe times it, in both of the forms the
// relaxed build can compute it in (src/model/q8/wasm/relaxed_simd.rs), against the SIMD128 code path.

const now = () => performance.now();

// Encodes an unsigned LEB128 (sizes, indices, SIMD opcodes).
function leb(n) {
  const bytes = [];
  do {
    let byte = n & 0x7f;
    n >>>= 7;
    if (n) byte |= 0x80;
    bytes.push(byte);
  } while (n);
  return bytes;
}
const section = (id, body) => [id, ...leb(body.length), ...body];
const vec = (items) => [...leb(items.length), ...items.flat()];
const named = (text) => vec([...new TextEncoder().encode(text)]);

const op = { loop: 0x03, end: 0x0b, brIf: 0x0d, get: 0x20, set: 0x21, tee: 0x22, i32Const: 0x41, i32Add: 0x6a, i32Sub: 0x6b, i32And: 0x71 };
// i32.const takes a signed LEB128: the same bytes for the small non-negative constants used here, as long as
// the last byte's sign bit (0x40) is clear.
function i32Const(n) {
  const bytes = leb(n);
  if (bytes[bytes.length - 1] & 0x40) bytes[bytes.length - 1] |= 0x80, bytes.push(0);
  return [op.i32Const, ...bytes];
}
const simd = (code) => [0xfd, ...leb(code)];
const memarg = (alignLog2, offset) => [alignLog2, ...leb(offset)];
const v128Load = (offset) => [...simd(0x00), ...memarg(4, offset)];
const v128Load32Splat = (offset) => [...simd(0x09), ...memarg(2, offset)];
const v128Load64Splat = (offset) => [...simd(0x0a), ...memarg(3, offset)];
const i16x8ExtendLowI8x16S = simd(0x87);
const i16x8ExtendHighI8x16S = simd(0x88);
const i32x4DotI16x8S = simd(0xba);
const i32x4Add = simd(0xae);
const i32x4RelaxedDotI8x16I7x16AddS = simd(0x113);
const i16x8RelaxedDotI8x16I7x16S = simd(0x112);
const v128Const = (bytes) => [...simd(0x0c), ...bytes];
const I16X8_ONES = [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0];
const i32x4ExtractLane0 = [...simd(0x1b), 0];

// The probe functions: (iterations) -> i32, locals 0 = iterations, 1 = byte offset, 2… = v128. Each iteration
// multiplies two 16-byte weight loads by 4 rows' activations (128 multiply-adds) the way the kernel of that
// build does (src/model/q8/wasm/relaxed_simd.rs, simd128.rs), into 8 accumulators, so none is latency-bound.
const WEIGHTS = 1024; // the weights cycle through 1 KiB, the activations sit behind them: all in L1
function probeBody(step, accumulators, v128Locals) {
  const acc = (i) => 2 + i;
  const sum = [op.get, acc(0)];
  for (let i = 1; i < accumulators; i++) sum.push(op.get, acc(i), ...i32x4Add);
  const code = [
    op.loop, 0x40,
    ...step(acc, accumulators + 2),
    op.get, 1, ...i32Const(16), op.i32Add, ...i32Const(WEIGHTS - 1), op.i32And, op.set, 1,
    op.get, 0, ...i32Const(1), op.i32Sub, op.tee, 0, op.brIf, 0,
    op.end,
    ...sum, ...i32x4ExtractLane0, op.end,
  ];
  const locals = vec([[1, 0x7f], [v128Locals, 0x7b]]);
  return vec([...locals, ...code]);
}

// accumulate (the relaxed build's "accumulate" form): per weight load, one `i32x4.relaxed_dot_i8x16_i7x16_add_s` per row (its
// activations' 4 bytes splat). pairs (its "pairs" form): the same with `i16x8.relaxed_dot_i8x16_i7x16_s`, its
// i16 pair sums added into i32 lanes by `i32x4.dot_i16x8_s` with ones, and `i32x4.add`.
function relaxedStep(pairs) {
  return (acc, first) => {
    const rows = (i) => first + i; // 4 splat activation rows
    const weights = (q) => first + 4 + q;
    const ones = first + 6;
    const code = [];
    if (pairs) code.push(...v128Const(I16X8_ONES), op.set, ones);
    for (let r = 0; r < 4; r++) code.push(op.get, 1, ...v128Load32Splat(WEIGHTS + 4 * r), op.set, rows(r));
    for (let q = 0; q < 2; q++) {
      code.push(op.get, 1, ...v128Load(16 * q), op.set, weights(q));
      for (let r = 0; r < 4; r++) {
        const a = acc(4 * q + r);
        if (pairs) {
          code.push(op.get, a, op.get, weights(q), op.get, rows(r), ...i16x8RelaxedDotI8x16I7x16S, op.get, ones, ...i32x4DotI16x8S, ...i32x4Add, op.set, a);
        } else {
          code.push(op.get, weights(q), op.get, rows(r), op.get, a, ...i32x4RelaxedDotI8x16I7x16AddS, op.set, a);
        }
      }
    }
    return code;
  };
}
// simd128: per weight load, both halves widened to i16, then per row two i16 dots and two adds.
function simd128Step(acc, first) {
  const [low, high, row] = [first, first + 1, first + 2];
  const code = [];
  for (let q = 0; q < 2; q++) {
    code.push(op.get, 1, ...v128Load(16 * q), op.set, row);
    code.push(op.get, row, ...i16x8ExtendLowI8x16S, op.set, low, op.get, row, ...i16x8ExtendHighI8x16S, op.set, high);
    for (let r = 0; r < 4; r++) {
      code.push(op.get, 1, ...v128Load64Splat(WEIGHTS + 8 * r), op.set, row);
      code.push(op.get, acc(r), op.get, low, op.get, row, ...i32x4DotI16x8S, ...i32x4Add, op.set, acc(r));
      code.push(op.get, acc(4 + r), op.get, high, op.get, row, ...i32x4DotI16x8S, ...i32x4Add, op.set, acc(4 + r));
    }
  }
  return code;
}

// The probe module: memory of one page, the functions of PROBED exported (the relaxed build's two forms, then
// SIMD128). It validates only where the browser has relaxed SIMD.
const PROBED = ['accumulate', 'pairs', 'simd128'];
export const RELAXED_SIMD_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
  ...section(1, vec([[0x60, 1, 0x7f, 1, 0x7f]])), // one type: (i32) -> i32
  ...section(3, vec([[0], [0], [0]])), // three functions of it
  ...section(5, vec([[0x00, 1]])), // one memory, at least one page
  ...section(7, vec(PROBED.map((name, index) => [...named(name), 0x00, index]))),
  ...section(10, vec([probeBody(relaxedStep(false), 8, 8 + 6), probeBody(relaxedStep(true), 8, 8 + 7), probeBody(simd128Step, 8, 8 + 3)])),
]);

// How much faster relaxed SIMD's dot product (the faster form) must time than the SIMD128 path for ?simd=auto to
// take it: where it is one instruction (x86 with AVX-VNNI: one vpdpbusd) the probe reads ~0.3–0.5 and the
// encoders ran 0.68–0.70× as long; on x86 without AVX-VNNI (Zen 3) the "pairs" form read 0.67–0.86
// and the encoders ran 0.83–0.84× as long (BENCHMARKS.md). Either build gives the same bits, so a near call
// costs only speed; the margin keeps a probe's noise from taking a build that is no faster.
export const RELAXED_SIMD_FASTER = 0.9;

// Times the probe functions, alternated; the fastest of 4 rounds each is kept. A round shorter than 8 ms (the
// timer's resolution is 100 µs in a page that is not cross-origin isolated) doubles the work and starts over.
// First each function runs a few times and the worker yields for a moment: the engine's optimizing tier
// compiles hot functions in the background, and right after the browser starts (its compiler threads busy)
// the probe otherwise timed some functions before their optimized code arrived (read 1.0–1.1 where a later
// probe read 0.8). About 0.2 s, once per browser (the verdict is cached, see simdVerdict); never more than
// ~0.5 s on a slow device.
async function timeDotProducts() {
  const { exports } = new WebAssembly.Instance(new WebAssembly.Module(RELAXED_SIMD_PROBE));
  const time = (f, n) => {
    const t0 = now();
    f(n);
    return now() - t0;
  };
  for (let i = 0; i < 8; i++) for (const name of PROBED) exports[name](1 << 12);
  await new Promise((resolve) => setTimeout(resolve, 50));
  const deadline = now() + 450;
  let n = 1 << 12;
  const none = () => Object.fromEntries(PROBED.map((name) => [name, Infinity]));
  let best = none();
  for (let rounds = 0; rounds < 4; ) {
    const round = Object.fromEntries(Object.keys(best).map((name) => [name, time(exports[name], n)]));
    if (Math.min(...Object.values(round)) < 8 && n < 1 << 26 && now() < deadline) {
      n *= 2;
      best = none();
      rounds = 0;
      continue;
    }
    for (const name of Object.keys(best)) best[name] = Math.min(best[name], round[name]);
    rounds += 1;
  }
  // The relaxed build's dot-product form: the faster of the two (the same bits either way).
  const form = best.pairs < best.accumulate ? 'pairs' : 'accumulate';
  const relaxedMs = best[form];
  return { relaxedMs, accumulateMs: best.accumulate, pairsMs: best.pairs, simd128Ms: best.simd128, ratio: relaxedMs / best.simd128, form };
}

// The probe's verdict, kept in the Cache API per browser version and core count, so the choice (and therefore
// which module the cache holds for offline use) does not flip between visits on timer noise.
const PROBE_CACHE = 'tuwen-probe-v2'; // v2: both dot-product forms timed
export async function simdVerdict() {
  const key = new URL(`simd-probe?ua=${encodeURIComponent(navigator.userAgent)}&cores=${navigator.hardwareConcurrency || 1}`, self.location.href).href;
  const cache = self.caches ? await caches.open(PROBE_CACHE).catch(() => null) : null;
  const kept = cache && (await cache.match(key));
  if (kept) return { ...(await kept.json()), cached: true };
  const verdict = await timeDotProducts();
  self.caches?.delete('tuwen-probe-v1').catch(() => {}); // the verdict of the page before the two forms
  if (cache) {
    await cache.keys().then((old) => Promise.all(old.map((request) => cache.delete(request)))).catch(() => {});
    await cache.put(key, new Response(JSON.stringify(verdict), { headers: { 'Content-Type': 'application/json' } })).catch(() => {});
  }
  return { ...verdict, cached: false };
}
