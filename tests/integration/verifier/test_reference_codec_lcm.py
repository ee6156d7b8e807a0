"""The reference codec of a latent consistency model: Stable Diffusion's text encoder and VAE,
with no unconditional half (the guidance scale enters as an embedding). Every provider here
records through the real hook."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from samplerguard.errors import VerificationError
from tests.integration.verifier.test_reference_codec import (
    _challenge,
    _forge,
    _serve,
    rejects_a_substituted_encoder,
    rejects_an_output_not_the_decode,
    saved_reference,
)
from tests.support.families import latent_consistency_prompted

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return saved_reference(tmp_path_factory, latent_consistency_prompted, "lcm")


@pytest.mark.parametrize("call", [{}, {"prompt": ["a", "b c"], "num_images_per_prompt": 2}])
def test_an_honest_generation_is_checked_end_to_end(folder: Path, call: dict[str, object]) -> None:
    sink, commitment = _serve(latent_consistency_prompted(), "honest", **call)
    result = _challenge(folder, sink, commitment)
    assert result.accepted and result.exact
    assert result.unchecked == []  # the output and the conditioning were re-derived
    assert [r.worst for r in result.results] == [0.0] * commitment.n_steps


def test_sent_embeddings_are_found_in_the_committed_conditioning(folder: Path) -> None:
    case = latent_consistency_prompted()
    with torch.no_grad():
        embeds, _ = case.pipe.encode_prompt("a red cat", "cpu", 1, False)
    sink, commitment = _serve(case, "embeds", prompt=None, prompt_embeds=embeds)
    result = _challenge(folder, sink, commitment)
    assert result.accepted and result.unchecked == []


def test_a_swapped_prompt_is_rejected(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _forge(monkeypatch, prompt="a blue dog")
    sink, commitment = _serve(latent_consistency_prompted(), "swap")
    with pytest.raises(VerificationError, match=r"conditioning 'prompt_embeds' is not what"):
        _challenge(folder, sink, commitment)


def test_a_substituted_text_encoder_is_rejected(folder: Path) -> None:
    rejects_a_substituted_encoder(folder, latent_consistency_prompted())


def test_a_served_image_that_is_not_the_decode_is_rejected(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rejects_an_output_not_the_decode(folder, monkeypatch, latent_consistency_prompted())


def test_smaller_images_than_requested_are_rejected(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _forge(monkeypatch, height=32, width=32)
    sink, commitment = _serve(latent_consistency_prompted(), "small")
    with pytest.raises(VerificationError, match=r"asks for 32x32 images"):
        _challenge(folder, sink, commitment)
