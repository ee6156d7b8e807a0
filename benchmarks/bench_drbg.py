"""CTR_DRBG / HMAC_DRBG Gaussian noise against torch.randn, side by side in one run.

    python benchmarks/bench_drbg.py [--repeats 15]

For each latent shape it times, interleaved so that load on the machine hits all alike:
``torch.randn(shape)`` (torch's global generator is saved and restored around it),
``RequestNoise.randn(shape)`` in ctr-drbg mode (SP 800-90A generate requests of 2^16 bytes, AES-CTR
keystream, Box–Muller in float32), its two parts (DRBG bytes; the transform), and hmac-drbg mode.
It prints medians of wall-clock and of process CPU time (on a shared, loaded machine the CPU
time is the steadier measure of cost) and the speed ratio torch_time / our_time (≥ 0.5 is the
goal) as the median of per-round ratios with its interquartile range.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import torch

from samplerguard.rng import CtrDrbg, NoiseAuthority
from samplerguard.rng.gaussian import bytes_for, gaussian_from_bytes

#: An image latent, a batch of image latents, and a video latent (batch, channels, frames, h, w).
SHAPES = [(4, 128, 128), (16, 4, 90, 160), (1, 4, 16, 64, 64)]


def timings(
    fns: dict[str, Callable[[], object]], repeats: int
) -> dict[str, list[tuple[float, float]]]:
    """(wall ms, CPU ms) of every call per function, calls interleaved round-robin."""
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            times[name].append(((time.perf_counter() - w) * 1e3, (time.process_time() - c) * 1e3))
    return times


def medians(times: dict[str, list[tuple[float, float]]]) -> dict[str, tuple[float, float]]:
    return {
        k: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v))
        for k, v in times.items()
    }


def spread(ratios: list[float]) -> str:
    """Median and interquartile range of per-round ratios."""
    q1, q2, q3 = statistics.quantiles(ratios, n=4)
    return f"{q2:.2f}x (IQR {q1:.2f} to {q3:.2f})"


def bench_shape(
    shape: tuple[int, ...], ctr: NoiseAuthority, hmac: NoiseAuthority, tag: str, repeats: int
) -> None:
    n = math.prod(shape)
    drbg = CtrDrbg(os.urandom(32), os.urandom(16))
    buf = drbg.random_bytes(bytes_for(n))
    ctr_noise = ctr.request("bench", f"ctr-{tag}", record_draws=False)
    hmac_noise = hmac.request("bench", f"hmac-{tag}", record_draws=False)
    fns: dict[str, Callable[[], object]] = {
        "torch.randn": lambda: torch.randn(shape),
        "ctr-drbg randn": lambda: ctr_noise.randn(shape),
        "  ctr bytes": lambda: drbg.random_bytes(bytes_for(n)),
        "  transform": lambda: gaussian_from_bytes(bytearray(buf), n),
    }
    raw = timings(fns, repeats)
    res = medians(raw)
    res.update(
        medians(timings({"hmac-drbg randn": lambda: hmac_noise.randn(shape)}, max(3, repeats // 5)))
    )
    print(f"\nshape {shape} ({n:,} values, {bytes_for(n) / 2**20:.1f} MiB of DRBG output)")
    print(f"  {'':<18} {'wall ms':>9} {'CPU ms':>9}")
    for name, (wall, cpu) in res.items():
        print(f"  {name:<18} {wall:9.2f} {cpu:9.2f}")
    for which, i in (("wall", 0), ("CPU", 1)):
        # Each round times torch.randn and ctr-drbg back to back: the ratio within a round
        # sees the same load on the machine, and its spread over rounds is the run's noise.
        rounds = [
            t[i] / c[i] for t, c in zip(raw["torch.randn"], raw["ctr-drbg randn"], strict=True)
        ]
        hmac_ratio = res["torch.randn"][i] / res["hmac-drbg randn"][i]
        print(
            f"  speed ratio vs torch.randn ({which:>4}): ctr-drbg {spread(rounds)} "
            f"(goal >= 0.5x), hmac-drbg {hmac_ratio:.2f}x"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu capability "
        f"{torch.backends.cpu.get_cpu_capability()}, load {os.getloadavg()[0]:.1f}"
    )
    master = os.urandom(32)
    ctr = NoiseAuthority(master, "ctr-drbg")
    hmac = NoiseAuthority(master, "hmac-drbg")
    state = torch.get_rng_state()
    for i, shape in enumerate(SHAPES):
        bench_shape(shape, ctr, hmac, str(i), args.repeats)
    torch.set_rng_state(state)


if __name__ == "__main__":
    main()
