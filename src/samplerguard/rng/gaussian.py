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
    f = torch.from_numpy(words.view(np.float32))
    r = f[:m].neg_().add_(2.0).log_().mul_(-2.0).sqrt_()
    theta = f[m:].sub_(1.0).mul_(2.0 * math.pi)
    out = torch.empty(2 * m, dtype=torch.float32)
    torch.cos(theta, out=out[:m])
    torch.sin(theta, out=out[m:])
    out[:m].mul_(r)
    out[m:].mul_(r)
    return out[:n] if n != 2 * m else out
