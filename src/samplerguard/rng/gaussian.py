"""Standard normal noise from DRBG bytes, vectorised.

The transform is part of the contract (the verifier regenerates z_N from an escrowed seed), so
it is fixed here exactly. For ``n`` values, with ``m = ceil(n / 2)``:

1. read ``2m`` little-endian 32-bit words ``w`` from the DRBG;
2. ``f_i = float32(0x3F800000 | (w_i >> 9))`` is in [1, 2) with the top 23 random bits;
   ``u1_i = 2 - f_i`` ∈ (0, 1] for ``i < m`` (never 0, so the log is finite) and
   ``u2_i = f_{m+i} - 1`` ∈ [0, 1);
3. Box–Muller: ``r = sqrt(-2 ln u1)``, ``out[i] = r cos(2π u2)``, ``out[m + i] = r sin(2π u2)``;
4. keep the first ``n`` values, in C order of the requested shape.

All arithmetic is float32 on CPU; other dtypes are cast from it and other devices receive a copy,
so the same seed gives the same bits on every device of the same build. The largest magnitude is
sqrt(46 ln 2) ≈ 5.65, which truncates a tail of probability ≈ 1.6e-8.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["bytes_for", "gaussian_from_bytes"]

_ONE_BITS = np.uint32(0x3F800000)
_BLOCK = 2048


def bytes_for(n: int) -> int:
    """DRBG bytes needed for ``n`` normal values."""
    return 8 * ((n + 1) // 2)


def gaussian_from_bytes(buf: bytearray | memoryview, n: int) -> torch.Tensor:
    """``n`` float32 standard normals from ``bytes_for(n)`` bytes (see the module doc)."""
    need = bytes_for(n)
    if len(buf) < need:
        raise ValueError(f"{n} normals need {need} bytes, got {len(buf)}")
    m = (n + 1) // 2
    # In place over the caller's buffer: no further allocation of the big arrays.
    words = np.frombuffer(buf, dtype="<u4", count=2 * m)
    if not words.flags.writeable:
        words = words.copy()
    np.right_shift(words, 9, out=words)
    np.bitwise_or(words, _ONE_BITS, out=words)
    f = words.view(np.float32)
    u1 = np.subtract(np.float32(2.0), f[:m])  # (0, 1]
    theta = f[m:]
    np.subtract(theta, np.float32(1.0), out=theta)
    np.multiply(theta, np.float32(2.0 * math.pi), out=theta)
    log_u1, th = torch.from_numpy(u1), torch.from_numpy(theta)
    out = torch.empty(2 * m, dtype=torch.float32)
    # torch's vectorised log/cos/sin are the fastest here, but ATen splits them across threads
    # above 2048 elements, and on a loaded machine each OpenMP hand-off waits for a time slice.
    # Blocks of 2048 keep every call on this thread, like torch.randn's own fill; the cheap
    # arithmetic runs in bulk in numpy (single-threaded). Results are identical either way.
    for lo in range(0, m, _BLOCK):
        hi = min(lo + _BLOCK, m)
        torch.log(log_u1[lo:hi], out=log_u1[lo:hi])
        torch.cos(th[lo:hi], out=out[lo:hi])
        torch.sin(th[lo:hi], out=out[m + lo : m + hi])
    np.multiply(u1, np.float32(-2.0), out=u1)
    np.sqrt(u1, out=u1)
    o = out.numpy()
    np.multiply(o[:m], u1, out=o[:m])
    np.multiply(o[m:], u1, out=o[m:])
    return out[:n] if n != 2 * m else out
