"""The family contract: every supported pipeline family records through the hook with output
bitwise equal to an unrecorded run, re-checks to exactly 0 at every step on the same build,
and has a substituted model (weights moved by 1e-3 relative) rejected at every step.

A new family passes by adding a builder to ``tests/support/families.py`` and a subclass of
:class:`FamilyContract` here.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from typing import Any

import numpy as np
import pytest
import torch

from samplerguard.commitment.digest import module_digest
from samplerguard.commitment.opening import Opening
from samplerguard.commitment.recheck import recheck_step
from samplerguard.commitment.statement import Commitment
from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.families import UnsupportedPipeline, family_for_pipeline
from samplerguard.hook.local import LocalSink
from samplerguard.hook.pipelines import RecordedOutput, instrument
from samplerguard.hook.recorder import Recorder
from tests.support.families import BUILDERS, Case, request_for

pytestmark = pytest.mark.slow


def _openings(sink: LocalSink, commitment: Commitment) -> tuple[Commitment, list[Opening]]:
    c = Commitment.verify(commitment.to_json(), sink.key.public_key())
    return c, [
        Opening.from_bytes(sink.opening(c.request_id, i).to_bytes()) for i in range(c.n_steps)
    ]


def _media(output: Any) -> np.ndarray:
    for name in ("images", "frames", "audios"):
        if hasattr(output, name):
            return np.asarray(getattr(output, name))
    raise AssertionError(f"no media in {type(output).__name__}")


def _moved(module: torch.nn.Module, relative: float) -> torch.nn.Module:
    """A copy of ``module`` with every weight moved by ``relative`` of its own norm."""
    other = copy.deepcopy(module)
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in other.parameters():
            noise = torch.randn(p.shape, generator=gen)
            scale = relative * float(p.norm()) / max(float(noise.norm()), 1e-12)
            p.add_(noise * scale)
    return other


class FamilyContract:
    family: str

    @pytest.fixture(scope="class")
    @classmethod
    def recorded(cls) -> tuple[Case, Any, RecordedOutput, LocalSink]:
        case = BUILDERS[cls.family]()
        plain = case.call(case.pipe)
        sink = LocalSink()
        recorder = Recorder(sink)
        try:
            out = case.call(instrument(case.pipe, recorder), trajectory_request=request_for(case))
        finally:
            recorder.close()
        return case, plain, out, sink

    def test_output_is_bitwise_equal_to_an_unrecorded_run(self, recorded: Any) -> None:
        _, plain, out, _ = recorded
        got, want = _media(out.output), _media(plain)
        assert got.shape == want.shape and np.array_equal(got, want)

    def test_every_step_rechecks_to_exactly_zero(self, recorded: Any) -> None:
        case, _, out, sink = recorded
        family = family_for_pipeline(type(case.pipe).__name__)
        program = family.program(getattr(case.pipe, family.denoiser))
        commitment, openings = _openings(sink, out.commitment)
        assert commitment.recipe["pipeline"] == self.family
        scores = [recheck_step(commitment, o, program, tau=0.0).worst for o in openings]
        assert len(scores) == commitment.n_steps >= 2
        assert scores == [0.0] * len(scores)

    def test_a_substituted_model_is_rejected_at_every_step(self, recorded: Any) -> None:
        case, _, out, sink = recorded
        family = family_for_pipeline(type(case.pipe).__name__)
        denoiser = getattr(case.pipe, family.denoiser)
        commitment, openings = _openings(sink, out.commitment)
        # the verifier's model differs from the one that ran by 1e-3 relative: every step
        # re-checks to a nonzero score (the digest is pinned to let the re-check run at all)
        program = family.program(_moved(denoiser, 1e-3), model_digest=module_digest(denoiser))
        scores = [recheck_step(commitment, o, program, tau=0.0).worst for o in openings]
        assert all(s > 0.0 for s in scores), scores

    def test_a_custom_schedule_is_refused(
        self, recorded: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A provider that sets its own schedule (here: halved sigmas after the first, so the
        noise leaves twice as fast) gets past its own hook (the honest hook refuses ``sigmas``
        at the call) and commits it faithfully; the verifier refuses it as not the family's."""
        import inspect

        case = recorded[0]
        family = family_for_pipeline(type(case.pipe).__name__)
        scheduler = case.pipe.scheduler
        if "sigmas" not in inspect.signature(type(case.pipe).__call__).parameters or (
            "sigmas" not in inspect.signature(scheduler.set_timesteps).parameters
        ):
            pytest.skip(
                f"{type(case.pipe).__name__} with {type(scheduler).__name__} takes no sigmas"
            )
        with pytest.raises(UnsupportedPipeline, match="sigmas"):
            case.call(
                instrument(case.pipe, Recorder(LocalSink())),
                trajectory_request=request_for(case),
                sigmas=[1.0],
            )
        monkeypatch.setattr(type(family), "neutral_options", {})
        fresh = type(scheduler).from_config(scheduler.config)
        fresh.set_timesteps(case.steps, mu=0.5) if "mu" in inspect.signature(
            fresh.set_timesteps
        ).parameters and scheduler.config.get("use_dynamic_shifting") else fresh.set_timesteps(
            case.steps
        )
        sigmas = [float(x) for x in fresh.sigmas[: case.steps]]
        sigmas = [sigmas[0]] + [x / 2 for x in sigmas[1:]]  # the noise leaves twice as fast
        sink = LocalSink()
        recorder = Recorder(sink)
        try:
            out = case.call(
                instrument(case.pipe, recorder), trajectory_request=request_for(case), sigmas=sigmas
            )
        finally:
            recorder.close()
        program = family.program(getattr(case.pipe, family.denoiser))
        commitment, openings = _openings(sink, out.commitment)
        with pytest.raises(VerificationError, match="custom schedule"):
            recheck_step(commitment, openings[0], program, tau=0.0)


