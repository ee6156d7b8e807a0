"""The demo's control cases: requests stopped *before* a trajectory exists.

Three providers try something the re-check would never see, because it happens outside the
denoising transition:

* **shifted-seed-vector**: z_N = z + η·u instead of the DRBG's z. The seed-vector health check
  (:func:`samplerguard.rng.check_seed_vector`) refuses it before generation.
* **cfg-above-cap**: guidance 9.0 against the recipe's range [1, 5] and the demo policy's
  ``cfg.max``. The inference guard warns, and the policy (enforce mode) refuses it.
* **forbidden-scheduler**: Euler ancestral, which the bundled recipe forbids. The inference guard
  refuses it as a hard failure.

Each case also runs the generation anyway (outside the lane) so the summary shows what the
control prevented: the conditional accuracy the bundled classifier measures.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

from samplerguard.commitment.draws import noise_from
from samplerguard.demo.providers import make_scheduler
from samplerguard.errors import VerificationError
from samplerguard.models.digits import IMAGE_SHAPE, MODEL_FILE, DigitsPipeline
from samplerguard.models.recipe import BUNDLED_STEPS, bundled_recipe
from samplerguard.recipe import InferenceGuard, RunRequest
from samplerguard.rng import NoiseAuthority, check_seed_vector

__all__ = ["ControlResult", "run_controls"]

SHIFT_ETA = 0.35


@dataclass
class ControlResult:
    case: str
    control: str
    verdict: str  # "refused" | "warned" | "admitted"
    reason: str
    accuracy_if_run: float | None = None


def _accuracy(
    unet: Any,
    classifier: Any,
    sampler: str,
    cfg: float,
    latents: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
) -> float | None:
    if classifier is None:
        return None
    pipe = DigitsPipeline(unet, make_scheduler(sampler))
    with torch.no_grad():
        images = pipe(labels, num_inference_steps=steps, guidance_scale=cfg, latents=latents)
    return float(classifier.accuracy(images, labels))


def run_controls(
    unet: Any,
    classifier: Any,
    *,
    steps: int = 20,
    batch: int = 16,
    policy_cfg_max: float,
) -> list[dict[str, Any]]:
    """Run the three control cases; returns JSON-ready results."""
    # A fixed demo secret and deterministic nonces: the demo is reproducible. A deployment reads
    # the master secret from a file or the environment (NoiseAuthority.from_env).
    authority = NoiseAuthority(
        b"samplerguard-demo-master-secret!" * 2, mode="ctr-drbg", deterministic=True
    )
    # The bundled checkpoint carries its recipe; the guard loads it only after the weights and
    # metadata match the recipe's pinned hashes.
    if steps == BUNDLED_STEPS:
        guard = InferenceGuard.from_checkpoint(MODEL_FILE, actor="demo")
    else:
        guard = InferenceGuard(bundled_recipe(steps), actor="demo")
    labels = torch.arange(batch) % 10
    results: list[ControlResult] = []

    # (1) shifted seed vector: the DRBG's z, moved by η along a fixed unit direction u
    noise = authority.request("tenant-demo", "controls-seed")
    z = noise.randn((batch, *IMAGE_SHAPE))
    u = torch.ones_like(z[0]) / z[0].numel() ** 0.5
    shifted = z + SHIFT_ETA * u.expand_as(z) * z[0].numel() ** 0.5
    report = check_seed_vector(shifted)
    honest_report = check_seed_vector(z)
    results.append(
        ControlResult(
            "shifted-seed-vector",
            "seed-vector health check",
            "refused" if not report.ok else "admitted",
            report.reason if not report.ok else "no test fired",
            _accuracy(unet, classifier, "dpmpp_2m", 3.0, shifted, labels, steps),
        )
    )
    if not honest_report.ok:  # pragma: no cover - a 1e-3 false alarm, reported honestly
        results[-1].reason += f" (the unshifted z also failed: {honest_report.reason})"

    # (2) CFG above the cap: a soft finding for the recipe guard, a refusal under the policy
    decision = guard.check(RunRequest(sampler="dpmpp_2m", steps=steps, cfg=9.0))
    warnings = "; ".join(str(w) for w in decision.warnings) or "no warning"
    over = policy_cfg_max < 9.0
    results.append(
        ControlResult(
            "cfg-above-cap",
            "inference guard + policy CFG cap (enforce)",
            "refused" if over else "warned",
            f"policy cfg.max {policy_cfg_max} < 9.0; recipe guard: {warnings}",
            _accuracy(unet, classifier, "dpmpp_2m", 9.0, z, labels, steps),
        )
    )

    # (3) a scheduler the checkpoint's recipe forbids
    try:
        guard.check(RunRequest(sampler="euler_ancestral", steps=steps, cfg=3.0))
        verdict, reason = "admitted", "the guard let it through"
    except VerificationError as exc:
        verdict, reason = "refused", str(exc)
    with _drbg_step_noise(authority):
        acc = _accuracy(unet, classifier, "euler_ancestral", 3.0, z, labels, steps)
    results.append(
        ControlResult("forbidden-scheduler", "inference guard (recipe)", verdict, reason, acc)
    )
    noise.close()
    authority.close()
    return [asdict(r) for r in results]


@contextmanager
def _drbg_step_noise(authority: NoiseAuthority) -> Iterator[None]:
    """Euler ancestral draws step noise; feed it from a DRBG so no global RNG is touched."""
    noise = authority.request("tenant-demo", "controls-steps")
    try:
        with noise_from(noise.noise_fn()):
            yield
    finally:
        noise.close()
