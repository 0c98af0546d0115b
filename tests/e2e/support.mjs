// Shared by the page tests and the browser benchmark: paths, Chromium flags (see TOOLCHAIN notes:
// no network, fresh profile) and a `tuwen serve` child process on a free port.
import { spawn } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const TUWEN = process.env.TUWEN_BIN || path.join(ROOT, 'target/release/tuwen');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

export function chromiumArgs({ webgpu }) {
  const args = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--no-first-run', '--disable-quic'];
  if (webgpu) args.push('--enable-unsafe-webgpu');
  // V8 flags for profiling (README: reading Chromium's machine code), e.g. CHROMIUM_JS_FLAGS=--perf-prof.
  if (process.env.CHROMIUM_JS_FLAGS) args.push(`--js-flags=${process.env.CHROMIUM_JS_FLAGS}`);
  return args;
}

// Starts `tuwen serve --dir dir --port 0 [--isolated]`; resolves to { url, stop } once it listens.
export function serve(dir, { isolated = false } = {}) {
  const args = ['serve', '--dir', dir, '--port', '0', ...(isolated ? ['--isolated'] : [])];
  const child = spawn(TUWEN, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  return new Promise((resolve, reject) => {
    let log = '';
    child.stderr.on('data', (chunk) => {
      log += chunk;
      const match = log.match(/at (http:\/\/127\.0\.0\.1:\d+\/)/);
      if (match) resolve({ url: match[1], stop: () => child.kill() });
    });
    child.on('exit', (code) => reject(new Error(`tuwen serve exited (${code}): ${log}`)));
  });
}
