"""DRBG noise through real diffusers pipelines and schedulers.

* Every noise draw of a DDPM pipeline and of an Euler-ancestral loop comes from the request's
  DRBG (through ``commitment.draws``), and is reported by ``take_drawn``.
* torch's, numpy's and Python's global generators are bit-identical before and after.
* Nothing secret reaches a log line or an output file (hex or base64).
"""

from __future__ import annotations

import base64
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from diffusers import DDPMPipeline, DDPMScheduler, EulerAncestralDiscreteScheduler, UNet2DModel

from samplerguard.commitment.draws import noise_from
from samplerguard.rng import CtrDrbg, HmacDrbg, NoiseAuthority, check_seed_vector, tensor_digest

MASTER = bytes(range(7, 39))


@pytest.fixture(scope="module")
def unet() -> UNet2DModel:
    torch.manual_seed(0)  # weights only; the test snapshots the global state after this
    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


GlobalStates = tuple[torch.Tensor, dict[str, Any], tuple[Any, ...]]


def _global_states() -> GlobalStates:
    return torch.get_rng_state(), np.random.get_state(legacy=False), random.getstate()


def _same(a: GlobalStates, b: GlobalStates) -> bool:
    np_a, np_b = a[1], b[1]
    return (
        torch.equal(a[0], b[0])
        and np.array_equal(np_a["state"]["key"], np_b["state"]["key"])
        and (np_a["state"]["pos"], np_a["has_gauss"], np_a["gauss"])
        == (np_b["state"]["pos"], np_b["has_gauss"], np_b["gauss"])
        and a[2] == b[2]
    )


def _ddpm(
    unet: UNet2DModel, rid: str, mode: str = "ctr-drbg"
) -> tuple[np.ndarray, list[torch.Tensor]]:
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50))
    pipe.set_progress_bar_config(disable=True)
    noise = NoiseAuthority(MASTER, mode, deterministic=True).request("acme", rid)
    with noise_from(noise.noise_fn()), torch.no_grad():
        image = pipe(batch_size=2, num_inference_steps=5, output_type="np").images
    return image, noise.take_drawn()


@pytest.mark.parametrize("mode", ["ctr-drbg", "hmac-drbg", "framework"])
def test_ddpm_pipeline_draws_only_drbg_noise(unet: UNet2DModel, mode: str) -> None:
    before = _global_states()
    image, drawn = _ddpm(unet, "gen-1", mode)
    assert _same(before, _global_states()), "a global generator moved"
    # z_N plus one variance draw per step except the last (t = 0 adds none).
    assert [tuple(t.shape) for t in drawn] == [(2, 1, 8, 8)] * 5
    assert check_seed_vector(drawn[0]).ok
    again, drawn2 = _ddpm(unet, "gen-1", mode)
    np.testing.assert_array_equal(image, again)
    assert [tensor_digest(t) for t in drawn] == [tensor_digest(t) for t in drawn2]
    other, _ = _ddpm(unet, "gen-2", mode)
    assert not np.array_equal(image, other)


def test_euler_ancestral_loop_with_latents_argument(unet: UNet2DModel) -> None:
    before = _global_states()
    sched = EulerAncestralDiscreteScheduler(num_train_timesteps=50)
    sched.set_timesteps(6)
    noise = NoiseAuthority(MASTER, deterministic=True).request("acme", "euler-1")
    latents = noise.randn((1, 1, 8, 8)) * sched.init_noise_sigma
    z_n = noise.take_drawn()
    with noise_from(noise.noise_fn()), torch.no_grad():
        for t in sched.timesteps:
            model_in = sched.scale_model_input(latents, t)
            eps = unet(model_in, t).sample
            latents = sched.step(eps, t, latents).prev_sample
            step_noise = noise.take_drawn()
            assert len(step_noise) == 1 and step_noise[0].shape == (1, 1, 8, 8)
    assert len(z_n) == 1
    assert torch.isfinite(latents).all()
    assert _same(before, _global_states())


def test_no_secret_reaches_logs_or_files(
    unet: UNet2DModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    authority = NoiseAuthority(MASTER, journal=tmp_path / "ledger")
    noise = authority.request("acme", "leak-1")
    seed = noise._seed._unsafe_material()
    drbg = noise._drbg
    assert isinstance(drbg, (CtrDrbg, HmacDrbg))
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50))
    pipe.set_progress_bar_config(disable=True)
    with noise_from(noise.noise_fn()), torch.no_grad():
        image = pipe(batch_size=1, num_inference_steps=3, output_type="pil").images[0]
    key, v = drbg._key, drbg._v  # the DRBG state after the run
    verifier = X25519PrivateKey.generate()
    (tmp_path / "escrow.json").write_text(noise.escrow(verifier.public_key()).to_json())
    (tmp_path / "repr.txt").write_text(
        repr(noise) + repr(authority) + repr(noise._seed) + repr(drbg)
    )
    image.save(tmp_path / "out.png")
    logging.getLogger("samplerguard").debug("done %r %s", noise, noise.recipe_fields())
    authority.close()

    secrets = [MASTER, seed, seed[:32], seed[32:], key, v]
    needles: list[bytes] = []
    for s in secrets:
        needles += [
            s.hex().encode(),
            s.hex().upper().encode(),
            base64.b64encode(s).rstrip(b"="),
            base64.urlsafe_b64encode(s).rstrip(b"="),
            s,
        ]
    haystacks = [caplog.text.encode()] + [p.read_bytes() for p in tmp_path.iterdir()]
    assert len(haystacks) >= 4
    for hay in haystacks:
        for needle in needles:
            assert needle not in hay
