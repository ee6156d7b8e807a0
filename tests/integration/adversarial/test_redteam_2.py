"""Red-team attacks of an adaptive provider, second pass: around the checks that closed the first
pass's findings (the noise-process keys of the scheduler config, the policy's recipe checks, the
DRBG noise stream). Each attack records through the real hook's plain-loop API and is judged the
way the verifier judges it: the policy's recipe checks (:func:`recipe_violations`) and a
challenge of every step (:func:`verify_challenge`, with the escrowed noise stream in the DRBG
modes). A test asserts that the verifier rejects the attack or reports what it could not check;
a confirmed bypass is ``xfail(strict=True)`` naming what it demonstrates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from samplerguard.commitment.challenge import verify_challenge
from samplerguard.commitment.digest import output_bytes
from samplerguard.commitment.draws import noise_from
from samplerguard.commitment.statement import Commitment
from samplerguard.hook.local import LocalSink
from samplerguard.hook.recorder import Recorder, TrajectoryRequest
from samplerguard.models.digits import SCHEDULER_CONFIG, StepInputs, guided_eps
from samplerguard.models.programs import DigitsProgram
from samplerguard.policy.schedule import scheduler_config_digest
from samplerguard.policy.spec import SamplerPolicySpec
from samplerguard.rng import NoiseAuthority, RequestNoise
from samplerguard.rng.escrow import open_escrow
from tests.integration.adversarial.test_redteam import _policy, _verifier_rejects

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[3]
STEPS = 10
LABELS = [3, 7]
SHAPE = (2, 1, 8, 8)


def _framework() -> SamplerPolicySpec:
    """The quickstart policy (DDIM, Euler, DPM++ 2M on the digits model; no pinned scheduler
    config) with framework noise, as a policy for a pipeline DRBG noise is refused for has it."""
    return _policy("quickstart.yaml", rng={"mode": "framework"})


@dataclass
class Served:
    commitment: Commitment
    sink: LocalSink
    latents: torch.Tensor
    unet_calls: int
    draw: Callable[[tuple[int, ...], torch.dtype], torch.Tensor] | None = None

    def verdict(self, spec: SamplerPolicySpec, program: DigitsProgram) -> str | None:
        """Why the verifier rejects the trajectory, or None when it passes in full."""
        rid = self.commitment.request_id
        return _verifier_rejects(
            spec,
            self.commitment,
            lambda: verify_challenge(
                self.commitment,
                self.sink.transcript(rid),
                lambda s: self.sink.opening(rid, s),
                program,
                steps=list(range(self.commitment.n_steps)),
                tau=1e-5,
                noise=self.draw,
            ),
        )


@pytest.fixture(scope="module")
def recorder() -> Iterator[tuple[Recorder, LocalSink]]:
    sink = LocalSink()
    rec = Recorder(sink)
    yield rec, sink
    rec.close()


@pytest.fixture(scope="module")
def verifier_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def serve(
    tiny_unet: Any,
    recorder: tuple[Recorder, LocalSink],
    request_id: str,
    scheduler: Any,
    *,
    sampler: str,
    skip: Callable[[int, Any], bool] = lambda i, s: False,
    noise_fn: Any = None,
    drbg: X25519PrivateKey | None = None,
    scale_initial: bool = True,
    begin_at_zero: bool = False,
) -> Served:
    """One digits request on ``scheduler`` (built by the provider), the UNet skipped on the
    steps ``skip(i, scheduler)`` names, step noise from ``noise_fn`` (framework mode, the
    provider's own) or from the request's DRBG when ``drbg`` (the verifier's escrow key) is
    given; ``scale_initial=False`` commits the first DRBG draw as z_N without the scheduler's
    initial sigma. ``begin_at_zero`` pins the step counter's start (``set_begin_index(0)``, a
    call diffusers' pipelines make), which a schedule with repeated timesteps needs."""
    rec, sink = recorder
    scheduler.set_timesteps(STEPS)
    if begin_at_zero:
        scheduler.set_begin_index(0)
    params = {
        "requestId": request_id,
        "tenant": "tenant-a",
        "classLabels": LABELS,
        "steps": STEPS,
        "guidanceScale": 3.0,
    }
    noise = None
    escrow = None
    if drbg is not None:
        noise = NoiseAuthority(b"k" * 32, "ctr-drbg").request(
            "tenant-a", request_id, record_draws=False
        )
        escrow = noise.escrow(drbg.public_key())
        first = noise.randn(SHAPE)
        latents = first * scheduler.init_noise_sigma if scale_initial else first
        noise_fn = noise.noise_fn()
    else:
        latents = torch.randn(SHAPE, generator=torch.Generator().manual_seed(5))
        latents = latents * scheduler.init_noise_sigma
    request = TrajectoryRequest(
        request_id=request_id,
        tenant="tenant-a",
        pipeline="digits",
        model_name="digits",
        model_digest=DigitsProgram(tiny_unet).model_digest,
        sampler=sampler,
        guidance_scale=3.0,
        steps=STEPS,
        rng_mode="ctr-drbg" if drbg is not None else "framework",
        params=params,
        extra={"begin_index": 0} if begin_at_zero else {},
    )
    inputs = StepInputs(torch.tensor(LABELS), 3.0)
    calls = 0
    with torch.no_grad(), rec.trajectory(request) as tr:
        tr.begin(scheduler, latents, conditioning={"class_labels": inputs.class_labels})
        for i, t in enumerate(scheduler.timesteps):
            if skip(i, scheduler):
                eps = torch.zeros_like(latents)  # the UNet never runs
            else:
                calls += 1
                eps = guided_eps(tiny_unet, scheduler, latents, t, inputs)
            if noise_fn is not None:
                with noise_from(noise_fn):
                    latents = scheduler.step(eps, t, latents, return_dict=False)[0]
            else:
                latents = scheduler.step(eps, t, latents, return_dict=False)[0]
            tr.step(i, t, latents, scheduler)
        tr.end(latents, output_bytes(latents))
    if noise is not None:
        noise.close()
    assert tr.commitment is not None
    draw = None
    if drbg is not None:
        assert escrow is not None
        seed = open_escrow(drbg, escrow, request_id=request_id)
        stream = RequestNoise(seed, record_draws=False)
        draw = lambda shape, dtype: stream.randn(shape, dtype=dtype)  # noqa: E731
    return Served(tr.commitment, sink, latents, calls, draw)


def _dpm(**config: Any) -> Any:
    from diffusers import DPMSolverMultistepScheduler

    base = {**SCHEDULER_CONFIG, "algorithm_type": "dpmsolver++", "solver_order": 2}
    return DPMSolverMultistepScheduler.from_config({**base, **config})


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# -- 1. DPM++ 2M declared, the SDE variant run: a noise channel the policy never allowed -------


def test_dpmpp_2m_declared_but_run_as_sde_steers_the_output_with_chosen_noise(
    tiny_unet: Any, program: DigitsProgram, recorder: Any
) -> None:
    """The policy allows the deterministic DPM++ 2M. The provider declares ``dpmpp_2m`` on a
    DPMSolverMultistepScheduler whose ``algorithm_type`` is ``sde-dpmsolver++``: every step draws
    a Gaussian, which in framework mode is the provider's to choose (here, a fixed tensor
    pushing every pixel up), and moves the image wherever it likes. Every step re-checks
    exactly, because the committed noise is replayed; the sidecar's recipe guard would call
    this scheduler ``dpmpp_2m_sde``, the verifier does not."""
    honest = serve(tiny_unet, recorder, "sde-honest", _dpm(), sampler="dpmpp_2m")
    steer = torch.full(SHAPE[1:], 2.0)
    served = serve(
        tiny_unet,
        recorder,
        "sde-steered",
        _dpm(algorithm_type="sde-dpmsolver++"),
        sampler="dpmpp_2m",
        noise_fn=lambda shape, dtype, device: steer.expand(shape).to(dtype),
    )
    assert served.commitment.recipe["sampler"] == "dpmpp_2m"
    assert _rel(served.latents, honest.latents) > 0.1  # another image for the same request
    why = served.verdict(_framework(), program)
    assert why is not None and "algorithm_type" in why, why


def test_dpmpp_2m_declared_but_run_as_sde_under_drbg_noise(
    tiny_unet: Any, program: DigitsProgram, recorder: Any, verifier_key: X25519PrivateKey
) -> None:
    served = serve(
        tiny_unet,
        recorder,
        "sde-drbg",
        _dpm(algorithm_type="sde-dpmsolver++"),
        sampler="dpmpp_2m",
        drbg=verifier_key,
    )
    why = served.verdict(_policy("quickstart.yaml"), program)
    assert why is not None and "algorithm_type" in why, why


# -- 2. DPM-Solver's lambda_min_clipped: a schedule that never leaves σ ≈ 0.01 ------------------


def _all_at_t0(scheduler: Any) -> bool:
    return bool((scheduler.timesteps == 0).all())


def test_lambda_min_clipped_no_op_steps_without_the_unet_are_rejected(
    tiny_unet: Any, program: DigitsProgram, recorder: Any
) -> None:
    """``lambda_min_clipped`` (not a noise-process key) above the model's largest log-SNR clips
    the whole schedule to timestep 0: σ is the same on every step, so with ``solver_order`` 1
    every step but the last leaves the latent bit for bit where it was, whatever the model
    output. A provider that skips the UNet on those steps is still caught: the multistep
    history carried to the next step holds the model's data prediction, and the re-check
    compares it."""
    scheduler = _dpm(lambda_min_clipped=4.5, solver_order=1)
    served = serve(
        tiny_unet,
        recorder,
        "clip-skip",
        scheduler,
        sampler="dpmpp_2m",
        skip=lambda i, s: i < STEPS - 1,
        begin_at_zero=True,
    )
    assert _all_at_t0(scheduler) and served.unet_calls == 1
    why = served.verdict(_framework(), program)
    assert why is not None and "lambda_min_clipped is 4.5" in why, why


def test_lambda_min_clipped_serves_the_starting_noise_as_a_full_generation(
    tiny_unet: Any, program: DigitsProgram, recorder: Any
) -> None:
    """The same schedule run honestly (the UNet on every step): nothing is denoised, the output
    is z_N to within σ = 0.01, and the policy's schedule check reads ``linspace``."""
    scheduler = _dpm(lambda_min_clipped=4.5, solver_order=1)
    served = serve(
        tiny_unet, recorder, "clip-honest", scheduler, sampler="dpmpp_2m", begin_at_zero=True
    )
    assert _all_at_t0(scheduler)
    why = served.verdict(_framework(), program)
    assert why is not None and "lambda_min_clipped" in why, why


# -- 3. other solver and schedule knobs no check reads ------------------------------------------


@pytest.mark.parametrize(
    "knob",
    [
        {"use_lu_lambdas": True},  # another schedule, reported as linspace
        {"final_sigmas_type": "sigma_min"},  # the output keeps σ_min of noise
        {"solver_order": 3},  # DPM++ 3M declared as 2M
        {
            "algorithm_type": "dpmsolver",
            "final_sigmas_type": "sigma_min",
        },  # the noise-prediction DPM-Solver, not DPM++
    ],
    ids=["lu-lambdas", "final-sigma-min", "order-3", "dpmsolver"],
)
def test_solver_knobs_outside_the_model_keys_pass_as_dpmpp_2m(
    tiny_unet: Any, program: DigitsProgram, recorder: Any, knob: dict[str, Any]
) -> None:
    honest = serve(tiny_unet, recorder, "knob-honest", _dpm(), sampler="dpmpp_2m")
    served = serve(
        tiny_unet, recorder, f"knob-{next(iter(knob))}", _dpm(**knob), sampler="dpmpp_2m"
    )
    assert not torch.equal(served.latents, honest.latents)
    why = served.verdict(_framework(), program)
    assert why is not None, "another solver passed as DPM++ 2M linspace"


# -- 4. a pinned scheduler config and diffusers' _use_default_values -----------------------------


def test_use_default_values_runs_an_unpinned_schedule_under_the_pinned_digest(
    tiny_unet: Any, program: DigitsProgram, recorder: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator pins Euler with ``leading`` spacing (its digest) and allows only
    ``leading``. The provider runs diffusers' default ``linspace`` and records the pinned config
    plus ``_use_default_values: ["timestep_spacing"]``: the digest (private keys dropped) is the
    pinned one and the schedule id reads ``leading``, while ``from_config`` resets the spacing
    to linspace for every scheduler the verifier builds, so every step re-checks exactly."""
    from diffusers import EulerDiscreteScheduler

    from samplerguard.hook import recorder as hook_recorder

    pinned = {**dict(EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG).config)}
    pinned = {k: v for k, v in pinned.items() if not k.startswith("_")}
    pinned["timestep_spacing"] = "leading"
    digest = scheduler_config_digest("EulerDiscreteScheduler", pinned)
    spec = _policy(
        "quickstart.yaml",
        rng={"mode": "framework"},
        recipe={
            "samplers": ["euler"],
            "schedules": ["leading"],
            "steps": {"min": 10, "max": 50},
            "cfg": {"min": 1.0, "max": 5.0},
            "predictionTypes": ["epsilon"],
        },
        goldenDigests={"schedulerConfig": [digest]},
    )
    real = hook_recorder.scheduler_config
    monkeypatch.setattr(
        hook_recorder,
        "scheduler_config",
        lambda s: {
            **real(s),
            "timestep_spacing": "leading",
            "_use_default_values": ["timestep_spacing"],
        },
    )
    scheduler = EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG)  # linspace
    served = serve(tiny_unet, recorder, "default-values", scheduler, sampler="euler")
    assert served.commitment.recipe["scheduler_config"]["timestep_spacing"] == "leading"
    assert float(scheduler.timesteps[0]) == 999.0  # leading would start at 900
    why = served.verdict(spec, program)
    assert why is not None, "a linspace schedule passed a policy pinning leading"


# -- 5. the DRBG stream's z_N: scaled or not, the verifier takes both ---------------------------


def test_an_unscaled_first_draw_as_z_n_passes_the_noise_stream(
    tiny_unet: Any, program: DigitsProgram, recorder: Any, verifier_key: X25519PrivateKey
) -> None:
    """Euler's initial sigma on the digits model is about 14.6; the digits pipeline (like every
    diffusers pipeline on Euler) multiplies the first draw by it. A provider that starts from
    the unscaled draw serves another image (a second candidate for every request: one bit of
    choice, or a cheaper-looking start the model was never trained on), and the noise stream
    check accepts it."""
    from diffusers import EulerDiscreteScheduler

    def euler() -> Any:
        return EulerDiscreteScheduler.from_config(SCHEDULER_CONFIG)

    honest = serve(tiny_unet, recorder, "zn-honest", euler(), sampler="euler", drbg=verifier_key)
    assert honest.verdict(_policy("quickstart.yaml"), program) is None
    served = serve(
        tiny_unet,
        recorder,
        "zn-unscaled",
        euler(),
        sampler="euler",
        drbg=verifier_key,
        scale_initial=False,
    )
    assert euler().init_noise_sigma > 10
    assert _rel(served.latents, honest.latents) > 0.1
    why = served.verdict(_policy("quickstart.yaml"), program)
    assert why is not None and "z_N" in why, why
