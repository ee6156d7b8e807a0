"""Red-team attacks of an adaptive provider, each recorded through the real hook and judged the
way the verifier judges it: the policy's recipe checks (:func:`recipe_violations`, which the
verifier runs on the committed recipe before any re-check) and a challenge of every step
(:func:`verify_challenge`). Each test asserts that the verifier rejects the attack, or reports
what it could not check (an incomplete challenge, never a pass). A newly found bypass joins as
``xfail(strict=True)`` naming what it demonstrates, until the check that closes it lands.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from samplerguard.commitment.challenge import ChallengeResult, verify_challenge
from samplerguard.commitment.digest import output_bytes
from samplerguard.commitment.opening import Opening
from samplerguard.commitment.request import verify_response
from samplerguard.commitment.statement import Commitment
from samplerguard.errors import VerificationError
from samplerguard.hook import pipelines
from samplerguard.hook.local import LocalSink
from samplerguard.hook.pipelines import instrument
from samplerguard.hook.recorder import Recorder, TrajectoryRequest
from samplerguard.models.digits import SCHEDULER_CONFIG, StepInputs, guided_eps, scheduler_step
from samplerguard.models.programs import DigitsProgram
from samplerguard.policy.conformance import recipe_violations
from samplerguard.policy.spec import GoldenDigests, SamplerPolicySpec
from samplerguard.verifier.reference import ReferenceModels
from tests.support.families import Case, request_for, stable_diffusion_prompted

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
STEPS = 10  # the quickstart policy allows 10..50
LABELS = [3, 7]


def _policy(name: str, **override: Any) -> SamplerPolicySpec:
    """A shipped policy's spec, as the verifier holds it."""
    doc = yaml.safe_load((ROOT / "policies" / name).read_text())
    return SamplerPolicySpec.model_validate({**doc["spec"], **override})


def _verifier_rejects(
    spec: SamplerPolicySpec, commitment: Commitment, judge: Callable[[], ChallengeResult]
) -> str | None:
    """What the verifier rejects the trajectory for (the policy, a binding check, a step), or
    None when every check passes and nothing was left unchecked."""
    recipe = commitment.recipe
    violations = recipe_violations(spec, recipe, str(recipe.get("rng", "framework")))
    if violations:
        return "policy: " + "; ".join(m for _, m in violations)
    try:
        result = judge()
    except VerificationError as exc:
        return str(exc)
    if not result.accepted:
        worst = result.worst
        return f"step {worst.step if worst else '?'} rejected"
    if result.unchecked:
        return "incomplete: " + "; ".join(result.unchecked)
    return None


# -- the digits model through the plain-loop API ------------------------------------------------


@dataclass
class Served:
    commitment: Commitment
    sink: LocalSink
    output: bytes
    params: dict[str, Any]
    unet_calls: int

    def challenge(self, program: Any, tau: float = 1e-5) -> ChallengeResult:
        rid = self.commitment.request_id
        return verify_challenge(
            self.commitment,
            self.sink.transcript(rid),
            lambda s: self.sink.opening(rid, s),
            program,
            steps=list(range(self.commitment.n_steps)),
            tau=tau,
        )


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[Recorder, LocalSink]]:
    sink = LocalSink()
    rec = Recorder(sink)
    yield rec, sink
    rec.close()


