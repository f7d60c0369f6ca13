#!/usr/bin/env bash
# The whole test suite of dcutr-rs, as a new user and CI run it:
#   ./scripts/test-all.sh
# Works from a clean clone. Installs what it needs when missing: the Rust
# components it uses (rustfmt, clippy), cargo-fuzz for the fuzz smoke run,
# and, as root, the Debian packages of the NAT lab (nftables, conntrack,
# ethtool). Without root the NAT lab prints "natlab: skipped (needs root)".
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

step "format"
cargo fmt --all -- --check

step "build"
cargo build --workspace --all-targets --locked

step "clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
cargo test --workspace --locked

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

if [ -x scripts/natlab-matrix.sh ]; then
    step "NAT lab matrix"
    scripts/natlab-matrix.sh
fi

if [ -x scripts/fuzz.sh ]; then
    step "fuzz smoke"
    scripts/fuzz.sh smoke
fi

printf '\nall tests passed in %ss\n' "$(( $(date +%s) - started ))"
