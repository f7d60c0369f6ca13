#!/usr/bin/env bash
# The public API of dcutr-core, listed from its rustdoc JSON and checked
# against the committed snapshot dcutr-core/public-api.txt.
#
#   scripts/public-api.sh check    fails when the API changed without the snapshot (CI)
#   scripts/public-api.sh update   rewrites the snapshot after a deliberate change
#
# rustdoc's JSON output is unstable, so this asks the stable toolchain for
# it with RUSTC_BOOTSTRAP=1; only the listing (scripts/public_api.py) is
# compared, never the JSON itself. It also fails when one item is public
# under two paths.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-check}
out=target/public-api
RUSTC_BOOTSTRAP=1 RUSTDOCFLAGS="-Z unstable-options --output-format json" \
    CARGO_TARGET_DIR="$out" cargo doc --locked -p dcutr-core --no-deps --quiet
listing=$(python3 scripts/public_api.py "$out/doc/dcutr_core.json" --summary 2>"$out/summary.txt")
cat "$out/summary.txt"
if grep -q '^# more than one path' "$out/summary.txt"; then
    echo "public-api: an item is public under two paths (see above); keep one" >&2
    exit 1
fi
case "$mode" in
    update) printf '%s\n' "$listing" > dcutr-core/public-api.txt; echo "public-api: snapshot updated" ;;
    check)
        if ! diff -u dcutr-core/public-api.txt <(printf '%s\n' "$listing"); then
            echo "public-api: dcutr-core's public API changed; if that is intended, run scripts/public-api.sh update and commit the snapshot" >&2
            exit 1
        fi
        echo "public-api: dcutr-core matches its snapshot ($(printf '%s\n' "$listing" | wc -l) items)" ;;
    *) echo "usage: $0 check|update" >&2; exit 2 ;;
esac
