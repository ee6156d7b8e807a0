"""Every scheduler the policy vocabulary accepts passes the same contract, and the vocabulary is
derived from the installed diffusers: each of its scheduler classes is accepted or refused with
a reason, never silently unverifiable.

The contract, on the bundled pipeline with a tiny random UNet: recorded through the hook, the
output is bitwise the unrecorded one; every step re-checks to exactly 0 through the verifier's
whole challenge (plan, transcript, re-check); a model whose weights moved by 1e-3 relative is
rejected at every step.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import pytest
import torch

from samplerguard.commitment.challenge import verify_challenge
from samplerguard.errors import MalformedInputError
from samplerguard.hook.local import LocalSink
from samplerguard.hook.pipelines import instrument
from samplerguard.hook.recorder import Recorder, TrajectoryRequest
from samplerguard.models.digits import SCHEDULER_CONFIG, DigitsPipeline
from samplerguard.models.programs import DigitsProgram
from samplerguard.policy.spec import KNOWN_SAMPLERS, REFUSED_SCHEDULERS

STEPS = 4
CLASSES = sorted(set(KNOWN_SAMPLERS.values()) - {"FlowMatchEulerDiscreteScheduler"})


def _diffusers_schedulers() -> set[str]:
    import diffusers

    return {
        n
        for n in dir(diffusers)
        if n.endswith("Scheduler") and inspect.isclass(getattr(diffusers, n, None))
    }


def test_every_diffusers_scheduler_is_accepted_or_refused_with_a_reason() -> None:
    installed = _diffusers_schedulers()
    known = set(KNOWN_SAMPLERS.values())
    unclassified = installed - known - set(REFUSED_SCHEDULERS)
    assert not unclassified, f"classify these diffusers schedulers: {sorted(unclassified)}"
    assert not known & set(REFUSED_SCHEDULERS)
    assert all(len(reason) > 20 for reason in REFUSED_SCHEDULERS.values())


def _record(unet: Any, cls_name: str, request_id: str) -> tuple[Any, LocalSink, Any]:
    import diffusers

    scheduler = getattr(diffusers, cls_name).from_config(SCHEDULER_CONFIG)
    sink = LocalSink()
    recorder = Recorder(sink)
    try:
        request = TrajectoryRequest(
            request_id=request_id,
            tenant="t",
            pipeline="digits",
            model_name="digits",
            model_digest=DigitsProgram(unet).model_digest,
            sampler=cls_name,
            guidance_scale=3.0,
            steps=STEPS,
        )
        out = instrument(DigitsPipeline(unet, scheduler), recorder)(
            [1, 2],
            num_inference_steps=STEPS,
            guidance_scale=3.0,
            generator=torch.Generator().manual_seed(0),
            trajectory_request=request,
        )
    finally:
        recorder.close()
    plain = DigitsPipeline(unet, getattr(diffusers, cls_name).from_config(SCHEDULER_CONFIG))(
        [1, 2],
        num_inference_steps=STEPS,
        guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0),
    )
    return out, sink, plain


@pytest.mark.parametrize("cls_name", CLASSES)
def test_the_scheduler_contract(cls_name: str, tiny_unet: Any) -> None:
    out, sink, plain = _record(tiny_unet, cls_name, "contract")
    assert torch.equal(out.output, plain)  # the hook changes nothing
    c = out.commitment
    steps = list(range(c.n_steps))
    honest = verify_challenge(
        c,
        sink.transcript("contract"),
        lambda s: sink.opening("contract", s),
        DigitsProgram(tiny_unet),
        steps=steps,
        tau=0.0,
    )
    assert honest.accepted and all(r.worst == 0.0 for r in honest.results)
    moved = copy.deepcopy(tiny_unet)
    with torch.no_grad():
        for p in moved.parameters():
            p.mul_(1 + 1e-3)
    substituted = DigitsProgram(moved, model_digest=DigitsProgram(tiny_unet).model_digest)
    flagged = [
        step
        for step in steps
        if not verify_challenge(
            c,
            sink.transcript("contract"),
            lambda s: sink.opening("contract", s),
            substituted,
            steps=[step],
            tau=1e-5,
        ).accepted
    ]
    # IPNDM's first step does not read the model output (its step size is 0 there)
    assert len(flagged) >= len(steps) - 1, flagged


@pytest.mark.parametrize("cls_name", ["DPMSolverSDEScheduler", "DDIMInverseScheduler"])
def test_a_refused_scheduler_is_named_when_the_request_starts(cls_name: str) -> None:

    # refused where the request is declared: nothing is generated or recorded for it
    with pytest.raises(MalformedInputError, match=f"sampler '{cls_name}' cannot be verified: "):
        TrajectoryRequest(
            request_id="r",
            tenant="t",
            pipeline="digits",
            model_name="d",
            model_digest="sha256:" + "0" * 64,
            sampler=cls_name,
            guidance_scale=1.0,
            steps=2,
        )
