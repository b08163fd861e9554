#!/usr/bin/env bash
# Runs every test of s3serve, in order:
#   1. unit and model tests (Check, via ctest) on the Release build in build/
#   2. the same unit tests built with AddressSanitizer + UndefinedBehaviorSanitizer (build-asan/)
#   3. further suites that exist: HTTP tests with real clients (tests/http/run.sh),
#      evaluation harness tests (tests/eval/run.sh)
# Expects deploy/setup.sh to have run (packages, model, build). Exit status 0 only when all pass.
set -uo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)
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
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DS3_WERROR=ON >/dev/null &&
        cmake --build build -j"$jobs" 2>&1 | grep -Ev '^\[ *[0-9]+%\]' ; return "${PIPESTATUS[0]}"
}
unit_release() {
    ctest --test-dir build --output-on-failure -j"$jobs" --timeout 900
}
build_asan() {
    cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DS3_ASAN=ON -DS3_UBSAN=ON \
        -DS3_WERROR=ON >/dev/null &&
        cmake --build build-asan -j"$jobs" 2>&1 | grep -Ev '^\[ *[0-9]+%\]' ; return "${PIPESTATUS[0]}"
}
unit_asan() {
    S3_TEST_QUICK=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:strict_string_checks=1 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        ctest --test-dir build-asan --output-on-failure -j"$jobs" --timeout 1800
}

step "build (Release, -Werror)" build_release
step "unit tests (Release)" unit_release
step "build (ASan+UBSan)" build_asan
step "unit tests (ASan+UBSan)" unit_asan
for suite in tests/http/run.sh tests/eval/run.sh; do
    [ -x "$suite" ] && step "$suite" "$suite"
done

printf '\n'
[ "$failed" -gt 0 ] && printf 'failed: %s\n' "${failed_names[*]}"
printf '%d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
