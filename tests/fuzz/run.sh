#!/usr/bin/env bash
# Builds the libFuzzer drivers (tests/fuzz/fuzz_*.c) with clang, ASan and UBSan in build-fuzz/
# and runs each for FUZZ_SECONDS (default 30) from its committed corpus (tests/fuzz/corpus/
# <name>; new inputs go to build-fuzz/corpus/<name>). Prints one line per target and exits
# non-zero when any target finds a crash, a leak, a timeout or a broken property; the input
# that did it is saved under build-fuzz/artifacts/.
#   FUZZ_SECONDS=60 tests/fuzz/run.sh              # all targets, 60 s each
#   FUZZ_SEED=1 tests/fuzz/run.sh                   # repeatable inputs (as the test command)
#   FUZZ_TARGETS="request config" tests/fuzz/run.sh
#   build-fuzz/fuzz_request build-fuzz/artifacts/request-crash-...   # replay one input
set -uo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
secs=${FUZZ_SECONDS:-30}
# a fixed seed (FUZZ_SEED, tests/run_all.sh sets 1) makes a run repeat the same inputs
seed_opt=${FUZZ_SEED:+-seed=$FUZZ_SEED}
jobs=${FUZZ_BUILD_JOBS:-$(nproc 2>/dev/null || echo 2)}
bdir=build-fuzz
targets=${FUZZ_TARGETS:-"request config tokenizer gguf bm25"}

if ! command -v clang >/dev/null 2>&1; then
    echo "fuzz: clang not found (install clang; libFuzzer comes with it)" >&2
    exit 1
fi
mkdir -p "$bdir"
CC=clang cmake -S . -B "$bdir" -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DS3_FUZZ=ON -DS3_CUDA=OFF -DS3_ASAN=OFF -DS3_UBSAN=OFF -DS3_TSAN=OFF \
    >"$bdir/configure.log" 2>&1 ||
    { cat "$bdir/configure.log"; echo "fuzz: configure failed" >&2; exit 1; }
cmake --build "$bdir" -j"$jobs" --target fuzz 2>&1 | grep -Ev '^\[ *[0-9]+%\]'
[ "${PIPESTATUS[0]}" -eq 0 ] || { echo "fuzz: build failed" >&2; exit 1; }

# per target: the largest input worth trying, and the dictionary (JSON targets)
max_len() {
    case $1 in
    request) echo 8192 ;; config) echo 4096 ;; tokenizer) echo 2048 ;;
    gguf) echo 16384 ;; bm25) echo 1024 ;; *) echo 4096 ;;
    esac
}
dict_of() {
    case $1 in request | config) echo "-dict=tests/fuzz/json.dict" ;; esac
}

export S3_ROOT=$root
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
mkdir -p "$bdir/artifacts" "$bdir/logs"
fails=0
for t in $targets; do
    exe=$bdir/fuzz_$t
    if [ ! -x "$exe" ]; then
        printf 'fuzz_%-10s MISSING\n' "$t"
        fails=$((fails + 1))
        continue
    fi
    mkdir -p "$bdir/corpus/$t"
    log=$bdir/logs/$t.log
    # shellcheck disable=SC2046
    "$exe" $seed_opt -max_total_time="$secs" -max_len="$(max_len "$t")" -timeout=20 -rss_limit_mb=2560 \
        -print_final_stats=1 -artifact_prefix="$bdir/artifacts/$t-" $(dict_of "$t") \
        "$bdir/corpus/$t" "tests/fuzz/corpus/$t" >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)
    if [ "$rc" -eq 0 ]; then
        result=ok
    elif grep -q 'ERROR: LeakSanitizer' "$log"; then
        result=LEAK
    elif grep -q 'ERROR: libFuzzer: timeout' "$log"; then
        result=TIMEOUT
    elif grep -q 'out-of-memory' "$log"; then
        result=OOM
    else
        result=CRASH
    fi
    printf 'fuzz_%-10s %4ss  execs %-9s cov %-6s %s\n' "$t" "$secs" "${execs:-?}" "${cov:-?}" \
        "$result"
    if [ "$rc" -ne 0 ]; then
        fails=$((fails + 1))
        grep -E 'fuzz property failed|ERROR: |SUMMARY: |Test unit written to' "$log" | head -n 8
        echo "  (whole log: $log)"
    fi
done
[ "$fails" -eq 0 ]
