#!/usr/bin/env bash
# The real-NAT lab: builds network namespaces with nftables NAT and runs the
# dcutr CLI through the matrix of NAT pairs x transports x relayed RTTs.
# Needs root (it creates namespaces); otherwise it says so and succeeds.
# The Markdown table lands in target/natlab-report.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ] || ! ip netns list >/dev/null 2>&1; then
    echo "natlab: skipped (needs root)"
    exit 0
fi
cargo build --locked -p dcutr-natlab -p dcutr-cli
target/debug/natlab selftest
target/debug/natlab matrix --markdown target/natlab-report.md "$@"
cargo build --locked --workspace --lib --bins --examples && target/debug/natlab libp2p --runs 1 --markdown target/natlab-libp2p.md
