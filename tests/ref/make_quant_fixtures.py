#!/usr/bin/env python3
"""Write dequantisation fixtures for tests/kernels/test_quant.c.

The expected floats come from an independent implementation: the `gguf` Python package
(gguf.quants.dequantize, numpy). For every block type a few blocks of random bytes are drawn
with a fixed seed; the fp16 scale fields inside each block are overwritten with random
*finite* half values of moderate size, so the expected output has no inf/nan and can be
compared bit for bit.

File format (little endian), tests/fixtures/quant/<TYPE>.bin:
    magic  "S3QF"
    u32    ggml type number
    u32    block size (elements)      -- from gguf.constants.GGML_QUANT_SIZES
    u32    block bytes                -- idem
    u32    n elements
    bytes  raw blocks (n / block size * block bytes)
    f32    expected[n]

Usage: python3 tests/ref/make_quant_fixtures.py   (needs numpy and gguf)
"""
import os
import struct

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize

SEED = 20240611
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "quant")

# type -> (number of blocks, byte offsets of fp16 fields inside a block)
TYPES = {
    T.F32: (64, []),
    T.F16: (64, None),   # None: every element is a half
    T.BF16: (64, None),
    T.Q4_0: (6, [0]),
    T.Q4_1: (6, [0, 2]),
    T.Q5_0: (6, [0]),
    T.Q5_1: (6, [0, 2]),
    T.Q8_0: (6, [0]),
    T.Q2_K: (3, [80, 82]),
    T.Q3_K: (3, [108]),
    T.Q4_K: (3, [0, 2]),
    T.Q5_K: (3, [0, 2]),
    T.Q6_K: (3, [208]),
}


def rand_halves(rng, n):
    """Finite halves with magnitudes between about 2^-20 (subnormal) and 2^4."""
    sign = rng.integers(0, 2, n, dtype=np.uint16) << 15
    exp = rng.integers(0, 20, n, dtype=np.uint16) << 10   # 0 = subnormal, < 31 = finite
    mant = rng.integers(0, 1024, n, dtype=np.uint16)
    return (sign | exp | mant).astype("<u2")


def main():
    rng = np.random.default_rng(SEED)
    os.makedirs(OUT, exist_ok=True)
    for t, (n_blocks, half_offs) in TYPES.items():
        bs, bb = GGML_QUANT_SIZES[t]
        if t == T.F32:
            raw = (rng.standard_normal(n_blocks) * 10).astype("<f4")
            raw[:6] = [0.0, -0.0, np.inf, -np.inf, 1e-40, -3.4e38]   # incl. a subnormal
            raw = raw.view(np.uint8)
        elif half_offs is None:
            if t == T.F16:
                h = rand_halves(rng, n_blocks)
                h[:8] = [0x0000, 0x8000, 0x7c00, 0xfc00, 0x0001, 0x03ff, 0x7bff, 0x8400]
            else:
                h = rng.integers(0, 65536, n_blocks, dtype=np.uint16).astype("<u2")
                h[:6] = [0x0000, 0x8000, 0x7f80, 0xff80, 0x0001, 0x7f7f]
                # no nans: their payloads need not survive numpy's float paths
                nan = ((h & 0x7f80) == 0x7f80) & ((h & 0x007f) != 0)
                h[nan] &= 0xff7f
            raw = h.view(np.uint8)
        else:
            raw = rng.integers(0, 256, (n_blocks, bb), dtype=np.uint8)
            for off in half_offs:
                raw[:, off:off + 2] = rand_halves(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
            raw = raw.reshape(-1)
        n = n_blocks * bs
        assert raw.size == n_blocks * bb
        exp = np.asarray(dequantize(raw, t), dtype=np.float32).reshape(-1)
        assert exp.size == n
        path = os.path.join(OUT, f"{t.name}.bin")
        with open(path, "wb") as f:
            f.write(b"S3QF" + struct.pack("<4I", int(t), bs, bb, n))
            f.write(raw.tobytes())
            f.write(exp.astype("<f4").tobytes())
        print(f"{path}: {n} elements, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
