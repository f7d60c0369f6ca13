#!/usr/bin/env bash
# The real-NAT lab: builds network namespaces with nftables NAT and runs,
# one after the other, natlab's selftest, the matrix of NAT pairs x
# transports x relayed RTTs driving the dcutr CLI (extra arguments go to
# `natlab matrix`, e.g. --runs 10), the symmetric/symmetric cases again
# with coturn on the relay host and `dcutr peer --stun` (`natlab matrix
# --stun`: both must fail at once), the birthday punch's QUIC cases in
# both roles with --stun (both must upgrade), the sequential-NAT pairs
# with --stun (all must upgrade), and stock rust-libp2p against
# dcutr-libp2p (`natlab libp2p --runs 1`).
# Needs root (it creates namespaces); otherwise it prints
# "natlab: skipped (needs root)" and exits 0. Installs missing lab tools
# first (scripts/install-natlab-tools.sh, scripts/install-coturn.sh).
# The Markdown tables land in $CARGO_TARGET_DIR (default target/):
# natlab-report.md (matrix), natlab-stun.md and natlab-libp2p.md.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ] || ! ip netns list >/dev/null 2>&1; then
    echo "natlab: skipped (needs root)"
    exit 0
fi
scripts/install-natlab-tools.sh
scripts/install-coturn.sh
target=${CARGO_TARGET_DIR:-target}
# natlab libp2p drives the dcutr CLI (`dcutr libp2p`), built with the workspace's
# features (the same libp2p build as the rest of the test suite).
cargo build --locked --workspace --lib --bins --examples
timed() {
    local started=$SECONDS
    "$@"
    echo "natlab: '$*' took $((SECONDS - started)) s"
}
timed "$target/debug/natlab" selftest
timed "$target/debug/natlab" matrix --markdown "$target/natlab-report.md" "$@"
timed "$target/debug/natlab" matrix --stun --filter symmetric/symmetric \
    --markdown "$target/natlab-stun.md"
# The birthday punch over QUIC, in both roles (issue 13): it needs both
# NATs known, so these cases run with --stun.
timed "$target/debug/natlab" matrix --stun --filter "symmetric/cone quic" \
    --markdown "$target/natlab-birthday-hard-a.md"
timed "$target/debug/natlab" matrix --stun --filter "port-restricted/symmetric quic" \
    --markdown "$target/natlab-birthday-hard-b.md"
# The same over TCP (TCP simultaneous open from the many connects).
timed "$target/debug/natlab" matrix --stun --filter "symmetric/cone tcp" \
    --markdown "$target/natlab-birthday-tcp-hard-a.md"
timed "$target/debug/natlab" matrix --stun --filter "port-restricted/symmetric tcp" \
    --markdown "$target/natlab-birthday-tcp-hard-b.md"
# A sequential symmetric NAT on either side (issue 13): the core predicts
# its next mappings from what the STUN servers saw; --stun only.
timed "$target/debug/natlab" matrix --stun --filter sequential \
    --markdown "$target/natlab-sequential.md"
timed "$target/debug/natlab" libp2p --runs 1 --markdown "$target/natlab-libp2p.md"
