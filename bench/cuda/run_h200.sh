#!/bin/bash
# bench/cuda/run_h200.sh - build, test and benchmark the CUDA path on a GPU machine in one go.
# Expects, in the repository root: vendor-deb/vendor.tar.xz (the Debian -dev packages and
# runtime libraries the build needs, as `usr/...`: bench/cuda/make_vendor.sh builds it) and vendor-deb/slice3.gguf (the first 3
# layers of the default model: `s3serve gguf-synth --slice 3 --out vendor-deb/slice3.gguf`).
# Optional: vendor-deb/slice3.s3sae (an SAE trained on that slice: `s3serve train-sae --model
# vendor-deb/slice3.gguf --layers 0,1,2 --out vendor-deb/slice3.s3sae`): cuda_test_scan then
# compares the devices with it (S3_CUDA_SAE), and BENCH_SCAN=1 runs the CPU scan's
# bench-scan (peak RSS per size) on the slice with it, on all cores.
# Writes logs under $OUT (default ./out-h200). Usage: bash bench/cuda/run_h200.sh [quick|kernels]
# (quick: stop after the tests; kernels: after the kernel benchmarks attn, gemm, sae).
# Switches (environment): TESTS=0, MEMCHECK=0, ATTN=0, INDEX_BENCH=0, SCAN_135M=0, SCAN_8B=0,
# INGEST_8B=0 skip those parts; SMI=1 samples clocks and power (smi.csv); KEEP_MODELS=1 keeps the 8B file; INGEST_REPEAT runs the 135M ingest that many times; TOKENS_8B,
# TOKENS_135M, INGEST_SIZES (e.g. "32768 131072 1048576"; INGEST_TOKENS: one), BENCH_SCAN_SIZES
# set the sizes; INGEST_OVERLAP the ingest passes' overlap prefix (default 128, the product's).
set -u
OUT=${OUT:-$PWD/out-h200}; mkdir -p "$OUT"
ROOT=$PWD; V=$ROOT/vendor-deb/root; B=$ROOT/build-h200; M=$B/synth-models; mkdir -p $M
log() { echo "== $* ($(date +%T))"; }
log info
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
nvcc --version | tail -1; cmake --version | head -1; gcc --version | head -1; nproc
# SMI=1: the GPU's clocks, power and throttle reasons every 100 ms through the run (smi.csv)
if [ "${SMI:-0}" = 1 ]; then
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,temperature.gpu,clocks_throttle_reasons.active \
    --format=csv,noheader -lms 100 > $OUT/smi.csv 2>&1 &
  SMI_PID=$!; trap 'kill $SMI_PID 2>/dev/null' EXIT
fi
mkdir -p $V && tar -C $V -xJf vendor-deb/vendor.tar.xz
# nettle at run time is the machine's own (its gnutls may need a newer one than Debian 12's;
# same soname): the vendored headers and libnettle.so link against it
if [ -e /lib/x86_64-linux-gnu/libnettle.so.8 ]; then
  rm -f $V/usr/lib/x86_64-linux-gnu/libnettle.so.8*
  ln -sf /lib/x86_64-linux-gnu/libnettle.so.8 $V/usr/lib/x86_64-linux-gnu/libnettle.so
