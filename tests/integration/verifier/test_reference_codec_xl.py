"""The reference codec of Stable Diffusion XL: the verifier re-derives all three conditioning
tensors (both text encoders' prompt embeddings, the pooled embedding, the micro-conditioning
sizes) from the consumer's request, and the served output with the reference VAE. Every
provider here records through the real hook."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from samplerguard.commitment.digest import module_digest
from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.hook import pipelines
from samplerguard.policy.spec import GoldenDigests
from tests.integration.verifier.test_reference_codec import (
    _challenge,
    _forge,
    _serve,
    rejects_a_substituted_encoder,
    rejects_an_output_not_the_decode,
    saved_reference,
)
from tests.support.families import stable_diffusion_xl_prompted

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return saved_reference(tmp_path_factory, stable_diffusion_xl_prompted, "sdxl")


def test_an_honest_prompted_generation_is_checked_end_to_end(folder: Path) -> None:
    sink, commitment = _serve(stable_diffusion_xl_prompted(), "honest")
    assert sorted(commitment.recipe["conditioning"]) == [
        "add_text_embeds",
        "add_time_ids",
        "prompt_embeds",
    ]
    result = _challenge(folder, sink, commitment)
    assert result.accepted and result.exact
    assert result.unchecked == []  # the output and all three conditioning tensors re-derived
    assert [r.worst for r in result.results] == [0.0] * commitment.n_steps


@pytest.mark.parametrize(
    "call",
    [
        # two prompts, each with its second-encoder prompt and negatives, two images each
        {
            "prompt": ["a", "b c"],
            "prompt_2": ["d", "e"],
            "negative_prompt": ["x", "y"],
            "negative_prompt_2": ["z", "w"],
            "num_images_per_prompt": 2,
        },
        # no negative prompt: the negative half is zeros (force_zeros_for_empty_prompt)
        {"negative_prompt": None},
        # the micro-conditioning sizes the consumer set, positive and negative
        {
            "original_size": (64, 48),
            "crops_coords_top_left": (4, 0),
            "target_size": (16, 16),
            "negative_original_size": (8, 8),
            "negative_target_size": (16, 16),
        },
        {"clip_skip": 1},
    ],
    ids=["batched", "zeros-negative", "micro-conditioning", "clip-skip"],
)
def test_what_the_consumer_sets_is_derived_as_the_pipeline_does(
    folder: Path, call: dict[str, Any]
) -> None:
    sink, commitment = _serve(stable_diffusion_xl_prompted(), "set", **call)
    result = _challenge(folder, sink, commitment)
    assert result.accepted and result.exact and result.unchecked == []


def test_no_guidance_has_no_negative_half(folder: Path) -> None:
    case = stable_diffusion_xl_prompted()
    case.guidance = 1.0
    sink, commitment = _serve(case, "nocfg")
    result = _challenge(folder, sink, commitment)
    assert result.accepted and result.unchecked == []


@pytest.mark.parametrize(
    ("claim", "tensor"),
    [
        ({"prompt": "a blue dog"}, "prompt_embeds"),
        ({"prompt2": "a blue dog"}, "prompt_embeds"),
        ({"negativePrompt2": "nsfw"}, "prompt_embeds"),
        # the consumer asked for a 1024x1024 original and a crop; the provider conditioned on
        # others (a cheaper or differently framed image), and committed the consumer's request
        ({"originalSize": [1024, 1024]}, "add_time_ids"),
        ({"cropsCoordsTopLeft": [8, 8]}, "add_time_ids"),
        ({"negativeOriginalSize": [8, 8], "negativeTargetSize": [8, 8]}, "add_time_ids"),
    ],
)
def test_a_request_other_than_the_one_run_is_rejected(
    folder: Path, monkeypatch: pytest.MonkeyPatch, claim: dict[str, Any], tensor: str
) -> None:
    """The provider commits the consumer's request but ran another: every step re-checks
    (they ran what they committed), but the conditioning is not what the request derives."""
    _forge(monkeypatch, **claim)
    sink, commitment = _serve(stable_diffusion_xl_prompted(), "swap")
    with pytest.raises(VerificationError, match=rf"conditioning '{tensor}' is not what"):
        _challenge(folder, sink, commitment)


@pytest.mark.parametrize("encoder", ["text_encoder", "text_encoder_2"])
def test_a_substituted_text_encoder_is_rejected(folder: Path, encoder: str) -> None:
    """Either encoder; the second one also changes the pooled embedding."""
    rejects_a_substituted_encoder(folder, stable_diffusion_xl_prompted(), encoder)


def test_a_served_image_that_is_not_the_decode_is_rejected(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rejects_an_output_not_the_decode(folder, monkeypatch, stable_diffusion_xl_prompted())


def test_a_vae_with_a_latent_mean_and_spread_is_decoded_with_them(tmp_path: Path) -> None:
    """Checkpoints whose VAE config carries ``latents_mean``/``latents_std`` are decoded the
    way the pipeline decodes them; without them the output would not reproduce."""
    case = stable_diffusion_xl_prompted()
    case.pipe.vae.register_to_config(
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 1.0, 2.0]
    )
    case.pipe.save_pretrained(tmp_path, safe_serialization=True)
    sink, commitment = _serve(case, "mean")
    result = _challenge(tmp_path, sink, commitment)
    assert result.accepted and result.unchecked == []


def _embeddings(case: Any, prompt: str = "a red cat") -> dict[str, torch.Tensor]:
    """What a consumer sends instead of a prompt: its own encoding of one (and of "blurry")."""
    with torch.no_grad():
        embeds, negative, pooled, negative_pooled = case.pipe.encode_prompt(
            prompt, device="cpu", negative_prompt="blurry"
        )
    return {
        "prompt_embeds": embeds,
        "negative_prompt_embeds": negative,
        "pooled_prompt_embeds": pooled,
        "negative_pooled_prompt_embeds": negative_pooled,
    }


def _sent(case: Any, rid: str, negatives: bool = True, **kwargs: Any) -> tuple[Any, Any]:
    sent = _embeddings(case)
    if not negatives:
        del sent["negative_prompt_embeds"], sent["negative_pooled_prompt_embeds"]
    return _serve(case, rid, **{"prompt": None, "negative_prompt": None, **sent, **kwargs})


@pytest.mark.parametrize("images", [1, 2])
def test_sent_embeddings_are_found_in_the_committed_conditioning(folder: Path, images: int) -> None:
    """The request binds the prompt and pooled embeddings it sent by digest; the verifier finds
    them in the committed prompt embeddings and pooled embedding, and has the pipeline's own
    code derive the whole conditioning from them."""
    case = stable_diffusion_xl_prompted()
    sink, commitment = _sent(case, f"embeds-{images}", num_images_per_prompt=images)
    params = sink.transcript(f"embeds-{images}").meta.request or {}
    assert params["pooledPromptEmbeds"]["shape"] == [1, 32]
    result = _challenge(folder, sink, commitment)
    assert result.accepted and result.unchecked == []


@pytest.mark.parametrize(
    "negative", [{}, {"negative_prompt": "blurry", "negative_prompt_2": "dark"}]
)
def test_without_negative_embeddings_the_negative_half_is_derived(
    folder: Path, negative: dict[str, str]
) -> None:
    """Zeros when the request has no negative prompt (``force_zeros_for_empty_prompt``), else
    the reference text encoders' encoding of the negative prompts."""
    sink, commitment = _sent(stable_diffusion_xl_prompted(), "neg", negatives=False, **negative)
    assert _challenge(folder, sink, commitment).unchecked == []


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("promptEmbeds", "does not hold the request's prompt embeddings"),
        ("pooledPromptEmbeds", "does not hold the request's pooled prompt embeddings"),
        ("negativePromptEmbeds", "does not hold the request's negative prompt embeddings"),
        ("negativePooledPromptEmbeds", "does not hold the request's negative pooled"),
    ],
)
def test_swapped_embeddings_are_rejected(
    folder: Path, monkeypatch: pytest.MonkeyPatch, key: str, message: str
) -> None:
    """The consumer sent the encoding of "a blue dog"; the provider ran another tensor in one
    place (the pooled embedding alone steers SDXL too) and committed the consumer's request."""
    from samplerguard.commitment.request import embeds_param

    case = stable_diffusion_xl_prompted()
    asked = _embeddings(case, "a blue dog")
    name = {
        "promptEmbeds": "prompt_embeds",
        "pooledPromptEmbeds": "pooled_prompt_embeds",
        "negativePromptEmbeds": "negative_prompt_embeds",
        "negativePooledPromptEmbeds": "negative_pooled_prompt_embeds",
    }[key]
    tensor = asked[name] if not key.startswith("negative") else asked[name] + 1.0
    _forge(monkeypatch, **{key: embeds_param(tensor)})
    sink, commitment = _sent(case, "embeds-swap")
    with pytest.raises(VerificationError, match=message):
        _challenge(folder, sink, commitment)


