#!/usr/bin/env bash
# tuwen's one entry point.
#   ./build.sh          set up, build (native CLI + wasm package in pkg/), then run the demo job:
#                       embed example texts and images with the default model (see README)
#   ./build.sh test     set up, then run every test: native (cargo test) and wasm in headless Chromium
#   ./build.sh setup    only install what the build needs (wasm target, wasm-bindgen-cli, Chromium)
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
  if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    log "installing Chromium and ChromeDriver (headless browser tests)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq chromium chromium-driver >/dev/null
  fi
}

build_wasm() {
  log "building the wasm package (pkg/)"
  cargo build --release --lib --target wasm32-unknown-unknown --no-default-features
  wasm-bindgen --target web --out-dir pkg target/wasm32-unknown-unknown/release/tuwen.wasm
  ls -l pkg/tuwen_bg.wasm >&2
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

demo() {
  log "building the native CLI"
  cargo build --release
  build_wasm
  local model; model=$(demo_model)
  local images=(tests/fixtures/images/rgb.jpg tests/fixtures/images/rgba.png)
  if [ -d "$SHARED/data/teddy2024-sample/ImageData" ]; then
    images=("$SHARED"/data/teddy2024-sample/ImageData/Image14001001-0000.jpg "${images[@]}")
  fi
  mkdir -p out
  log "embedding with $model → out/demo-embeddings.jsonl"
  local args=(--text "《绿色北京》摄影大赛胡子<人名>作品" --text "一只猫坐在窗台上晒太阳")
  for i in "${images[@]}"; do args+=(--image "$i"); done
  target/release/tuwen embed --model "$model" "${args[@]}" > out/demo-embeddings.jsonl
  # One line per input: kind, input and the first values of its 512-d embedding.
  cut -c1-160 out/demo-embeddings.jsonl | sed 's/$/…/'
}

run_tests() {
  log "native tests"
  cargo test --release
  log "wasm tests in headless Chromium"
  CHROMEDRIVER=$(command -v chromedriver) cargo test --release --target wasm32-unknown-unknown --no-default-features --test web
}

case "${1:-}" in
  "") setup; demo ;;
  test) setup; run_tests ;;
  setup) setup ;;
  wasm) setup; build_wasm ;;
  *) echo "usage: ./build.sh [test|setup|wasm]" >&2; exit 2 ;;
esac