fi
PC=$V/usr/lib/x86_64-linux-gnu/pkgconfig
cat > $PC/gnutls.pc <<PCEOF
Name: gnutls
Description: build-only stub (libmicrohttpd's private requirement)
Version: 3.7.9
PCEOF
export PKG_CONFIG_LIBDIR=$PC:$V/usr/lib/x86_64-linux-gnu/openblas-pthread/pkgconfig
export PKG_CONFIG_SYSROOT_DIR=$V
export LD_LIBRARY_PATH=$V/usr/lib/x86_64-linux-gnu:$V/usr/lib/x86_64-linux-gnu/openblas-pthread:${LD_LIBRARY_PATH:-}
export LDFLAGS="-Wl,-rpath-link,$V/usr/lib/x86_64-linux-gnu -Wl,-rpath-link,$V/usr/lib/x86_64-linux-gnu/openblas-pthread"
log configure
cmake -S . -B $B -DS3_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a -DCMAKE_BUILD_TYPE=Release \
  > $OUT/configure.log 2>&1 || { tail -30 $OUT/configure.log; exit 1; }
log build
cmake --build $B -j16 --target cuda_test_kernels cuda_test_backend cuda_test_forward cuda_test_scan s3cuda_bench s3serve s3index_bench \
  > $OUT/build.log 2>&1 || { grep -E "error|Error" $OUT/build.log | head -30; tail -20 $OUT/build.log; exit 1; }
ldd $B/cuda_test_kernels | grep "not found"
SAE3=$ROOT/vendor-deb/slice3.s3sae; [ -f $SAE3 ] || SAE3=
if [ "${TESTS:-1}" = 1 ]; then
log tests
S3_ROOT=$ROOT $B/cuda_test_kernels > $OUT/test_kernels.log 2>&1; KRC=$?
grep -E "attn|Checks|Failure|Error" $OUT/test_kernels.log | tail -30
# a failing kernel test leaves the benchmarks on the single-stage attention kernel
[ $KRC -ne 0 ] && { echo "kernel tests FAILED: benchmarks with S3_CUDA_ATTN=1"; export S3_CUDA_ATTN=1; }
S3_ROOT=$ROOT $B/cuda_test_backend 2>&1 | tee $OUT/test_backend.log | grep -E "backend|Checks|Failure|Error"
S3_ROOT=$ROOT S3_CUDA_MODEL=$ROOT/vendor-deb/slice3.gguf $B/cuda_test_forward 2>&1 | tee $OUT/test_forward.log | tail -8
S3_ROOT=$ROOT S3_CUDA_MODEL=$ROOT/vendor-deb/slice3.gguf S3_CUDA_SAE=$SAE3 $B/cuda_test_scan 2>&1 | tee $OUT/test_scan.log | tail -30
fi
if [ "${MEMCHECK:-1}" = 1 ]; then
log memcheck
S3_CUDA_GEMM_TUNE_MS=1 timeout 150 compute-sanitizer --tool memcheck --leak-check full --report-api-errors no $B/cuda_test_kernels > $OUT/memcheck.log 2>&1
grep -E "ERROR SUMMARY|Checks" $OUT/memcheck.log
timeout 120 compute-sanitizer --tool memcheck --leak-check full --report-api-errors no $B/cuda_test_backend > $OUT/memcheck_backend.log 2>&1
grep -E "ERROR SUMMARY|Checks" $OUT/memcheck_backend.log
# the whole-model and scan tests (the device encoder's second context and stream live there)
S3_ROOT=$ROOT S3_CUDA_MODEL=$ROOT/vendor-deb/slice3.gguf timeout 240 compute-sanitizer --tool memcheck --leak-check full --report-api-errors no $B/cuda_test_forward > $OUT/memcheck_forward.log 2>&1
grep -E "ERROR SUMMARY|Checks" $OUT/memcheck_forward.log
S3_ROOT=$ROOT S3_CUDA_MODEL=$ROOT/vendor-deb/slice3.gguf S3_CUDA_SAE=$SAE3 timeout 300 compute-sanitizer --tool memcheck --leak-check full --report-api-errors no $B/cuda_test_scan > $OUT/memcheck_scan.log 2>&1
grep -E "ERROR SUMMARY|Checks" $OUT/memcheck_scan.log
fi
[ "${1:-}" = quick ] && exit 0
if [ "${ATTN:-1}" = 1 ]; then
log bench-attn
$B/bench_cuda/s3cuda_bench attn 2>&1 | tee $OUT/bench_attn.jsonl
# the peers on the same chunks (PyTorch SDPA: FlashAttention-2, cuDNN), where PyTorch is installed
python3 -c "import torch" 2>/dev/null && python3 bench/cuda/attn_peer.py 2>&1 | grep '^{' | tee -a $OUT/bench_attn.jsonl
log bench-gemm
$B/bench_cuda/s3cuda_bench gemm 2>&1 | tee $OUT/bench_gemm.jsonl
# each candidate timed over 2 x 200 ms instead of 2 x 10 ms
S3_CUDA_GEMM_TUNE_MS=200 $B/bench_cuda/s3cuda_bench gemm 2>&1 | sed 's/"gemm"/"gemm_sustained"/' | tee -a $OUT/bench_gemm.jsonl
log bench-sae
$B/bench_cuda/s3cuda_bench sae 2>&1 | tee $OUT/bench_sae.jsonl
fi
[ "${1:-}" = kernels ] && exit 0
# the index writer and retrieval alone (no model): the 135M and 8B shapes' slot counts
if [ "${INDEX_BENCH:-1}" = 1 ]; then
log bench-index
for ns in 12 32; do
$B/s3index_bench --tokens ${INGEST_TOKENS:-1048576} --slots $ns --db $B/index_bench.db 2>&1 | tee -a $OUT/bench_index.jsonl
done
fi
# ingest: the product's pipelined scan with SQLite writing over a 1M-token document, then a
# question (time to first token, decode tok/s)
log bench-135m
$B/bench_cuda/s3cuda_bench synth --shape smollm2-135m --type q4_1 --out $M/smol.gguf
for rep in $(seq ${INGEST_REPEAT:-1}); do for nt in ${INGEST_SIZES:-${INGEST_TOKENS:-1048576}}; do
timeout ${INGEST_TIMEOUT:-240} $B/bench_cuda/s3cuda_bench ingest --model $M/smol.gguf --label smollm2-135m --tokens $nt \
  --overlap ${INGEST_OVERLAP:-128} --hook 3,8,23,29 --sae-dict 2048 --sae-k 16 --decode 64 --db $B/ingest.db 2>&1 | tee -a $OUT/ingest_135m.jsonl
irc=${PIPESTATUS[0]}; [ $irc = 0 ] || echo "ingest 135m FAILED (exit $irc)"
done; done
[ "${SCAN_135M:-1}" = 1 ] && $B/bench_cuda/s3cuda_bench scan --model $M/smol.gguf --label smollm2-135m --tokens ${TOKENS_135M:-32768,131072,1048576} \
  --hook 3,8,23,29 --sae-dict 2048 --sae-k 16 --compare 1 2>&1 | tee $OUT/bench_135m.jsonl
if [ "${INGEST_8B:-1}" = 1 ] || [ "${SCAN_8B:-1}" = 1 ]; then
log bench-8b
$B/bench_cuda/s3cuda_bench synth --shape llama3-8b --type q4_1 --out $M/l8b.gguf
if [ "${INGEST_8B:-1}" = 1 ]; then for nt in ${INGEST_SIZES:-${INGEST_TOKENS:-1048576}}; do
timeout ${INGEST_TIMEOUT:-240} $B/bench_cuda/s3cuda_bench ingest --model $M/l8b.gguf --label llama3-8b --tokens $nt \
  --overlap ${INGEST_OVERLAP:-128} --hook 3,9,24,31 --sae-dict 2048 --sae-k 16 --decode 64 --db $B/ingest.db 2>&1 | tee -a $OUT/ingest_8b.jsonl
irc=${PIPESTATUS[0]}; [ $irc = 0 ] || echo "ingest 8b FAILED (exit $irc)"
done; fi
[ "${SCAN_8B:-1}" = 1 ] && $B/bench_cuda/s3cuda_bench scan --model $M/l8b.gguf --label llama3-8b --tokens ${TOKENS_8B:-32768,131072,1048576} \
  --hook 3,9,24,31 --sae-dict 2048 --sae-k 16 --decode 64 --compare 1 2>&1 | tee $OUT/bench_8b.jsonl
[ "${KEEP_MODELS:-0}" = 1 ] || rm -f $M/l8b.gguf
fi
if [ "${BENCH_SCAN:-0}" = 1 ] && [ -n "$SAE3" ]; then
log bench-scan-cpu
timeout ${BENCH_SCAN_TIMEOUT:-200} $B/s3serve bench-scan --model $ROOT/vendor-deb/slice3.gguf --sae $SAE3 \
  --text $ROOT/models/sae-corpus/heldout.txt --sizes ${BENCH_SCAN_SIZES:-10000,100000,1000000} \
  --baseline-max 10000 --threads $(nproc) 2>&1 | grep -v "^level=" | tee $OUT/bench_scan_cpu.jsonl
fi
log anchor
[ -n "${ANCHOR:-}" ] && PYTHONUNBUFFERED=1 timeout 170 python3 bench/cuda/fullkv_anchor.py 2>&1 | grep -v Warning | tee $OUT/anchor.jsonl
log done
