#!/usr/bin/env bash
# Builds the libFuzzer targets in build-fuzz (clang, ASan, UBSan) and runs
# each for the given seconds (default 30) from its seeds in
# tests/fuzz/corpus/, one after the other. Prints one summary line per
# target; exits non-zero when any target crashed, leaked, hung past
# -timeout or went over -rss_limit_mb, with the reproducer's path.
#
#   tests/fuzz/run.sh [seconds] [target ...]
#
# New inputs go to build-fuzz/fuzz-work/<target> (thrown away on the next
# run), crashes to build-fuzz/fuzz-artifacts/<target>/; the committed
# corpus is only read. FUZZ_NICE=1 runs the fuzzers under nice -n 19;
# FUZZ_BUILD names another build directory.
set -euo pipefail
cd "$(dirname "$0")/../.."

secs=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] ||
    targets=(fuzz_frame fuzz_jwt fuzz_jpeg fuzz_config fuzz_http)
nice_cmd=()
[ "${FUZZ_NICE:-0}" = 1 ] && nice_cmd=(nice -n 19)

build=${FUZZ_BUILD:-build-fuzz}
CC=clang CXX=clang++ cmake -S . -B "$build" -DPROCTORD_FUZZ=ON \
    -DPROCTORD_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}" >/dev/null

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

# The value of "stat::name: value" in libFuzzer's final stats.
stat() { sed -n "s/^stat::$1: *//p" "$2" | tail -n 1; }

failed=0
for t in "${targets[@]}"; do
    work=$build/fuzz-work/$t
    art=$build/fuzz-artifacts/$t
    log=$build/fuzz-$t.log
    rm -rf "$work"
    mkdir -p "$work" "$art"
    rc=0
    "${nice_cmd[@]}" "$build/tests/fuzz/$t" -max_total_time="$secs" \
        -rss_limit_mb=2048 -timeout=10 -max_len=65536 -print_final_stats=1 \
        -artifact_prefix="$art/" "$work" "tests/fuzz/corpus/$t" \
        >"$log" 2>&1 || rc=$?
    done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$done_line")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$done_line")
    corp=$(sed -n 's/.* corp: \([0-9]*\).*/\1/p' <<<"$done_line")
    runs=$(stat number_of_executed_units "$log")
    rate=$(stat average_exec_per_sec "$log")
    if [ "$rc" -eq 0 ] && [ -n "$done_line" ]; then
        echo "fuzz: $t ok ${secs}s runs=${runs:-?} exec/s=${rate:-?}" \
             "cov=${cov:-?} ft=${ft:-?} corpus=${corp:-?}"
    else
        failed=1
        echo "fuzz: $t FAILED rc=$rc after runs=${runs:-?} (log $log)"
        grep -E 'ERROR:|SUMMARY:|Test unit written|runtime error' "$log" |
            head -n 8 | sed 's/^/    /'
    fi
done
exit "$failed"
