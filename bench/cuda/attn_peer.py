# Attention peers for `s3cuda_bench attn`: PyTorch's scaled_dot_product_attention on the
# same causal chunks (2048 queries over their own keys, fp16), with each backend PyTorch has
# (flash = FlashAttention-2, cudnn = cuDNN's fused attention, efficient = memory-efficient).
# KV heads are expanded to the query heads first (outside the timing). Prints one JSON line
# per case in the shape of s3cuda_bench attn's.
import json, sys
import torch
import torch.nn.functional as F
from torch.nn.attention import sdpa_kernel, SDPBackend

CASES = [("chunk2048-8b", 32, 8, 128), ("chunk2048-135m", 9, 3, 64)]
BACKENDS = [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
            ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
N, REPS = 2048, 50

for name, h, hkv, hd in CASES:
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(1, h, N, hd, device="cuda", dtype=torch.float16, generator=g)
    k = torch.randn(1, hkv, N, hd, device="cuda", dtype=torch.float16, generator=g)
    v = torch.randn(1, hkv, N, hd, device="cuda", dtype=torch.float16, generator=g)
    k, v = k.repeat_interleave(h // hkv, 1), v.repeat_interleave(h // hkv, 1)
    flop = 4.0 * hd * h * N * (N + 1) / 2
    for label, be in BACKENDS:
        try:
            with sdpa_kernel([be]):
                for _ in range(3):
                    F.scaled_dot_product_attention(q, k, v, is_causal=True)
                e0 = torch.cuda.Event(enable_timing=True)
                e1 = torch.cuda.Event(enable_timing=True)
                e0.record()
                for _ in range(REPS):
                    F.scaled_dot_product_attention(q, k, v, is_causal=True)
                e1.record()
                torch.cuda.synchronize()
            us = e0.elapsed_time(e1) * 1000.0 / REPS
            print(json.dumps({"bench": "attn_peer", "case": name, "backend": label,
                              "torch": torch.__version__, "us": round(us, 1),
                              "tflops": round(flop / us / 1e6, 1)}))
        except RuntimeError as ex:
            print(json.dumps({"bench": "attn_peer", "case": name, "backend": label,
                              "error": str(ex).splitlines()[0][:120]}))
        sys.stdout.flush()
