"""Shared helpers for the sidecar and verifier tests: a small real model, a policy, providers.

The model is the bundled digits UNet architecture with seeded random weights, saved as a real
safetensors checkpoint (the trained weights are not needed to test the data plane: the re-check
compares transitions, not image quality). A *cheating* provider is the real pipeline run with a
different model, fewer steps or another guidance scale than it declares.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

# One intra-op thread: on a shared 2-core machine torch's thread pool only adds contention
# (a 6-step generation takes 10x longer with the default pool under load).
torch.set_num_threads(1)


@dataclass(frozen=True)
class Model:
    unet: Any
    path: Path
    digest: str


def make_model(directory: Path, seed: int = 0) -> Model:
    from safetensors.torch import save_file

    from samplerguard.commitment.digest import module_digest
    from samplerguard.models.digits import build_unet

    unet = build_unet(seed=seed).eval()
    path = directory / f"digits-{seed}.safetensors"
    if not path.exists():
        save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(path))
    return Model(unet, path, module_digest(unet))


def write_policy(
    path: Path,
    digest: str,
    *,
    mode: str = "enforce",
    fraction: float = 1.0,
    k: int = 2,
    tau: float = 1e-4,
    cfg_max: float = 8.0,
    rng: str = "framework",
) -> Path:
    body = {
        "apiVersion": "samplerguard.dev/v1alpha1",
        "kind": "ClusterSamplerPolicy",
        "metadata": {"name": "dataplane-test"},
        "spec": {
            "mode": mode,
            "recipe": {
                "samplers": ["euler", "euler_ancestral", "ddim"],
                "steps": {"min": 2, "max": 50},
                "cfg": {"min": 1.0, "max": cfg_max},
            },
            "goldenDigests": {"modelWeights": [digest]},
            "rng": {"mode": rng, "escrow": False},
            "verification": {"fraction": fraction, "stepsPerChallenge": k, "tau": tau},
        },
    }
    path.write_text(yaml.safe_dump(body))
    return path


def generate(
    socket_path: Path,
    unet: Any,
    request_id: str,
    *,
    declared_digest: str,
    steps: int = 6,
    declared_steps: int | None = None,
    cfg: float = 3.0,
    declared_cfg: float | None = None,
    sampler: str = "euler",
    labels: tuple[int, ...] = (1, 7),
    seed: int = 0,
) -> Any:
    """One generation through the hook and the sidecar; returns the RecordedOutput."""
    import diffusers

    from samplerguard.hook.pipelines import instrument
    from samplerguard.hook.recorder import Recorder, TrajectoryRequest
    from samplerguard.hook.sidecar_sink import SidecarSink
    from samplerguard.models.digits import SCHEDULER_CONFIG, DigitsPipeline
    from samplerguard.policy.spec import KNOWN_SAMPLERS

    scheduler = getattr(diffusers, KNOWN_SAMPLERS[sampler]).from_config(SCHEDULER_CONFIG)
    pipe = DigitsPipeline(unet, scheduler)
    recorder = Recorder(SidecarSink(socket_path, io_timeout=30.0))
    try:
        request = TrajectoryRequest(
            request_id=request_id,
            tenant="tenant-a",
            pipeline="digits",
            model_name="digits",
            model_digest=declared_digest,
            sampler=sampler,
            guidance_scale=cfg if declared_cfg is None else declared_cfg,
            steps=steps if declared_steps is None else declared_steps,
        )
        return instrument(pipe, recorder)(
            list(labels),
            num_inference_steps=steps,
            guidance_scale=cfg,
            generator=torch.Generator().manual_seed(seed),
            trajectory_request=request,
        )
    finally:
        recorder.close()


def tiny_record(recipe: dict[str, Any], steps: int, output_digest: str) -> Any:
    """A finished trajectory of 2-element tensors (a ``TrajectoryRecord``), to sign in tests."""
    from samplerguard.commitment.state import SamplerState
    from samplerguard.commitment.trajectory import TrajectoryBuilder

    b = TrajectoryBuilder(recipe=recipe)
    state = SamplerState(values={"i": 0})
    b.initial(torch.zeros(2), state, "sha256:" + "0" * 64)
    for i in range(steps):
        b.step(i, 10 - i, torch.full((2,), float(i)), state)
    b.final(torch.ones(2))
    return b.finish(output_digest)
