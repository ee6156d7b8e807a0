"""Seed-vector health checks: honest false alarms, detection against η, accuracy on the bundled
model, and cost against one denoising step, measured side by side in one run.

    python benchmarks/bench_seed_health.py [--scale 1.0]

1. False-alarm rate on honest noise (drawn from a private torch.Generator), at the default
   α = 1e-3 and at α = 0.05, where the rate can be measured precisely with few trials.
2. Detection rate against the shift size η for the synthetic seed shifts:
   random ``z + η·u`` (u ~ N(0, I), one u per request), mean ``z + η``, std ``(1 + η)·z``,
   mixed ``(1 + η/2)·z + η/2``, and arrangement shifts (a tiled or sorted block).
3. With the bundled digits model (``samplerguard.models``; skipped if its weights are absent):
   conditional accuracy (bundled classifier) of 100 samples (DDIM, 10 steps, CFG 3) generated
   from shifted DRBG noise, against η; and whether every η that costs ≥ 5 accuracy points is
   flagged.
4. Cost: one health check against one denoising step of the bundled UNet (CFG batch).

``--scale`` multiplies every trial count (0.2 for a smoke run).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch

from samplerguard.rng import NoiseAuthority, check_seed_vector

if TYPE_CHECKING:
    from diffusers import UNet2DModel

    from samplerguard.models.digits import DigitsClassifier

Shift = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]


def random_shift(z: torch.Tensor, eta: float, g: torch.Generator) -> torch.Tensor:
    u = torch.randn(z.shape[1:], generator=g)  # one direction for the whole request
    return z + eta * u


SHIFTS: dict[str, Shift] = {
    "random": random_shift,
    "mean": lambda z, eta, g: z + eta,
    "std": lambda z, eta, g: z * (1 + eta),
    "mixed": lambda z, eta, g: z * (1 + eta / 2) + eta / 2,
}
ETAS = [0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0]


def shifted(shift: Shift, eta: float, g: torch.Generator) -> Callable[[torch.Tensor], torch.Tensor]:
    """``shift`` at strength ``eta`` as a map of the base noise alone."""
    return lambda z: shift(z, eta, g)


def tile_block(z: torch.Tensor, size: int) -> torch.Tensor:
    out = z.clone()
    out[..., size : 2 * size, size : 2 * size] = z[..., :size, :size]
    return out


def sort_block(z: torch.Tensor, size: int) -> torch.Tensor:
    out = z.clone()
    block = out[..., :size, :size]
    flat = block.reshape(*block.shape[:-2], -1).sort(-1).values
    out[..., :size, :size] = flat.reshape(block.shape)
    return out


ARRANGEMENTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tile 2x2": lambda z: tile_block(z, 2),
    "tile 4x4": lambda z: tile_block(z, 4),
    "sort 4x4": lambda z: sort_block(z, 4),
}

SHAPES = {
    "digit 1x1x8x8": (1, 1, 8, 8),
    "digits 16x1x8x8": (16, 1, 8, 8),
    "SD 1x4x64x64": (1, 4, 64, 64),
}


def false_alarms(shape: tuple[int, ...], trials: int, alpha: float, g: torch.Generator) -> int:
    return sum(
        not check_seed_vector(torch.randn(shape, generator=g), alpha=alpha).ok
        for _ in range(trials)
    )


def upper95(k: int, n: int) -> float:
    """A one-sided 95% upper bound on a rate from k events in n trials (Wilson score)."""
    p, z = k / n, 1.645
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre + half) / (1 + z * z / n)


def section_false_alarms(scale: float, g: torch.Generator) -> None:
    print("\n== 1. false alarms on honest noise")
    plan = {"digit 1x1x8x8": 6000, "digits 16x1x8x8": 1500, "SD 1x4x64x64": 400}
    for name, trials in plan.items():
        shape = SHAPES[name]
        n = max(50, int(trials * scale))
        k = false_alarms(shape, n, 1e-3, g)
        m = max(50, int(n / 4))
        k05 = false_alarms(shape, m, 0.05, g)
        print(
            f"  {name:<16} alpha=1e-3: {k}/{n} = {k / n:.4f} (95% upper {upper95(k, n):.4f})   "
            f"alpha=0.05: {k05}/{m} = {k05 / m:.3f} (95% upper {upper95(k05, m):.3f})"
        )


def detection(
    shape: tuple[int, ...],
    make: Callable[[torch.Tensor], torch.Tensor],
    trials: int,
    g: torch.Generator,
) -> float:
    hits = sum(
        not check_seed_vector(make(torch.randn(shape, generator=g))).ok for _ in range(trials)
    )
    return hits / trials


def section_detection(scale: float, g: torch.Generator) -> dict[tuple[str, str, float], float]:
    print("\n== 2. detection rate against eta (alpha = 1e-3)")
    trials = max(10, int(40 * scale))
    rates: dict[tuple[str, str, float], float] = {}
    header = "  shape            shift   " + " ".join(f"{e:>6}" for e in ETAS)
    print(header)
    for sname, shape in SHAPES.items():
        for shift_name, shift in SHIFTS.items():
            row = []
            for eta in ETAS:
                r = detection(shape, shifted(shift, eta, g), trials, g)
                rates[(sname, shift_name, eta)] = r
                row.append(r)
            print(f"  {sname:<16} {shift_name:<7} " + " ".join(f"{r:6.2f}" for r in row))
        for arr_name, arr in ARRANGEMENTS.items():
            r = detection(shape, arr, trials, g)
            print(f"  {sname:<16} {arr_name:<8} {r:6.2f}")
    print(f"  ({trials} requests per cell)")
    return rates


def _bundled() -> tuple[UNet2DModel, DigitsClassifier] | None:
    try:
        from samplerguard.models import digits
    except ImportError:
        return None
    if not (digits.MODEL_FILE.exists() and digits.CLASSIFIER_FILE.exists()):
        return None
    return digits.load_unet(), digits.load_classifier()


def section_accuracy(scale: float, g: torch.Generator) -> None:
    print("\n== 3. conditional accuracy of the bundled model against eta")
    loaded = _bundled()
    if loaded is None:
        print("  bundled weights not found (samplerguard/models/weights): skipped")
        return
    from diffusers import DDIMScheduler

    from samplerguard.models import digits

    unet, clf = loaded
    per_class = max(2, int(10 * scale))
    steps = 10
    labels = torch.arange(10).repeat_interleave(per_class)
    authority = NoiseAuthority(bytes(range(32)), deterministic=True)  # reproducible base noise
    base = authority.request("bench", "accuracy").randn((labels.numel(), *digits.IMAGE_SHAPE))
    etas = [0.2, 0.5, 1.0, 1.5, 2.0, 3.0]

    def accuracies(zs: list[torch.Tensor]) -> list[float]:
        # All variants in one batch: the same labels, paired noise, one pipeline call.
        pipe = digits.DigitsPipeline(unet, DDIMScheduler(**digits.SCHEDULER_CONFIG))
        all_labels = labels.repeat(len(zs))
        images = pipe(
            all_labels, num_inference_steps=steps, guidance_scale=3.0, latents=torch.cat(zs)
        )
        assert isinstance(images, torch.Tensor)  # output_type "pt"
        return [clf.accuracy(chunk, labels) for chunk in torch.split(images, labels.numel())]

    t0 = time.perf_counter()
    (honest,) = accuracies([base])
    print(
        f"  honest: {honest:.3f} ({labels.numel()} samples, DDIM {steps} steps, CFG 3; "
        f"{time.perf_counter() - t0:.1f} s per {labels.numel()}-sample generation)"
    )
    trials = max(10, int(40 * scale))
    missed = []
    worst: tuple[float, str, float, float] = (-1e9, "", 0.0, 0.0)
    print("  shift   eta    accuracy  drop   flagged(1 sample)  flagged(16-batch)")
    for shift_name, shift in SHIFTS.items():
        accs = accuracies([shift(base, eta, g) for eta in etas])
        for eta, acc in zip(etas, accs, strict=True):
            drop = (honest - acc) * 100
            d1 = detection((1, *digits.IMAGE_SHAPE), shifted(shift, eta, g), trials, g)
            d16 = detection((16, *digits.IMAGE_SHAPE), shifted(shift, eta, g), trials, g)
            mark = "  <- drop >= 5 pts" if drop >= 5 else ""
            print(
                f"  {shift_name:<7} {eta:<5}  {acc:8.3f} {drop:5.1f}   "
                f"{d1:17.2f}  {d16:17.2f}{mark}"
            )
            if drop >= 5 and d16 < 0.99:
                missed.append((shift_name, eta, d16))
            worst = max(worst, (drop, shift_name, eta, d1))
    print(
        f"  largest drop: {worst[0]:.1f} points ({worst[1]}, eta {worst[2]}), flagged in "
        f"{worst[3]:.2f} of single-sample requests"
    )
    if missed:
        print(f"  NOT every 5-point shift is flagged in 16-sample requests: {missed}")
    else:
        print(
            "  every shift that costs >= 5 accuracy points is flagged in >= 99% of "
            "16-sample requests"
        )


def section_cost() -> None:
    print("\n== 4. cost of one health check against one denoising step (CPU time, median)")
    from diffusers import DDIMScheduler

    from samplerguard.models import digits

    loaded = _bundled()
    unet = loaded[0] if loaded else digits.build_unet(seed=0).eval()
    sched = DDIMScheduler(**digits.SCHEDULER_CONFIG)
    sched.set_timesteps(20)
    t = sched.timesteps[0]

    def cpu_ms(fn: Callable[[], object], repeats: int = 15) -> float:
        fn()
        times = []
        for _ in range(repeats):
            c = time.process_time()
            fn()
            times.append((time.process_time() - c) * 1e3)
        return statistics.median(times)

    for batch in (1, 16):
        z = torch.randn(batch, *digits.IMAGE_SHAPE, generator=torch.Generator().manual_seed(batch))
        inputs = digits.StepInputs(class_labels=torch.arange(batch) % 10, guidance_scale=3.0)
        with torch.no_grad():
            step = cpu_ms(partial(digits.denoise_step, unet, sched, z, t, inputs))
        check = cpu_ms(partial(check_seed_vector, z))
        print(
            f"  digits batch {batch:>2}: health check {check:6.2f} ms, one CFG denoising step "
            f"{step:6.2f} ms -> {check / step:.2f} of a step "
            f"({check / step / 20:.3f} of a 20-step run)"
        )
    big = torch.randn(1, 4, 64, 64)
    print(
        f"  SD-sized 1x4x64x64 latent: health check {cpu_ms(lambda: check_seed_vector(big)):.2f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every trial count")
    ap.add_argument("--sections", default="1234", help="which sections to run, e.g. 34")
    args = ap.parse_args()
    # One intra-op thread: on a shared box OpenMP hand-offs dominate tiny-model timings.
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(20261123)
    state = torch.get_rng_state()
    t0 = time.perf_counter()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load {os.getloadavg()[0]:.1f}"
    )
    if "1" in args.sections:
        section_false_alarms(args.scale, g)
    if "2" in args.sections:
        section_detection(args.scale, g)
    if "3" in args.sections:
        section_accuracy(args.scale, g)
    if "4" in args.sections:
        section_cost()
    if not torch.equal(state, torch.get_rng_state()):
        # The noise path never does (tests prove it); model loading may (weight init).
        print("note: torch's global RNG moved during the run (model loading, not the noise path)")
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