class TestStableDiffusion(FamilyContract):
    family = "stable-diffusion"


class TestStableDiffusionImg2Img(FamilyContract):
    family = "stable-diffusion-img2img"

    def test_the_loop_starts_at_the_strength(self, recorded: Any) -> None:
        case, _, out, _ = recorded
        recipe = out.commitment.recipe
        assert recipe["begin_index"] == case.steps - int(case.steps * case.kwargs["strength"])
        assert out.commitment.n_steps == case.steps - recipe["begin_index"]
        assert recipe["step_args"] == {"eta": 0.5}


class TestStableDiffusionXL(FamilyContract):
    family = "stable-diffusion-xl"


class TestStableDiffusion3(FamilyContract):
    family = "stable-diffusion-3"


class TestFlux(FamilyContract):
    family = "flux"

    def test_the_dynamic_shift_is_recorded(self, recorded: Any) -> None:
        _, _, out, _ = recorded
        call = out.commitment.recipe["set_timesteps"]
        assert set(call) == {"sigmas", "mu"} and len(call["sigmas"]) == 4


class TestPixArtSigma(FamilyContract):
    family = "pixart-sigma"


class TestStableDiffusionInpaint(FamilyContract):
    family = "stable-diffusion-inpaint"


class TestLatentConsistency(FamilyContract):
    family = "latent-consistency"


class TestAnimateDiff(FamilyContract):
    family = "animatediff"


class TestWan(FamilyContract):
    family = "wan"


class TestStableAudio(FamilyContract):
    family = "stable-audio"


def test_brownian_tree_samplers_are_refused_when_the_request_starts() -> None:
    """Stable Audio's default sampler draws Brownian-tree noise (torchsde), not step by step:
    a request declaring it is refused with that reason before anything is generated."""
    from samplerguard.policy.spec import REFUSED_SCHEDULERS

    for name in ("CosineDPMSolverMultistepScheduler", "DPMSolverSDEScheduler"):
        assert "Brownian" in REFUSED_SCHEDULERS[name]
    case = BUILDERS["stable-audio"]()
    with pytest.raises(MalformedInputError, match="Brownian"):
        dataclasses.replace(request_for(case), sampler="CosineDPMSolverMultistepScheduler")


def test_concurrent_generations_on_one_pipeline_are_each_committed_correctly() -> None:
    case = BUILDERS["stable-diffusion"]()
    family = family_for_pipeline(type(case.pipe).__name__)
    program = family.program(case.pipe.unet)
    sink = LocalSink()
    recorder = Recorder(sink)
    runner = instrument(case.pipe, recorder)
    results: dict[int, RecordedOutput] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = case.call(runner, trajectory_request=request_for(case, f"req-{i}"))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    recorder.close()
    assert not errors and len(results) == 4
    for out in results.values():
        commitment, openings = _openings(sink, out.commitment)
        assert [recheck_step(commitment, o, program, tau=0.0).worst for o in openings] == [
            0.0
        ] * commitment.n_steps


def test_an_unsupported_pipeline_is_named_when_instrumented() -> None:
    class MyPipeline:
        pass

    with pytest.raises(UnsupportedPipeline, match="MyPipeline is not a supported pipeline"):
        instrument(MyPipeline(), Recorder(LocalSink()))


def test_an_option_the_step_program_does_not_run_is_refused_at_the_call() -> None:
    """Guidance rescale changes the loop body in a way the step program does not re-run: the
    call is refused before it starts instead of committing an unverifiable trajectory."""
    case = BUILDERS["stable-diffusion"]()
    sink = LocalSink()
    recorder = Recorder(sink)
    try:
        with pytest.raises(UnsupportedPipeline, match="guidance_rescale"):
            case.call(
                instrument(case.pipe, recorder),
                trajectory_request=request_for(case),
                guidance_rescale=0.7,
            )
    finally:
        recorder.close()


def test_drbg_noise_is_refused_where_z_n_is_not_a_plain_draw() -> None:
    """Flux packs its noise into patches: the verifier could not regenerate z_N from the
    escrowed DRBG, so a DRBG-mode request is refused at its first step, not left unchecked."""
    case = BUILDERS["flux"]()
    request = dataclasses.replace(request_for(case), rng_mode="ctr-drbg")
    recorder = Recorder(LocalSink())
    try:
        with pytest.raises(UnsupportedPipeline, match="packed latents"):
            case.call(instrument(case.pipe, recorder), trajectory_request=request)
    finally:
        recorder.close()
