#!/usr/bin/env bash
# Prefill and decode speed of s3serve's engine next to llama.cpp's own llama-bench, on the same
# model file, the same threads, in the same run.
#
#   bench/engine_vs_llamacpp.sh [MODEL] [THREADS]
#   AVX2=1 bench/engine_vs_llamacpp.sh   # both sides on AVX2/FMA code only (llama.cpp built
#                                        # without AVX512/AMX, s3serve with S3_SIMD=avx2)
#
# llama.cpp is built from the source that the PyPI sdist of llama-cpp-python (pinned below)
# vendors; it is built once into .cache/llama.cpp/ (native CPU flags) and reused.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
THREADS=${2:-2}
PEER_PKG="llama-cpp-python==0.3.16"
PEER_DIR=.cache/llama.cpp
REPS=${REPS:-3}

BUILD=build
SIMD_FLAGS="-DGGML_NATIVE=ON"
if [ "${AVX2:-0}" = 1 ]; then
    BUILD=build-avx2
    SIMD_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
        -DGGML_AVX512=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF"
    export S3_SIMD=avx2
fi
bench_bin="$PEER_DIR/$BUILD/bin/llama-bench"
if [ ! -x "$bench_bin" ]; then
    mkdir -p "$PEER_DIR"
    if [ ! -d "$PEER_DIR/src" ]; then
        python3 -m pip download --quiet --no-deps --no-binary :all: --dest "$PEER_DIR" "$PEER_PKG"
        mkdir -p "$PEER_DIR/src"
        tar xzf "$PEER_DIR"/llama_cpp_python-*.tar.gz -C "$PEER_DIR/src" --strip-components=3 \
            --wildcards '*/vendor/llama.cpp/*'
    fi
    # shellcheck disable=SC2086
    cmake -S "$PEER_DIR/src" -B "$PEER_DIR/$BUILD" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
        $SIMD_FLAGS -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >/dev/null
    cmake --build "$PEER_DIR/$BUILD" --target llama-bench -j"$(nproc)" >/dev/null
fi

peak() { # run a command, print its output, then its peak RSS in MiB on stderr
    local f
    f=$(mktemp)
    /usr/bin/time -f '%M' -o "$f" "$@"
    printf 'peak_rss_mib=%.1f\n' "$(echo "$(cat "$f") / 1024" | bc -l)"
    rm -f "$f"
}

echo "## llama.cpp llama-bench ($PEER_PKG sources, $BUILD), $THREADS threads"
peak "$bench_bin" -m "$MODEL" -t "$THREADS" -p 512,2048 -n 128 -r "$REPS" -o md
echo
echo "## s3serve bench-engine, $THREADS threads${S3_SIMD:+, S3_SIMD=$S3_SIMD}"
peak build/s3serve bench-engine --model "$MODEL" --threads "$THREADS" --prompt-tokens 512,2048 \
    --gen-tokens 128 --reps "$REPS"