def test_a_negative_half_other_than_the_request_derives_is_rejected(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request sent embeddings and the negative prompt "blurry"; the provider ran the zero
    negative half (no negative guidance away from "blurry")."""
    _forge(monkeypatch, negativePrompt="blurry")
    sink, commitment = _sent(stable_diffusion_xl_prompted(), "neg-swap", negatives=False)
    with pytest.raises(VerificationError, match="not what the request's embeddings derive"):
        _challenge(folder, sink, commitment)


@pytest.mark.parametrize(
    ("drop", "message"),
    [
        ("pooledPromptEmbeds", "promptEmbeds without pooledPromptEmbeds"),
        ("negativePooledPromptEmbeds", "negativePromptEmbeds without negativePooledPromptEmbeds"),
    ],
)
def test_embeddings_without_their_pooled_ones_are_refused(
    folder: Path, monkeypatch: pytest.MonkeyPatch, drop: str, message: str
) -> None:
    real = pipelines.request_params
    monkeypatch.setattr(
        pipelines,
        "request_params",
        lambda *a: {k: v for k, v in real(*a).items() if k != drop},
    )
    sink, commitment = _sent(stable_diffusion_xl_prompted(), "no-pooled")
    with pytest.raises(VerificationError, match=message):
        _challenge(folder, sink, commitment)


def test_embeddings_narrowed_by_the_pipeline_are_not_checked_never_passed(folder: Path) -> None:
    case = stable_diffusion_xl_prompted()
    sent = {k: v.double() for k, v in _embeddings(case).items()}
    sink, commitment = _serve(case, "f64", prompt=None, negative_prompt=None, **sent)
    result = _challenge(folder, sink, commitment)
    assert result.accepted
    assert len(result.unchecked) == 1
    assert "sent as float64 and run as float32, which loses bits" in result.unchecked[0]


def test_a_nudged_image_row_behind_a_false_build_claim_is_rejected(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A declared build the verifier does not reproduce loosens only what the text encoders
    derive; the second image's copy of the sent pooled embedding, nudged by 1e-7, is not a
    copy, and is rejected."""
    from samplerguard.commitment.fingerprint import build_fingerprint
    from samplerguard.hook import recorder as hook_recorder

    mine = build_fingerprint("cpu")
    monkeypatch.setattr(hook_recorder, "build_fingerprint", lambda d: {**mine, "torch": "0.0.1"})
    case = stable_diffusion_xl_prompted()
    real = case.pipe.encode_prompt

    def nudged(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        embeds, negative, pooled, negative_pooled = real(*args, **kwargs)
        pooled = pooled.clone()
        pooled[1] += 1e-7 * pooled[1].abs().max()
        return embeds, negative, pooled, negative_pooled

    sent = _embeddings(case)
    monkeypatch.setattr(case.pipe, "encode_prompt", nudged)
    sink, commitment = _serve(
        case, "nudge", prompt=None, negative_prompt=None, num_images_per_prompt=2, **sent
    )
    with pytest.raises(VerificationError, match="not the sent ones, once per image"):
        _challenge(folder, sink, commitment, tau=1e-3)


@pytest.mark.parametrize(
    ("claim", "message"),
    [
        ({"height": 32, "width": 32}, r"asks for 32x32 images, the committed latents are 16x16"),
        ({"imagesPerPrompt": 2}, r"request derives 2 images, the committed latents hold 1"),
        ({"originalSize": [1024]}, r"originalSize is not two integers"),
        ({"prompt2": ["a", "b"]}, r"prompt2 does not match its prompt"),
    ],
)
def test_fewer_or_smaller_images_or_malformed_requests_are_rejected(
    folder: Path, monkeypatch: pytest.MonkeyPatch, claim: dict[str, Any], message: str
) -> None:
    _forge(monkeypatch, **claim)
    sink, commitment = _serve(stable_diffusion_xl_prompted(), "less")
    with pytest.raises(VerificationError, match=message):
        _challenge(folder, sink, commitment)


def test_both_text_encoders_must_be_pinned(folder: Path) -> None:
    case = stable_diffusion_xl_prompted()
    sink, commitment = _serve(case, "pinned")
    model = commitment.recipe["model"]["digest"]
    first = module_digest(case.pipe.text_encoder)
    second = module_digest(case.pipe.text_encoder_2)
    with pytest.raises(VerificationError, match=r"text encoder 2 .* goldenDigests\.textEncoder"):
        _challenge(
            folder, sink, commitment, GoldenDigests(model_weights=[model], text_encoder=[first])
        )
    ok = _challenge(
        folder,
        sink,
        commitment,
        GoldenDigests(model_weights=[model], text_encoder=[first, second]),
    )
    assert ok.accepted and ok.unchecked == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: (d / "text_encoder_2" / "config.json").write_text(
                json.dumps(
                    {
                        **json.loads((d / "text_encoder_2" / "config.json").read_text()),
                        "architectures": ["CLIPTextModel"],
                    }
                )
            ),
            "names 'CLIPTextModel'; the text_encoder_2 is a CLIPTextModelWithProjection",
        ),
        (
            lambda d: (d / "model_index.json").write_text(
                json.dumps(
                    {
                        **json.loads((d / "model_index.json").read_text()),
                        "force_zeros_for_empty_prompt": "yes",
                    }
                )
            ),
            "force_zeros_for_empty_prompt is not a boolean",
        ),
    ],
)
def test_an_unusable_reference_folder_is_refused(
    folder: Path, tmp_path: Path, change: Any, message: str
) -> None:
    copy_ = tmp_path / "sdxl"
    shutil.copytree(folder, copy_)
    change(copy_)
    sink, commitment = _serve(stable_diffusion_xl_prompted(), "bad")
    with pytest.raises(MalformedInputError, match=message):
        _challenge(copy_, sink, commitment)
