#!/usr/bin/env bash
# Fuzzing with cargo-fuzz (libFuzzer) of dcutr-core, the rendezvous relay and
# the libp2p behaviour; the targets live in fuzz/.
#
#   scripts/fuzz.sh smoke               every target for FUZZ_SMOKE_SECONDS (default 20) s: what CI runs
#   scripts/fuzz.sh long [SECONDS]      every target for SECONDS (default 3600) s, one after the other
#   scripts/fuzz.sh run TARGET [SECONDS]  one target (default 300 s)
#   scripts/fuzz.sh build               only build every target (test-all.sh builds them
#                                       in the background while the NAT lab waits on the network)
#   scripts/fuzz.sh list                the targets
#
# Each run starts from the committed seed corpus fuzz/corpus/TARGET (read
# only) plus a working corpus in fuzz/target/corpus/TARGET that grows across
# runs; crashes land in fuzz/artifacts/TARGET/ and make the script exit 1
# after the remaining targets have run. Logs: fuzz/target/logs/TARGET.log.
# One libFuzzer process at a time, in-process (no -jobs/-workers fork), so a
# run takes one core.
#
# Environment:
#   FUZZ_TARGETS="a b"     run only these targets
#   FUZZ_SANITIZER=none    build without AddressSanitizer (faster; default: address)
#   FUZZ_ARGS="..."        extra libFuzzer flags
#   DCUTR_FUZZ_STRICT=1    also check the invariants of known, already reported
#                          bugs (see dcutr-core/tests/fuzz_regressions.rs)
#
# Needs the nightly toolchain (cargo +nightly); installs cargo-fuzz with
# `cargo install cargo-fuzz --locked` when it is missing. Without nightly it
# prints "fuzz: skipped (no nightly toolchain)" and exits 0: the property
# tests (cargo test -p dcutr-core --test properties) and the regression tests
# still run on stable.
set -euo pipefail
cd "$(dirname "$0")/.."

ALL_TARGETS=(frame_decoder codec_parse upgrade_initiator upgrade_responder orchestrator rendezvous_line libp2p_stream)

usage() {
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

mode=${1:-}
case "$mode" in
    smoke) seconds=${FUZZ_SMOKE_SECONDS:-20}; targets=(${FUZZ_TARGETS:-${ALL_TARGETS[*]}}) ;;
    long) seconds=${2:-3600}; targets=(${FUZZ_TARGETS:-${ALL_TARGETS[*]}}) ;;
    run) [ -n "${2:-}" ] || usage; targets=("$2"); seconds=${3:-300} ;;
    build) targets=() ;;
    list) printf '%s\n' "${ALL_TARGETS[@]}"; exit 0 ;;
    *) usage ;;
esac
case "${seconds:-0}" in '' | *[!0-9]*) echo "fuzz: SECONDS must be a whole number" >&2; exit 2 ;; esac

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: skipped (no nightly toolchain)"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

sanitizer=${FUZZ_SANITIZER:-address}
echo "fuzz: building the targets (sanitizer: $sanitizer)"
(cd fuzz && cargo +nightly fuzz build --sanitizer "$sanitizer")
if [ "$mode" = build ]; then
    echo "fuzz: built"
    exit 0
fi

mkdir -p fuzz/target/logs
failed=()
summary=()
for target in "${targets[@]}"; do
    work=fuzz/target/corpus/$target
    seeds=fuzz/corpus/$target
    mkdir -p "$work" "$seeds" "fuzz/artifacts/$target"
    log=fuzz/target/logs/$target.log
    echo "fuzz: $target for ${seconds}s (log: $log)"
    status=0
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
    (cd fuzz && cargo +nightly fuzz run --sanitizer "$sanitizer" "$target" \
        "../$work" "../$seeds" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 ${FUZZ_ARGS:-}) >"$log" 2>&1 || status=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    if [ "$status" -eq 0 ]; then
        result=ok
    else
        result="FAILED (exit $status)"
        failed+=("$target")
        grep -E "panicked at|^SUMMARY|Test unit written to" "$log" | head -5 | sed 's/^/    /' || true
    fi
    line=$(printf '%-18s %8ss %12s execs %8s execs/s  cov %-6s %s' \
        "$target" "$seconds" "${runs:-?}" "${rate:-?}" "${cov:-?}" "$result")
    echo "fuzz: $line"
    summary+=("$line")
done

echo
echo "fuzz summary:"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: FAILED: ${failed[*]} (crashes in fuzz/artifacts/, reproduce with"
    echo "      (cd fuzz && cargo +nightly fuzz run TARGET artifacts/TARGET/crash-...))"
    exit 1
fi
echo "fuzz: passed"