def serve_digits(
    tiny_unet: Any,
    recorder: tuple[Recorder, LocalSink],
    request_id: str,
    scheduler: Any,
    *,
    skip: Callable[[int, Any], bool] = lambda i, s: False,
    step_kwargs: dict[str, Any] | None = None,
    latents: torch.Tensor | None = None,
    params: dict[str, Any] | None = None,
    noise_fn: Any = None,
    provider_unet: Any = None,
) -> Served:
    """One request for the digits model on ``scheduler`` (an Euler instance the provider
    builds), with the UNet skipped on the steps ``skip(i, scheduler)`` names."""
    from samplerguard.commitment.draws import noise_from

    rec, sink = recorder
    scheduler.set_timesteps(STEPS)
    consumer = {
        "requestId": request_id,
        "tenant": "tenant-a",
        "classLabels": LABELS,
        "steps": STEPS,
        "guidanceScale": 3.0,
        **(params or {}),
    }
    request = TrajectoryRequest(
        request_id=request_id,
        tenant="tenant-a",
        pipeline="digits",
        model_name="digits",
        model_digest=DigitsProgram(tiny_unet).model_digest,
        sampler="euler",
        guidance_scale=3.0,
        steps=STEPS,
        params=consumer,
    )
    inputs = StepInputs(torch.tensor(LABELS), 3.0)
    if latents is None:
        latents = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(5))
        latents = latents * scheduler.init_noise_sigma
    calls = 0
    with torch.no_grad(), rec.trajectory(request) as tr:
        tr.begin(scheduler, latents, conditioning={"class_labels": inputs.class_labels})
        for i, t in enumerate(scheduler.timesteps):
            if skip(i, scheduler):
                scheduler.scale_model_input(latents, t)  # the state a genuine loop leaves
                eps = torch.zeros_like(latents)  # the UNet never runs
            else:
                calls += 1
                if provider_unet is None:
                    eps = guided_eps(tiny_unet, scheduler, latents, t, inputs)
                else:  # the provider's own (cheaper) copy of the model
                    dtype = next(provider_unet.parameters()).dtype
                    z = latents.to(dtype)
                    eps = guided_eps(provider_unet, scheduler, z, t, inputs).float()
            if step_kwargs:
                if noise_fn is not None:
                    with noise_from(noise_fn):
                        out = scheduler.step(eps, t, latents, return_dict=False, **step_kwargs)
                else:
                    out = scheduler.step(eps, t, latents, return_dict=False, **step_kwargs)
                latents = out[0]
            else:
                latents = scheduler_step(scheduler, eps, t, latents)
            tr.step(i, t, latents, scheduler)
        out_bytes = output_bytes(latents)
        tr.end(latents, out_bytes)
    assert tr.commitment is not None
    return Served(tr.commitment, sink, out_bytes, consumer, calls)


def _no_op_step(i: int, scheduler: Any) -> bool:
    """A step whose sigma equals the next one: ``x + ε·(σ_{i+1} − σ_i)`` is ``x`` whatever ε."""
    return bool(scheduler.sigmas[i] == scheduler.sigmas[i + 1])


def _betas_with_plateaus(keep: set[int]) -> list[float]:
    """``trained_betas`` equal to the linear schedule's where a kept step's interval lies, and 0
    elsewhere: ᾱ is constant over a zero-beta interval, so σ repeats and the step is a no-op.
    Under ``leading`` spacing step i of 10 sits at timestep 900 − 100·i."""
    base = torch.linspace(0.0001, 0.02, 1000, dtype=torch.float64)
    betas = torch.zeros(1000, dtype=torch.float64)
    for i in keep:  # step i moves σ from t_i to t_{i+1} = t_i − 100: keep its betas
        t_hi = 900 - 100 * i
        t_lo = max(t_hi - 100, 0)
        betas[t_lo + 1 : t_hi + 1] = base[t_lo + 1 : t_hi + 1] * 10 / len(keep)
    betas[0] = base[0]
    return [float(b) for b in betas]


def test_unpinned_scheduler_config_with_plateaued_betas_runs_4_of_10_steps(
    tiny_unet: Any, program: DigitsProgram, recorder: Any
) -> None:
    """The quickstart policy allows Euler with ``leading`` spacing and pins no scheduler
    config. The provider declares Euler on the digits model with ``trained_betas`` of its
    choosing: zero betas over the intervals of 6 steps, so σ_i = σ_i+1 there (exact no-ops),
    and the remaining 4 steps (3 kept and the last) cover the whole noise range. Every field
    the policy reads (the sampler, the schedule id, the prediction type, steps, CFG) is what
    the consumer paid for."""
    from diffusers import EulerDiscreteScheduler

    keep = {0, 3, 6}
    config = {**SCHEDULER_CONFIG, "timestep_spacing": "leading", "steps_offset": 0}
    scheduler = EulerDiscreteScheduler.from_config(
        {**config, "trained_betas": _betas_with_plateaus(keep)}
    )
    served = serve_digits(tiny_unet, recorder, "betas-1", scheduler, skip=_no_op_step)
    assert served.unet_calls == 4  # the provider ran the UNet on 4 of 10 steps
    spec = _policy("quickstart.yaml", rng={"mode": "framework"})
    why = _verifier_rejects(spec, served.commitment, lambda: served.challenge(program))
    assert why is not None and "scheduler config: " in why, why


