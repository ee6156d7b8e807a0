"""Canary suites: generate the policy's canary conditions with the declared model and score them.

For the bundled model a canary case is a class label, optionally with a shifted seed vector
(z_N + η: a provider that biases its seeds shows up as a drop in conditional accuracy). Each
case generates ``samples`` images with the policy's first sampler, the middle of its steps range
and of its CFG range, and the bundled classifier scores how many follow their label. A case
fails when its accuracy is below ``canaryMinAccuracy`` or more than ``margin`` below the stored
baseline. Run before promoting a new image or recipe, and periodically (a CronJob running
``samplerguard verifier canary``).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from samplerguard.policy.report import ReportResult, append_audit_log
from samplerguard.policy.spec import KNOWN_SAMPLERS, CanaryCase, SamplerPolicySpec

__all__ = ["CanaryOutcome", "run_canary_suite"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CanaryOutcome:
    case: CanaryCase
    accuracy: float
    baseline: float | None
    passed: bool
    message: str

    @property
    def key(self) -> str:
        return f"class={self.case.class_label},shift={self.case.seed_shift:g}"


def _recipe(spec: SamplerPolicySpec) -> tuple[str, int, float]:
    rule = spec.recipe
    if rule is None:
        return "euler", 20, 3.0
    steps = min(max(20, rule.steps.min), rule.steps.max)
    cfg = (rule.cfg.min + rule.cfg.max) / 2
    return rule.samplers[0], steps, cfg


@torch.no_grad()
def run_canary_suite(
    spec: SamplerPolicySpec,
    unet: Any,
    classifier: Any,
    *,
    baseline: dict[str, float] | None = None,
    margin: float = 0.1,
    seed: int = 1234,
) -> list[CanaryOutcome]:
    import diffusers

    from samplerguard.models.digits import IMAGE_SHAPE, SCHEDULER_CONFIG, DigitsPipeline

    sampler, steps, cfg = _recipe(spec)
    scheduler = getattr(diffusers, KNOWN_SAMPLERS[sampler]).from_config(SCHEDULER_CONFIG)
    pipe = DigitsPipeline(unet, scheduler)
    floor = spec.verification.canary_min_accuracy
    outcomes = []
    for i, case in enumerate(spec.verification.canaries):
        gen = torch.Generator().manual_seed(seed + i)
        scheduler.set_timesteps(steps)
        z = torch.randn((case.samples, *IMAGE_SHAPE), generator=gen) + case.seed_shift
        z = z * scheduler.init_noise_sigma
        labels = torch.full((case.samples,), case.class_label, dtype=torch.long)
        images = pipe(labels, num_inference_steps=steps, guidance_scale=cfg, latents=z)
        acc = classifier.accuracy(images, labels)
        key = f"class={case.class_label},shift={case.seed_shift:g}"
        base = (baseline or {}).get(key)
        problems = []
        if acc < floor:
            problems.append(f"accuracy {acc:.2f} < canaryMinAccuracy {floor:.2f}")
        if base is not None and acc < base - margin:
            problems.append(f"accuracy {acc:.2f} regressed from baseline {base:.2f}")
        message = f"canary {key}: " + ("; ".join(problems) if problems else f"accuracy {acc:.2f}")
        outcomes.append(CanaryOutcome(case, acc, base, not problems, message))
    return outcomes


def run_canary_cli(
    policy: Any, references: Any, checkpoints: dict[str, Path], args: argparse.Namespace
) -> int:
    from samplerguard.commitment.digest import safetensors_digest
    from samplerguard.models.digits import load_classifier
    from samplerguard.policy.load import report_policy_name

    spec: SamplerPolicySpec = policy.spec
    if not spec.verification.canaries:
        print("the policy names no canaries")
        return 0
    declared = (spec.golden_digests.model_weights or [safetensors_digest(checkpoints["digits"])])[0]
    program = references.program({"pipeline": "digits", "model": {"digest": declared}})
    baseline_path = Path(args.canary_baseline) if args.canary_baseline else None
    baseline = None
    if baseline_path is not None and baseline_path.exists():
        baseline = {str(k): float(v) for k, v in json.loads(baseline_path.read_text()).items()}
    outcomes = run_canary_suite(spec, program.unet, load_classifier(), baseline=baseline)
    if baseline_path is not None and baseline is None:
        baseline_path.write_text(json.dumps({o.key: o.accuracy for o in outcomes}, indent=1))
        log.info("canary baseline written to %s", baseline_path)
    results = [
        ReportResult.build(
            policy=report_policy_name(policy),
            rule="canary",
            result="pass" if o.passed else "fail",
            message=o.message,
            resource={"apiVersion": "v1", "kind": "Model", "name": declared[:71]},
        )
        for o in outcomes
    ]
    if args.audit_log:
        append_audit_log(args.audit_log, results)
    for o in outcomes:
        print(("PASS " if o.passed else "FAIL ") + o.message)
    return 0 if all(o.passed for o in outcomes) else 1
