"""The hook observes and never changes: bitwise-equal outputs, and every step re-checks to 0.

One contract, run for every supported scheduler, on the bundled pipeline and on a real
StableDiffusionPipeline built from tiny random components.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from samplerguard.commitment.digest import module_digest
from samplerguard.commitment.opening import Opening
from samplerguard.commitment.recheck import recheck_step
from samplerguard.commitment.statement import Commitment
from samplerguard.demo.providers import make_scheduler
from samplerguard.families.stable_diffusion import StableDiffusionProgram
from samplerguard.hook.local import LocalSink
from samplerguard.hook.pipelines import instrument
from samplerguard.hook.recorder import Recorder, RecordingError, TrajectoryRequest
from samplerguard.models.digits import DigitsPipeline
from samplerguard.models.programs import DigitsProgram

SAMPLERS = ["euler", "euler_ancestral", "ddim", "ddpm", "heun", "dpmpp_2m", "unipc"]


def _request(sampler: str, digest: str, pipeline: str, steps: int, cfg: float) -> TrajectoryRequest:
    return TrajectoryRequest(
        request_id="req-1",
        tenant="t",
        pipeline=pipeline,
        model_name="m",
        model_digest=digest,
        sampler=sampler,
        guidance_scale=cfg,
        steps=steps,
    )


def _recheck_all(sink: LocalSink, commitment: Commitment, program: Any) -> list[float]:
    c = Commitment.verify(commitment.to_json(), sink.key.public_key())
    scores = []
    for step in range(c.n_steps):
        opening = Opening.from_bytes(sink.opening(c.request_id, step).to_bytes())
        scores.append(recheck_step(c, opening, program, tau=0.0).worst)
    return scores


class SchedulerContract:
    """Shared by every pipeline family: subclasses supply ``run(pipe_or_instrumented)``."""

    steps = 5

    def build(self, sampler: str) -> tuple[Any, Any]:
        raise NotImplementedError

    def call(self, pipe: Any, **kw: Any) -> Any:
        raise NotImplementedError

    def images(self, output: Any) -> torch.Tensor:
        return torch.as_tensor(output)

    @pytest.mark.parametrize("sampler", SAMPLERS)
    def test_bitwise_equal_and_every_step_rechecks_to_zero(self, sampler: str) -> None:
        pipe, program = self.build(sampler)
        plain = self.call(pipe)
        sink = LocalSink()
        recorder = Recorder(sink)
        try:
            req = _request(sampler, program.model_digest, program.pipeline, self.steps, 3.0)
            recorded = self.call(instrument(pipe, recorder), trajectory_request=req)
        finally:
            recorder.close()
        assert torch.equal(self.images(plain), self.images(recorded.output))
        scores = _recheck_all(sink, recorded.commitment, program)
        assert len(scores) == len(pipe.scheduler.timesteps)
        assert scores == [0.0] * len(scores)


class TestDigitsPipeline(SchedulerContract):
    def build(self, sampler: str) -> tuple[Any, Any]:
        from samplerguard.models.digits import build_unet

        unet = build_unet(seed=0).eval()
        return DigitsPipeline(unet, make_scheduler(sampler)), DigitsProgram(unet)

    def call(self, pipe: Any, **kw: Any) -> Any:
        gen = torch.Generator().manual_seed(5)
        return pipe([1, 4], num_inference_steps=self.steps, guidance_scale=3.0, generator=gen, **kw)


class TestTinyStableDiffusion(SchedulerContract):
    steps = 4

    def build(self, sampler: str) -> tuple[Any, Any]:
        from tests.support.tiny_sd import build_tiny_sd

        pipe = build_tiny_sd(make_scheduler(sampler))
        return pipe, StableDiffusionProgram(pipe.unet, module_digest(pipe.unet))

    def call(self, pipe: Any, **kw: Any) -> Any:
        from tests.support.tiny_sd import prompt_embeddings

        return pipe(
            prompt_embeds=prompt_embeddings(1, seed=1),
            negative_prompt_embeds=prompt_embeddings(1, seed=2),
            num_inference_steps=self.steps,
            guidance_scale=3.0,
            height=32,
            width=32,
            generator=torch.Generator().manual_seed(3),
            output_type="pt",
            **kw,
        )

    def images(self, output: Any) -> torch.Tensor:
        return torch.as_tensor(output.images)


def test_user_callback_still_runs_and_can_read_its_inputs(tiny_unet: Any) -> None:
    pipe = DigitsPipeline(tiny_unet, make_scheduler("euler"))
    seen: list[int] = []

    def cb(p: Any, i: int, t: Any, kw: dict[str, Any]) -> dict[str, Any]:
        seen.append(i)
        assert set(kw) == {"latents"}
        return kw

    recorder = Recorder(LocalSink())
    try:
        instrument(pipe, recorder)(
            [2],
            num_inference_steps=3,
            callback_on_step_end=cb,
            trajectory_request=_request("euler", "sha256:" + "0" * 64, "digits", 3, 3.0),
        )
    finally:
        recorder.close()
    assert seen == [0, 1, 2]
    assert "prepare_latents" not in vars(pipe)  # the wrapper is gone after the call


@pytest.mark.parametrize("early_start", [False, True])
def test_a_failing_generation_is_never_committed(tiny_unet: Any, early_start: bool) -> None:
    pipe = DigitsPipeline(tiny_unet, make_scheduler("euler"))
    sink = LocalSink()
    recorder = Recorder(sink, early_start=early_start)

    def boom(p: Any, i: int, t: Any, kw: dict[str, Any]) -> dict[str, Any]:
        if i == 1:
            raise RuntimeError("out of memory")
        return kw

    try:
        with pytest.raises(RuntimeError, match="out of memory"):
            instrument(pipe, recorder)(
                [2],
                num_inference_steps=3,
                callback_on_step_end=boom,
                trajectory_request=_request("euler", "sha256:" + "0" * 64, "digits", 3, 3.0),
            )
    finally:
        recorder.close()
    # started at once, the trajectory is aborted at the sink; held for the first hand-off, it
    # never reached the sink at all
    assert ("req-1" in sink.aborted) is early_start
    with pytest.raises(Exception, match="no trajectory 'req-1'"):
        sink.record("req-1")


def test_plain_loop_misuse_is_refused() -> None:
    from samplerguard.errors import MalformedInputError

    recorder = Recorder(LocalSink())
    sched = make_scheduler("euler")
    sched.set_timesteps(2)
    try:
        with (
            pytest.raises(RecordingError),
            recorder.trajectory(_request("euler", "sha256:" + "0" * 64, "digits", 2, 3.0)) as tr,
        ):
            with pytest.raises(MalformedInputError, match="before begin"):
                tr.step(0, sched.timesteps[0], torch.zeros(1), sched)
            tr.begin(sched, torch.zeros(1, 1, 8, 8), conditioning={})
            with pytest.raises(MalformedInputError, match="out of order"):
                tr.step(1, sched.timesteps[1], torch.zeros(1, 1, 8, 8), sched)
    finally:
        recorder.close()
