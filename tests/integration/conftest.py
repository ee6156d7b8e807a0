"""Fixtures shared by the integration tests: a tiny digits UNet and recorded trajectories."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from samplerguard.commitment.statement import Commitment
from samplerguard.demo.providers import Declared, Provider
from samplerguard.hook.local import LocalSink
from samplerguard.hook.recorder import Recorder
from samplerguard.models.digits import build_unet
from samplerguard.models.programs import DigitsProgram


@pytest.fixture(scope="session")
def tiny_unet() -> Any:
    """The bundled architecture, randomly initialised (the tests need a real model, not a good
    one; the trained weights are exercised by the demo tests)."""
    torch.manual_seed(0)
    return build_unet(seed=0).eval()


@pytest.fixture(scope="session")
def program(tiny_unet: Any) -> DigitsProgram:
    return DigitsProgram(tiny_unet)


@dataclass
class Recorded:
    sink: LocalSink
    commitment: Commitment
    images: torch.Tensor
    faked: list[int]

    def opening_bytes(self, step: int) -> bytes:
        return self.sink.opening(self.commitment.request_id, step).to_bytes()


@pytest.fixture(scope="session")
def record(tiny_unet: Any) -> Iterator[Any]:
    """``record(provider, sampler="dpmpp_2m", steps=6)`` → a committed generation."""
    recorders: list[Recorder] = []
    cache: dict[tuple[Any, ...], Recorded] = {}

    def make(
        provider: str = "honest",
        sampler: str = "dpmpp_2m",
        steps: int = 6,
        cfg: float = 3.0,
        request_id: str = "req-1",
    ) -> Recorded:
        key = (provider, sampler, steps, cfg, request_id)
        if key in cache:
            return cache[key]
        sink = LocalSink()
        recorder = Recorder(sink)
        recorders.append(recorder)
        p = Provider(provider, tiny_unet, Declared(sampler=sampler, steps=steps, cfg=cfg), recorder)
        gen = torch.Generator().manual_seed(11)
        labels = torch.tensor([3, 7])
        latents = torch.randn((2, 1, 8, 8), generator=gen)
        g = p.generate(request_id, labels, latents)
        cache[key] = Recorded(sink, g.commitment, g.images, g.faked_steps)
        return cache[key]

    yield make
    for r in recorders:
        r.close()
