"""A provider that starts an img2img or inpainting loop later than the request's strength.

Such pipelines start part-way into the schedule: with ``N`` steps at strength ``s`` the loop
runs the last ``⌊N·s⌋`` of them. A provider that starts later (one step instead of four) runs
each step it commits honestly, so every step re-checks to exactly 0; what gives it away is that
the loop's start is not the one the consumer's request implies. The verifier derives that start
from the committed request parameters, the way the pipeline's ``get_timesteps`` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from samplerguard.commitment.challenge import verify_challenge
from samplerguard.commitment.opening import Opening
from samplerguard.commitment.recheck import recheck_step
from samplerguard.commitment.statement import Commitment
from samplerguard.errors import VerificationError
from samplerguard.families import family_for_pipeline
from samplerguard.hook.local import LocalSink
from samplerguard.hook.pipelines import instrument
from samplerguard.hook.recorder import Recorder
from tests.support.families import BUILDERS, Case, request_for

pytestmark = pytest.mark.slow


@pytest.fixture(params=["stable-diffusion-img2img", "stable-diffusion-inpaint"])
def case(request: pytest.FixtureRequest) -> Case:
    return BUILDERS[request.param]()


@pytest.fixture
def sink() -> Iterator[LocalSink]:
    yield LocalSink()


def _serve(case: Case, sink: LocalSink, rid: str, strength: float | None) -> Commitment:
    """Serve one request at ``strength`` (None: the request names none)."""
    kwargs = {k: v for k, v in case.kwargs.items() if k != "strength"}
    if strength is not None:
        kwargs["strength"] = strength
    case = Case(case.pipe, kwargs, case.sampler, case.steps, case.guidance)
    request = request_for(case, rid)
    recorder = Recorder(sink)
    try:
        out = case.call(instrument(case.pipe, recorder), trajectory_request=request)
    finally:
        recorder.close()
    return Commitment.verify(out.commitment.to_json(), sink.key.public_key())


def _challenge(case: Case, sink: LocalSink, commitment: Commitment) -> Any:
    family = family_for_pipeline(type(case.pipe).__name__)
    program = family.program(getattr(case.pipe, family.denoiser))
    rid = commitment.request_id
    return verify_challenge(
        commitment,
        sink.transcript(rid),
        lambda s: Opening.from_bytes(sink.opening(rid, s).to_bytes()),
        program,
        steps=list(range(commitment.n_steps)),
        tau=0.0,
    ), program


def _starts_late(monkeypatch: pytest.MonkeyPatch, case: Case) -> None:
    """The provider's code path: the loop starts at the schedule's last step whatever the
    strength, and the call's arguments (the request) stay what the consumer sent."""
    cls = type(case.pipe)
    real = cls.get_timesteps

    def late(self: Any, num_inference_steps: int, strength: float, device: Any) -> Any:
        return real(self, num_inference_steps, 1.0 / num_inference_steps, device)

    monkeypatch.setattr(cls, "get_timesteps", late)


def test_an_honest_partial_loop_passes_the_binding_checks(case: Case, sink: LocalSink) -> None:
    commitment = _serve(case, sink, "honest", 0.8)
    result, _ = _challenge(case, sink, commitment)
    assert commitment.n_steps == int(case.steps * 0.8)
    assert result.accepted and [r.worst for r in result.results] == [0.0] * commitment.n_steps


def test_the_pipelines_default_strength_is_the_one_held(case: Case, sink: LocalSink) -> None:
    commitment = _serve(case, sink, "default", None)
    params = sink.transcript("default").meta.request
    assert params is not None and "strength" not in params
    result, _ = _challenge(case, sink, commitment)
    assert result.accepted


def test_a_loop_started_later_than_the_strength_is_rejected(
    case: Case, sink: LocalSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    _starts_late(monkeypatch, case)
    commitment = _serve(case, sink, "late", 0.8)
    assert commitment.n_steps == 1  # the provider ran one step of the four paid for
    # every step it ran is honest: the step re-check alone cannot tell
    family = family_for_pipeline(type(case.pipe).__name__)
    program = family.program(getattr(case.pipe, family.denoiser))
    opened = Opening.from_bytes(sink.opening("late", 0).to_bytes())
    assert recheck_step(commitment, opened, program, tau=0.0).worst == 0.0
    with pytest.raises(VerificationError, match="fewer steps run than requested") as info:
        _challenge(case, sink, commitment)
    assert info.value.check == "request-binding"
    want, got = case.steps - int(case.steps * 0.8), case.steps - 1
    assert f"schedule index {want}, the recipe at {got}" in str(info.value)


def test_a_strength_outside_the_unit_interval_is_a_clear_rejection(
    case: Case, sink: LocalSink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider that records a strength the pipeline would refuse (it controls the call's
    arguments) gets a named rejection, not a crash."""
    from samplerguard.hook import pipelines

    real = pipelines.request_params

    def forged(*args: Any) -> dict[str, Any]:
        return {**real(*args), "strength": 7.5}

    monkeypatch.setattr(pipelines, "request_params", forged)
    commitment = _serve(case, sink, "forged", 0.8)
    with pytest.raises(
        VerificationError, match=r"request binding: .*strength .*not a number"
    ) as info:
        _challenge(case, sink, commitment)
    assert info.value.check == "request-binding"


def test_the_scheduler_order_scales_the_start() -> None:
    """Second-order schedulers (Heun) count two schedule entries per step."""
    family = family_for_pipeline("StableDiffusionImg2ImgPipeline")
    program = family.program(torch.nn.Linear(1, 1))
    assert program.loop_begin({"steps": 5, "strength": 0.6}, 1) == 2
    assert program.loop_begin({"steps": 5, "strength": 0.6}, 2) == 4
    assert program.loop_begin({"steps": 10}, 1) == 2  # the pipeline's default 0.8
    inpaint = family_for_pipeline("StableDiffusionInpaintPipeline").program(torch.nn.Linear(1, 1))
    assert inpaint.loop_begin({"steps": 10}, 1) == 0  # inpainting defaults to 1.0
    text = family_for_pipeline("StableDiffusionPipeline").program(torch.nn.Linear(1, 1))
    assert text.loop_begin({"steps": 10, "strength": 0.1}, 1) == 0
