# Shared helpers of gradswarm's scripts. Source it; it defines functions and sets nothing else.

# Builds go to a cache outside the checkout so that later sessions and CI reuse them.
gs_env() {
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gradswarm-target}"
  export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
}

# Runs the harness scenarios DIR/RUN.toml (one per RUN after DIR) into DIR/RUN.json and .png, with
# $GS_HARNESS or the release build (built when missing); peers of `processes = true` scenarios start
# as that binary. No RUN: nothing (not even the build).
gs_bench_runs() {
  local dir=$1 run harness
  shift
  [ $# -gt 0 ] || return 0
  harness="${GS_HARNESS:-$CARGO_TARGET_DIR/release/swarm-harness}"
  export SWARM_HARNESS_EXE="${SWARM_HARNESS_EXE:-$harness}"
  [ -x "$harness" ] || cargo build --release --locked -p gradswarm-harness
  for run in "$@"; do
    "$harness" run --scenario "$dir/$run.toml" --report "$dir/$run.json"
    "$harness" plot "$dir/$run.json"
  done
}

# Installs the Debian packages that are missing; does nothing (and needs no network) when all are there.
gs_apt_ensure() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# Debian packages gradswarm needs: a C toolchain for zstd, Mesa's lavapipe (a real Vulkan adapter
# on the CPU, for the wgpu tests), fonts-dejavu-core (labels of the harness's plots), python3-venv (the checkpoint test loads files with Python's
# safetensors), nftables (the NAT test's home routers), openssl (the browser test's certificate), and the wasm32 toolchain of
# docs/building.md (Debian's rustc-web with its std source, clang and wasm-ld for zstd's C code).
GS_APT_PACKAGES=(build-essential pkg-config mesa-vulkan-drivers python3-venv fonts-dejavu-core nftables openssl rustc-web cargo-web rust-web-src lld-22 clang-22 llvm-22)

# Runs cargo for wasm32-unknown-unknown with Debian's rustc-web and -Zbuild-std (see WASM.md).
gs_wasm_cargo() {
  RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
  CARGO_TARGET_DIR="${GS_WASM_TARGET_DIR:-$HOME/.cache/gradswarm-wasm-target}" \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=wasm-ld-22 \
  CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUSTFLAGS='--cfg getrandom_backend="wasm_js"' \
  CC_wasm32_unknown_unknown=clang-22 AR_wasm32_unknown_unknown=llvm-ar-22 \
    /usr/bin/cargo "$@" --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort
}

# wasm-bindgen's CLI, built from crates.io once (no prebuilt one is reachable; see WASM.md) and cached.
GS_WASM_TOOLS="${GS_WASM_TOOLS:-$HOME/.cache/wasm-tools}"

# Builds wasm-bindgen-cli at the exact wasm-bindgen version of Cargo.lock, unless the cached one is it.
gs_wasm_bindgen_ensure() {
  local want have
  want=$(grep -A1 '^name = "wasm-bindgen"$' Cargo.lock | sed -n 's/^version = "\(.*\)"$/\1/p')
  have=$("$GS_WASM_TOOLS/bin/wasm-bindgen" --version 2>/dev/null | awk '{print $2}' || true)
  if [ "$have" != "$want" ]; then
    echo "building wasm-bindgen-cli $want (once; cached in $GS_WASM_TOOLS; ~8 min on 2 cores)"
    # Not --locked: its lock file names a webpki-roots version this registry lacks (WASM.md).
    CARGO_TARGET_DIR="$GS_WASM_TOOLS/target" \
      cargo install --quiet --root "$GS_WASM_TOOLS" wasm-bindgen-cli --version "=$want"
  fi
}

# Builds the browser peer into web/www/pkg/ (the wasm module and its JS glue).
gs_build_web() {
  gs_wasm_bindgen_ensure
  gs_wasm_cargo build --release --locked -p gradswarm-web
  # Without its `name` section (function names for stack traces: half the module, 32 of 65 MB;
  # 7.1 → 5.4 MB gzipped). Panics still reach the page with their message.
  "$GS_WASM_TOOLS/bin/wasm-bindgen" --target web --no-typescript --remove-name-section \
    --remove-producers-section --out-dir web/www/pkg \
    "${GS_WASM_TARGET_DIR:-$HOME/.cache/gradswarm-wasm-target}/wasm32-unknown-unknown/release/gradswarm_web.wasm"
}