def test_unpinned_scheduler_config_with_a_huge_steps_offset_skips_the_top_steps(
    tiny_unet: Any, program: DigitsProgram, recorder: Any
) -> None:
    """No exotic field: ``steps_offset`` is an ordinary integer of every diffusers scheduler.
    Euler interpolates σ at timesteps past the training range to σ_max, so every step whose
    timestep lies past 999 is a no-op."""
    from diffusers import EulerDiscreteScheduler

    config = {**SCHEDULER_CONFIG, "timestep_spacing": "leading", "steps_offset": 640}
    served = serve_digits(
        tiny_unet,
        recorder,
        "offset-1",
        EulerDiscreteScheduler.from_config(config),
        skip=_no_op_step,
    )
    assert served.unet_calls == 5  # 5 of the 10 steps are no-ops
    spec = _policy("quickstart.yaml", rng={"mode": "framework"})
    why = _verifier_rejects(spec, served.commitment, lambda: served.challenge(program))
    assert why is not None and "scheduler config: " in why, why


# -- Stable Diffusion through the instrumented diffusers pipeline -------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The verifier's reference: the honest pipeline, saved as a diffusers folder."""
    path = tmp_path_factory.mktemp("sd")
    stable_diffusion_prompted().pipe.save_pretrained(path, safe_serialization=True)
    return path


def _references(folder: Path, commitment: Commitment) -> Any:
    """An operator who serves one checkpoint for text-to-image and image-to-image keeps one
    reference folder for both families."""
    digest = commitment.recipe["model"]["digest"]
    refs = ReferenceModels(
        {"stable-diffusion": folder, "stable-diffusion-img2img": folder},
        GoldenDigests(model_weights=[digest]),
    )
    return refs.program(dict(commitment.recipe))


def _challenge_sd(folder: Path, sink: LocalSink, commitment: Commitment) -> ChallengeResult:
    rid = commitment.request_id
    return verify_challenge(
        commitment,
        sink.transcript(rid),
        lambda s: Opening.from_bytes(sink.opening(rid, s).to_bytes()),
        _references(folder, commitment),
        steps=list(range(commitment.n_steps)),
        tau=0.0,
    )


def _run(pipe: Any, request: TrajectoryRequest, **call: Any) -> tuple[LocalSink, Any]:
    sink = LocalSink()
    recorder = Recorder(sink)
    try:
        out = instrument(pipe, recorder)(
            generator=torch.Generator().manual_seed(7), trajectory_request=request, **call
        )
    finally:
        recorder.close()
    return sink, out


def _sd_policy() -> SamplerPolicySpec:
    """The SD 1.5 policy with its pins replaced by the tiny model's (Euler, framework noise
    for the image-to-image family, which z_N is no plain draw of)."""
    return _policy(
        "sd15-euler-dpmpp2m.yaml",
        recipe={
            "samplers": ["euler"],
            "schedules": ["leading", "linspace"],
            "steps": {"min": 1, "max": 50},
            "cfg": {"min": 1.0, "max": 12.0},
            "predictionTypes": ["epsilon"],
        },
        goldenDigests={},
        rng={"mode": "framework"},
    )


