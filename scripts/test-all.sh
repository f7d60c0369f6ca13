#!/usr/bin/env bash
# The whole test suite of dcutr-rs, as a new user and CI run it:
#   ./scripts/test-all.sh
# Works from a clean clone. Installs what it needs when missing: the Rust
# components it uses (rustfmt, clippy), cargo-fuzz for the fuzz smoke run,
# and, as root, the Debian packages of the NAT lab
# (scripts/install-natlab-tools.sh). The NAT lab (scripts/natlab-matrix.sh
# and the root-only tests of natlab, `cargo test -p dcutr-natlab --
# --ignored`, and of dcutr-tokio's victim_budget) needs root; the fuzz smoke run needs a nightly toolchain.
# The last line says which parts ran and which were skipped, and why:
#   parts: format build crates-alone clippy tests docs public-api coturn natlab fuzz; skipped: none
#   parts: format build crates-alone clippy tests docs public-api fuzz; skipped: coturn (needs root to install), natlab (needs root)
# "all tests passed" is printed only when no part was skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s (%s) ===\n' "$1" "$(date +%T)"; }
started=$(date +%s)

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust from https://rustup.rs first" >&2
    exit 1
fi
if command -v rustup >/dev/null 2>&1; then
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

ran=()
skipped=()

step "format"
cargo fmt --all -- --check
ran+=(format)

step "build"
cargo build --workspace --all-targets --locked
ran+=(build)

step "each published crate alone"
# A workspace build unifies features (natlab and the tests enable
# dcutr-core's `internals`); users depend on one crate, so each must build
# with its own features only.
for crate in dcutr-core dcutr-driver dcutr-tokio dcutr-async-std dcutr-libp2p; do
    cargo check --locked -q -p "$crate"
done
ran+=(crates-alone)

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
ran+=(clippy)

step "tests"
cargo test --workspace --locked
ran+=(tests)

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked
ran+=(docs)

step "public API"
# dcutr-core's public items against the committed snapshot.
scripts/public-api.sh check
ran+=(public-api)

step "STUN against coturn"
scripts/install-coturn.sh
if command -v turnserver >/dev/null 2>&1; then
    cargo test --locked -p dcutr-cli --test netcheck -- --ignored
    ran+=(coturn)
else
    echo "coturn: skipped (turnserver not installed; installing it needs root)"
    skipped+=("coturn (needs root to install)")
fi

# The fuzz targets take the longest build of the suite (libp2p and the CLI,
# instrumented, in release mode), while the NAT lab mostly waits on
# timeouts and delay lines: build them meanwhile, at the lowest CPU
# priority so the lab's timings are not the build's.
fuzz_build_log=$(mktemp)
fuzz_build_pid=
if cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: building the targets in the background (log: $fuzz_build_log)"
    # Its own process group, so that a failing lab stops the build too.
    setsid nice -n 19 scripts/fuzz.sh build >"$fuzz_build_log" 2>&1 &
    fuzz_build_pid=$!
    trap 'kill -- "-$fuzz_build_pid" 2>/dev/null || true' EXIT
fi

step "NAT lab"
if [ "$(id -u)" -eq 0 ] && ip netns list >/dev/null 2>&1; then
    scripts/natlab-matrix.sh
    # The root-only lab tests (marked #[ignore = "needs root"]), one at a time.
    cargo test --locked -p dcutr-natlab -- --ignored --test-threads=1
    # A silent victim in namespaces of its own: what a hostile peer gets
    # out of our standalone peer (the measured figures in SECURITY.md).
    cargo test --locked -p dcutr-tokio --test victim_budget -- --ignored --nocapture
    ran+=(natlab)
else
    echo "natlab: skipped (needs root)"
    skipped+=("natlab (needs root)")
fi

step "fuzz smoke"
if [ -n "$fuzz_build_pid" ]; then
    if ! wait "$fuzz_build_pid"; then
        cat "$fuzz_build_log"
        echo "fuzz: the background build failed (log above)" >&2
        exit 1
    fi
    trap - EXIT
    tail -1 "$fuzz_build_log"
fi
if cargo +nightly --version >/dev/null 2>&1; then
    scripts/fuzz.sh smoke
    ran+=(fuzz)
else
    echo "fuzz: skipped (no nightly toolchain)"
    skipped+=("fuzz (no nightly toolchain)")
fi

elapsed=$(( $(date +%s) - started ))
if [ ${#skipped[@]} -eq 0 ]; then
    printf '\nall tests passed in %ss\n' "$elapsed"
    skipped_text=none
else
    printf '\nthe parts that ran passed, in %ss; some parts did not run\n' "$elapsed"
    skipped_text=$(IFS=,; echo "${skipped[*]}" | sed 's/,/, /g')
fi
echo "parts: ${ran[*]}; skipped: $skipped_text"
