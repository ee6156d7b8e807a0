"""Sampler providers for the demo and the tests: one honest, ten that cheat.

Every provider *declares* the same thing: the bundled model, the policy's sampler, ``steps``
steps and guidance ``cfg``. What each one actually runs:

==================  =========================================================================
honest              exactly what it declares, through the diffusers pipeline and the hook
substituted-model   a perturbed copy of the weights (a cheaper or fine-tuned model)
fewer-steps         evaluates the UNet on every other step only, reusing the last ε between
guidance-off        skips the unconditional pass (guidance 1.0: half the UNet cost)
scheduler-swap      a different scheduler (DDIM) than the declared one
fabricated-step     one step at a random position whose latent is made up, not computed
state-smuggling     repeats sigmas in the committed sampler state (steps become no-ops) and
                    runs the UNet on every 4th step only
output-swap         runs honestly but serves (and commits) another output than the decode
request-swap        commits the consumer's request but conditions on other class labels
replayed-noise      serves every later request from the first request's z_N (a replay)
feature-caching     reuses the previous step's ε on every 4th step
==================  =========================================================================

The cheaters use the hook's plain-loop API, as a custom serving loop would, and commit honestly
to what they *computed*: the commitment is signed, so the lie is in the declared recipe. That
is the case the re-check exists for.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from samplerguard.commitment.digest import module_digest
from samplerguard.commitment.draws import noise_from
from samplerguard.hook.pipelines import instrument, output_bytes
from samplerguard.hook.recorder import Recorder, TrajectoryRequest, scheduler_config
from samplerguard.models.digits import (
    IMAGE_SHAPE,
    DigitsPipeline,
    StepInputs,
    guided_eps,
    make_scheduler,
    scheduler_step,
)
from samplerguard.rng import NoiseAuthority

__all__ = [
    "CHEATS",
    "Declared",
    "Generation",
    "Provider",
    "make_scheduler",
    "providers",
    "request_params",
]

CHEATS = (
    "substituted-model",
    "fewer-steps",
    "guidance-off",
    "scheduler-swap",
    "fabricated-step",
    "state-smuggling",
    "output-swap",
    "request-swap",
    "replayed-noise",
    "feature-caching",
)


@dataclass(frozen=True)
class Declared:
    """What every provider claims to run."""

    sampler: str = "dpmpp_2m"
    steps: int = 20
    cfg: float = 3.0
    tenant: str = "tenant-demo"


@dataclass
class Generation:
    images: torch.Tensor
    commitment: Any
    request_id: str
    labels: torch.Tensor
    #: steps whose computation was faked (known only to the provider; for reporting)
    faked_steps: list[int] = field(default_factory=list)
    #: the request's seed escrow (JSON), sealed to the verifier's key, when one was asked for
    escrow: str | None = None


class Provider:
    """A named provider serving class-conditional digits under a declared recipe."""

    def __init__(
        self,
        name: str,
        unet: Any,
        declared: Declared,
        recorder: Recorder,
        authority: NoiseAuthority | Any = None,
        escrow_key: Any = None,
        tickets: Callable[[str], dict[str, Any] | None] | None = None,
    ) -> None:
        if name != "honest" and name not in CHEATS:
            raise ValueError(f"unknown provider {name!r}; known: honest, {', '.join(CHEATS)}")
        self.name = name
        self.declared = declared
        self.recorder = recorder
        self.model_digest = module_digest(unet)
        self.unet = unet
        self.run_unet = _perturbed(unet) if name == "substituted-model" else unet
        #: Per-request DRBG noise (SP 800-90A): a NoiseAuthority, or anything whose
        #: ``request(tenant, request_id)`` returns the request's noise (the sidecar's seeds);
        #: None means the caller passes latents.
        self.authority = authority
        #: the verifier's X25519 public key: each request's seed is escrowed to it
        self.escrow_key = escrow_key
        #: the gateway's ticket of a request id (None: no gateway in front of this provider)
        self.tickets = tickets
        self._first_z: torch.Tensor | None = None
        self._pipe = DigitsPipeline(unet, make_scheduler(declared.sampler))
        self._instrumented = instrument(self._pipe, recorder)

    def request(
        self,
        request_id: str,
        extra: dict[str, Any] | None = None,
        rng_mode: str = "framework",
        labels: torch.Tensor | None = None,
    ) -> TrajectoryRequest:
        d = self.declared
        params = None if labels is None else request_params(d, request_id, labels)
        return TrajectoryRequest(
            request_id=request_id,
            tenant=d.tenant,
            pipeline="digits",
            model_name="samplerguard/digits",
            model_digest=self.model_digest,
            sampler=d.sampler,
            guidance_scale=d.cfg,
            steps=d.steps,
            rng_mode=rng_mode,
            extra=extra or {},
            params=params,
            ticket=None if self.tickets is None else self.tickets(request_id),
        )

    def generate(
        self, request_id: str, labels: torch.Tensor, latents: torch.Tensor | None = None
    ) -> Generation:
        """Serve one request. Without ``latents``, z_N and any step noise come from this
        request's DRBG (the provider's ``authority``); torch's global RNG is never touched."""
        if latents is not None:
            return self._generate(request_id, labels, latents, "framework")
        if self.authority is None:
            raise ValueError("no latents given and no NoiseAuthority to draw them from")
        noise = self.authority.request(self.declared.tenant, request_id)
        try:
            escrow = None
            if self.escrow_key is not None:
                escrow = noise.escrow(self.escrow_key).to_json()
                attach = getattr(self.recorder.sink, "attach_escrow", None)
                if attach is not None:
                    attach(request_id, escrow)
            z = noise.randn((labels.shape[0], *IMAGE_SHAPE))
            if self.name == "replayed-noise":
                # every later request replays the first request's z_N
                self._first_z = z if self._first_z is None else self._first_z
                z = self._first_z
            with noise_from(noise.noise_fn()):
                g = self._generate(request_id, labels, z, noise.mode)
            g.escrow = escrow
            return g
        finally:
            noise.close()

    def _generate(
        self, request_id: str, labels: torch.Tensor, latents: torch.Tensor, rng_mode: str
    ) -> Generation:
        if self.name in ("honest", "replayed-noise"):
            out = self._instrumented(
                labels,
                num_inference_steps=self.declared.steps,
                guidance_scale=self.declared.cfg,
                latents=latents,
                trajectory_request=self.request(request_id, rng_mode=rng_mode, labels=labels),
            )
            return Generation(out.output, out.commitment, request_id, labels)
        return self._cheat(request_id, labels, latents, rng_mode)

    def _cheat(
        self, request_id: str, labels: torch.Tensor, latents: torch.Tensor, rng_mode: str
    ) -> Generation:
        d = self.declared
        run_sampler = "ddim" if self.name == "scheduler-swap" else d.sampler
        scheduler = make_scheduler(run_sampler)
        scheduler.set_timesteps(d.steps)
        extra: dict[str, Any] = {}
        if self.name == "scheduler-swap":
            # Claim the declared scheduler in the signed recipe while running another.
            declared = make_scheduler(d.sampler)
            extra = {
                "sampler": d.sampler,
                "scheduler_class": type(declared).__name__,
                "scheduler_config": scheduler_config(declared),
            }
        cfg = 1.0 if self.name == "guidance-off" else d.cfg
        run_labels = (labels + 1) % 10 if self.name == "request-swap" else labels
        inputs = StepInputs(class_labels=run_labels, guidance_scale=cfg)
        n = len(scheduler.timesteps)
        fake = secrets.randbelow(n - 1) if self.name == "fabricated-step" else -1
        faked: list[int] = []
        eps: torch.Tensor | None = None
        request = self.request(request_id, extra, rng_mode, labels)
        if self.name == "scheduler-swap":
            # An adaptive provider controls the hook too: it tells the hook the scheduler it
            # really runs (so the hook records it) and signs the declared one into the recipe.
            request = dataclasses.replace(request, sampler=run_sampler)
        with torch.no_grad(), self.recorder.trajectory(request) as tr:
            tr.begin(scheduler, latents, conditioning={"class_labels": run_labels})
            if self.name == "state-smuggling":
                # σ_i+1 = σ_i makes a step an exact no-op; the smuggled sigmas travel in the
                # committed state, and the UNet runs on every 4th step only
                sig = scheduler.sigmas.clone()
                for j in range(len(sig) - 1):
                    if j % 4:
                        sig[j + 1] = sig[j]
                scheduler.sigmas = sig
            for i, t in enumerate(scheduler.timesteps):
                if self.name == "fewer-steps" and i % 2 == 1 and eps is not None:
                    faked.append(i)  # reuse the previous ε: no UNet call
                elif self.name == "feature-caching" and i % 4 == 3 and eps is not None:
                    faked.append(i)  # cached features: the previous ε again
                elif self.name == "state-smuggling" and i % 4:
                    eps = torch.zeros_like(latents)
                    faked.append(i)
                else:
                    eps = guided_eps(self.run_unet, scheduler, latents, t, inputs)
                latents = scheduler_step(scheduler, eps, t, latents)
                if i == fake:
                    # Made up rather than computed: a plausible-looking latent.
                    latents = latents + 0.05 * latents.std() * torch.ones_like(latents)
                    faked.append(i)
                tr.step(i, t, latents, scheduler)
            served = latents.flip(-1) if self.name == "output-swap" else latents
            tr.end(latents, output_bytes(served))
        assert tr.commitment is not None
        return Generation(served, tr.commitment, request_id, labels, faked)


def request_params(declared: Declared, request_id: str, labels: torch.Tensor) -> dict[str, Any]:
    """The consumer's request parameters for ``labels`` (what a gateway tickets and the
    commitment binds)."""
    return {
        "requestId": request_id,
        "tenant": declared.tenant,
        "classLabels": [int(x) for x in labels.reshape(-1).tolist()],
        "steps": declared.steps,
        "guidanceScale": declared.cfg,
    }


def _perturbed(unet: Any, scale: float = 0.05) -> Any:
    """A copy of ``unet`` with every weight tensor moved by ``scale`` of its own std."""
    import copy

    other = copy.deepcopy(unet)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in other.parameters():
            if p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=gen) * p.std() * scale)
    return other


def providers(
    unet: Any, declared: Declared, recorder_for: Callable[[str], Recorder]
) -> list[Provider]:
    return [Provider(name, unet, declared, recorder_for(name)) for name in ("honest", *CHEATS)]