def _img2img(case: Case) -> Any:
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(**case.pipe.components, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_a_text_to_image_request_served_as_image_to_image_runs_fewer_smaller_steps(
    folder: Path,
) -> None:
    """The consumer asks for a 32x32 text-to-image generation, 5 steps. The provider runs the
    image-to-image pipeline of the same checkpoint on a 16x16 gray image of its own: the loop
    starts at schedule index 1 (the pipeline's default strength 0.8, since the request names
    none) and every UNet call sees a quarter of the pixels asked for. The commitment binds the
    consumer's own parameters, so the consumer's one call accepts it too."""
    case = stable_diffusion_prompted()
    consumer = {
        "requestId": "as-img2img",
        "tenant": "t",
        "steps": 5,
        "guidanceScale": 3.0,
        "prompt": "a red cat",
        "negativePrompt": "blurry",
        "height": 32,
        "width": 32,
    }
    request = request_for(case, "as-img2img")
    request = TrajectoryRequest(
        **{
            **request.__dict__,
            "pipeline": "stable-diffusion-img2img",
            "steps": 5,
            "params": consumer,
        }
    )
    sink, out = _run(
        _img2img(case),
        request,
        prompt="a red cat",
        negative_prompt="blurry",
        image=torch.full((1, 3, 16, 16), 0.5),
        num_inference_steps=5,
        guidance_scale=3.0,
        output_type="np",
    )
    commitment = Commitment.verify(out.commitment.to_json(), sink.key.public_key())
    assert commitment.n_steps == 4 and commitment.recipe["latent_shape"] == [1, 4, 8, 8]
    verify_response(  # the consumer's check passes: its parameters, its output
        out.commitment.to_json(),
        sink.key.public_key(),
        request=consumer,
        output=output_bytes(out.output.images),
    )
    why = _verifier_rejects(
        _sd_policy(), commitment, lambda: _challenge_sd(folder, sink, commitment)
    )
    assert why is not None and "request names ['height', 'width']" in why, why


def test_image_to_image_of_another_image_is_rejected(folder: Path) -> None:
    """The consumer sends its photo; the provider runs image-to-image of another image (a
    cached result, a stock picture). The request parameters the hook records hold no trace of
    the image, and nothing is reported unchecked."""
    case = stable_diffusion_prompted()
    pipe = _img2img(case)
    request = TrajectoryRequest(
        **{**request_for(case, "other-image").__dict__, "pipeline": "stable-diffusion-img2img"}
    )
    theirs = torch.rand((1, 3, 16, 16), generator=torch.Generator().manual_seed(3))
    consumer_call = {
        "prompt": "a red cat",
        "image": theirs,
        "strength": 0.75,
        "num_inference_steps": case.steps,
        "guidance_scale": case.guidance,
        "output_type": "np",
    }
    sink, out = _run(pipe, request, **{**consumer_call, "image": 1.0 - theirs})
    commitment = Commitment.verify(out.commitment.to_json(), sink.key.public_key())
    params = sink.transcript("other-image").meta.request
    assert params is not None and not any(
        isinstance(v, list) and len(v) >= theirs.numel() for v in params.values()
    )  # the image is nowhere in what the commitment binds
    why = _verifier_rejects(
        _sd_policy(), commitment, lambda: _challenge_sd(folder, sink, commitment)
    )
    assert why is not None and "initial latent (the consumer's image" in why, why


def _forge(monkeypatch: pytest.MonkeyPatch, **fields: Any) -> None:
    """The provider records request parameters other than those of the call it ran."""
    real = pipelines.request_params
    monkeypatch.setattr(pipelines, "request_params", lambda *a: {**real(*a), **fields})


def _spoof_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider's hook declares a build the verifier does not reproduce (it costs
    nothing: the fingerprint is the provider's claim)."""
    from samplerguard.commitment.fingerprint import build_fingerprint
    from samplerguard.hook import recorder as hook_recorder

    mine = build_fingerprint("cpu")
    monkeypatch.setattr(hook_recorder, "build_fingerprint", lambda d: {**mine, "torch": "0.0.1"})


def test_a_swapped_prompt_under_a_spoofed_build_is_rejected(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _spoof_build(monkeypatch)
    _forge(monkeypatch, prompt="a blue dog")
    case = stable_diffusion_prompted()
    sink, out = _run(
        case.pipe,
        request_for(case, "spoof-prompt"),
        num_inference_steps=case.steps,
        guidance_scale=case.guidance,
        **case.kwargs,
    )
    commitment = Commitment.verify(out.commitment.to_json(), sink.key.public_key())
    with pytest.raises(VerificationError, match="request binding"):
        result = _challenge_sd(folder, sink, commitment)
        assert result.accepted, "a step failed"
        pytest.fail(f"accepted; NOT CHECKED: {result.unchecked}")  # what happens today


def test_a_swapped_output_under_a_spoofed_build_is_rejected(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _spoof_build(monkeypatch)
    case = stable_diffusion_prompted()
    processor = case.pipe.image_processor
    real = processor.postprocess
    monkeypatch.setattr(processor, "postprocess", lambda *a, **k: 1.0 - real(*a, **k))
    sink, out = _run(
        case.pipe,
        request_for(case, "spoof-output"),
        num_inference_steps=case.steps,
        guidance_scale=case.guidance,
        **case.kwargs,
    )
    commitment = Commitment.verify(out.commitment.to_json(), sink.key.public_key())
    with pytest.raises(VerificationError, match="output binding"):
        result = _challenge_sd(folder, sink, commitment)
        assert result.accepted, "a step failed"
        pytest.fail(f"accepted; NOT CHECKED: {result.unchecked}")


def test_step_arguments_the_pipeline_never_passes_are_rejected(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stable Diffusion's pipeline passes Euler no step arguments (``eta`` only to schedulers
    that take it). The provider's code path passes ``s_churn`` and a large ``s_noise``: each
    step adds σ·s_noise·z of framework noise (the provider's generator), a channel that moves
    the output wherever the provider likes while every step re-checks to 0."""
    case = stable_diffusion_prompted()
    _, honest = _run(
        case.pipe,
        request_for(case, "churn-honest"),
        num_inference_steps=case.steps,
        guidance_scale=case.guidance,
        **case.kwargs,
    )
    pipe = case.pipe
    real = pipe.prepare_extra_step_kwargs
    monkeypatch.setattr(
        pipe,
        "prepare_extra_step_kwargs",
        lambda gen, eta: {**real(gen, eta), "s_churn": 10.0, "s_noise": 3.0},
    )
    sink, out = _run(
        pipe,
        request_for(case, "churn"),
        num_inference_steps=case.steps,
        guidance_scale=case.guidance,
        **case.kwargs,
    )
    commitment = Commitment.verify(out.commitment.to_json(), sink.key.public_key())
    assert commitment.recipe["step_args"] == {"s_churn": 10.0, "s_noise": 3.0}
    a = torch.as_tensor(honest.output.images)
    b = torch.as_tensor(out.output.images)
    assert float((a - b).norm() / a.norm()) > 0.05  # another image for the same request
    why = _verifier_rejects(
        _sd_policy(), commitment, lambda: _challenge_sd(folder, sink, commitment)
    )
    assert why is not None and "the scheduler's steps ran with" in why, why


@pytest.mark.parametrize(
    "hostile",
    [
        {"negativePrompt": ["a", "b"]},  # two negatives for one prompt
        {"clipSkip": 64},  # more layers skipped than the text encoder has
    ],
    ids=["negative-batch", "clip-skip"],
)
def test_hostile_request_parameters_are_a_named_rejection_not_a_crash(
    folder: Path, monkeypatch: pytest.MonkeyPatch, hostile: dict[str, Any]
) -> None:
    """Request parameters the reference encoder cannot use must fail the request binding by
    name (the provider controls them), not escape the verifier as a diffusers exception."""
    _forge(monkeypatch, **hostile)
    case = stable_diffusion_prompted()
    sink, out = _run(
        case.pipe,
        request_for(case, "hostile"),
        num_inference_steps=case.steps,
        guidance_scale=case.guidance,
        **case.kwargs,
    )
    commitment = Commitment.verify(out.commitment.to_json(), sink.key.public_key())
    with pytest.raises(VerificationError, match=r"request binding: .*(negativePrompt|clipSkip)"):
        _challenge_sd(folder, sink, commitment)


def test_a_starting_noise_other_than_the_requested_seed_is_rejected(
    tiny_unet: Any, program: DigitsProgram, recorder: Any
) -> None:
    """The consumer asks for seed 5 (reproducibility, or a seed it picked from a preview). The
    provider starts from another noise of its choosing, e.g. the best of several draws, or the
    noised latent of a cached image; every step it runs is honest. A seed is not something the
    hook can bind in framework mode (the app's generator is its own), so a request naming one
    is refused as an option the pipeline ignored; seeded noise is what the DRBG modes give."""
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG)
    scheduler.set_timesteps(STEPS)
    other = torch.randn((2, 1, 8, 8), generator=torch.Generator().manual_seed(6))
    served = serve_digits(
        tiny_unet,
        recorder,
        "seed-1",
        scheduler,
        latents=other * scheduler.init_noise_sigma,
        params={"seed": 5},
    )
    spec = _policy("quickstart.yaml", rng={"mode": "framework"})
    why = _verifier_rejects(spec, served.commitment, lambda: served.challenge(program))
    assert why is not None and "request names ['seed']" in why, why


def test_a_bfloat16_model_behind_a_spoofed_build_is_rejected_at_the_policys_tau(
    tiny_unet: Any, program: DigitsProgram, recorder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Declaring a build the verifier cannot reproduce moves the re-check from exact to the
    policy's tau (quickstart: 1e-4). A provider that uses that slack to run the UNet in
    bfloat16 (half the memory traffic on a GPU) scores about 2e-2 on its first step: caught.
    An honest run under the same spoofed build still re-checks to exactly 0."""
    import copy

    from diffusers import EulerDiscreteScheduler

    from samplerguard.commitment.fingerprint import build_fingerprint
    from samplerguard.hook import recorder as hook_recorder

    mine = build_fingerprint("cpu")
    monkeypatch.setattr(hook_recorder, "build_fingerprint", lambda d: {**mine, "torch": "0.0.1"})
    low = copy.deepcopy(tiny_unet).to(torch.bfloat16)
    served = serve_digits(
        tiny_unet,
        recorder,
        "bf16-1",
        EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG),
        provider_unet=low,
    )
    tau = _policy("quickstart.yaml").verification.tau
    assert tau is not None
    result = served.challenge(program, tau=tau)
    assert not result.exact and not result.accepted
    assert result.results[0].worst > 100 * tau
    honest = serve_digits(
        tiny_unet, recorder, "bf16-honest", EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG)
    )
    assert all(r.worst == 0.0 for r in honest.challenge(program, tau=tau).results)
