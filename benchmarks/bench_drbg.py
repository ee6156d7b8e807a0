"""CTR_DRBG / HMAC_DRBG Gaussian noise against torch.randn, side by side in one run.

    python benchmarks/bench_drbg.py [--repeats 15]

For each latent shape it times, interleaved so that load on the machine hits all alike:
``torch.randn(shape)`` (torch's global generator is saved and restored around it),
``RequestNoise.randn(shape)`` in ctr-drbg mode (SP 800-90A generate requests of 2^16 bytes, AES-CTR
keystream, Box–Muller in float32), its two parts (DRBG bytes; the transform), and hmac-drbg mode.
It prints medians of wall-clock and of process CPU time (on a shared, loaded machine the CPU
time is the steadier measure of cost) and the speed ratio torch_time / our_time (≥ 0.5 is the
goal).
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

SHAPES = [(4, 128, 128), (16, 4, 90, 160)]


def median_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median (wall ms, CPU ms) per function, calls interleaved round-robin."""
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()  # warm-up
    for _ in range(repeats):
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.process_time()
            fn()
            times[name].append(((time.perf_counter() - w) * 1e3, (time.process_time() - c) * 1e3))
    return {
        k: (statistics.median(t[0] for t in v), statistics.median(t[1] for t in v))
        for k, v in times.items()
    }


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
    res = median_ms(fns, repeats)
    res.update(
        median_ms({"hmac-drbg randn": lambda: hmac_noise.randn(shape)}, max(3, repeats // 5))
    )
    print(f"\nshape {shape} ({n:,} values, {bytes_for(n) / 2**20:.1f} MiB of DRBG output)")
    print(f"  {'':<18} {'wall ms':>9} {'CPU ms':>9}")
    for name, (wall, cpu) in res.items():
        print(f"  {name:<18} {wall:9.2f} {cpu:9.2f}")
    for which, i in (("wall", 0), ("CPU", 1)):
        base = res["torch.randn"][i]
        ctr_ratio = base / res["ctr-drbg randn"][i]
        hmac_ratio = base / res["hmac-drbg randn"][i]
        print(
            f"  speed ratio vs torch.randn ({which:>4}): ctr-drbg {ctr_ratio:.2f}x (goal >= 0.5x), "
            f"hmac-drbg {hmac_ratio:.2f}x"
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
