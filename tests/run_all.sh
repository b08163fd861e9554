#!/usr/bin/env bash
# Runs every test of s3serve, in order:
#   1. unit and model tests (Check, via ctest) on the Release build in build/
#   2. the same unit tests built with AddressSanitizer + UndefinedBehaviorSanitizer and
#      -Werror, without the CUDA backend (build-asan/)
#   3. further suites that exist: HTTP tests with real clients (tests/http/run.sh),
#      evaluation harness tests (tests/eval/run.sh)
#   4. libFuzzer targets (tests/fuzz/run.sh, clang + ASan/UBSan in build-fuzz/), FUZZ_SECONDS
#      each (30 here)
# Expects deploy/setup.sh to have run (packages, model, build). Exit status 0 only when all pass.
set -uo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)
# Check's 4 s default per test case is too tight for thread-pool and model tests on a busy
# 2-core machine (and under ASan); cases that need more set their own timeouts
export CK_DEFAULT_TIMEOUT=${CK_DEFAULT_TIMEOUT:-120}
passed=0
failed=0
failed_names=()

step() {
    local name=$1
    shift
    printf '\n==== %s\n' "$name"
    local t0=$SECONDS
    if "$@"; then
        passed=$((passed + 1))
        printf '==== %s: ok (%ds)\n' "$name" $((SECONDS - t0))
    else
        failed=$((failed + 1))
        failed_names+=("$name")
        printf '==== %s: FAILED (%ds)\n' "$name" $((SECONDS - t0))
    fi
}

build_release() {
    # the build deploy/setup.sh made (CUDA backend included where nvcc exists)
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null &&
        cmake --build build -j"$jobs" 2>&1 | grep -Ev '^\[ *[0-9]+%\]' ; return "${PIPESTATUS[0]}"
}
unit_release() {
    ctest --test-dir build --output-on-failure -j"$jobs" --timeout 900
}
build_asan() {
    # warnings are errors here; CUDA off, so the build without a GPU backend is checked too
    cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DS3_ASAN=ON -DS3_UBSAN=ON \
        -DS3_WERROR=ON -DS3_CUDA=OFF >/dev/null &&
        cmake --build build-asan -j"$jobs" 2>&1 | grep -Ev '^\[ *[0-9]+%\]' ; return "${PIPESTATUS[0]}"
}
unit_asan() {
    S3_TEST_QUICK=1 CK_TIMEOUT_MULTIPLIER=3 ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        ctest --test-dir build-asan --output-on-failure -j"$jobs" --timeout 1800
}

step "build (Release)" build_release
step "unit tests (Release)" unit_release
step "build (ASan+UBSan, -Werror, no CUDA)" build_asan
step "unit tests (ASan+UBSan)" unit_asan
for suite in tests/http/run.sh tests/eval/run.sh; do
    [ -x "$suite" ] && step "$suite" "$suite"
done
fuzz() {
    FUZZ_SECONDS=${FUZZ_SECONDS:-30} FUZZ_SEED=${FUZZ_SEED:-1} tests/fuzz/run.sh
}
[ -x tests/fuzz/run.sh ] && step "tests/fuzz/run.sh (libFuzzer, ${FUZZ_SECONDS:-30} s per target)" fuzz

printf '\n'
[ "$failed" -gt 0 ] && printf 'failed: %s\n' "${failed_names[*]}"
printf '%d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
