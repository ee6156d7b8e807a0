"""An adaptive provider against the reference codecs (StableDiffusionXLCodec, the LCM mode of
StableDiffusionCodec, PipelineCodec): it records through the real hook, controls every
committed request field and tensor, and wants ACCEPT, or at least NOT CHECKED instead of a
rejection. Every test asserts the secure behaviour."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from samplerguard.commitment.request import request_digest
from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.families import pipeline_codec
from samplerguard.hook import pipelines
from tests.integration.verifier.test_reference_codec import (
    _challenge,
    _forge,
    _serve,
    saved_reference,
)
from tests.support.families import (
    BUILDERS,
    PROMPTED,
    Case,
    latent_consistency_prompted,
    stable_diffusion_xl_prompted,
)

pytestmark = pytest.mark.slow

_BUILD: dict[str, Callable[[], Case]] = {
    **PROMPTED,
    "stable-diffusion-xl": stable_diffusion_xl_prompted,
    "latent-consistency": latent_consistency_prompted,
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The verifier's reference folders (the honest pipelines), saved on first use."""
    made: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in made:
            made[family] = saved_reference(tmp_path_factory, _BUILD[family], family)
        return made[family]

    return get


def _rewrite(monkeypatch: pytest.MonkeyPatch, change: Callable[[dict[str, Any]], None]) -> None:
    """The provider commits request parameters rewritten by ``change`` (keys dropped too)."""
    real = pipelines.request_params

    def forged(*args: Any) -> dict[str, Any]:
        params = real(*args)
        change(params)
        return params

    monkeypatch.setattr(pipelines, "request_params", forged)


# --- the CFG row ambiguity of PipelineCodec._check_latents ----------------------------------


def test_half_the_latent_rows_without_cfg_is_rejected(folders: Callable[[str], Path]) -> None:
    """Flux never batches CFG, so a request for 2 images makes a first sample of 2 rows, which
    the latent-shape check also accepts for 1 committed row (2 == 2·1). The provider runs one noise
    row against the request's 2-row conditioning (every image from the same noise): the
    denoiser broadcasts, so the step's output leaves the declared shape."""
    case = _BUILD["flux"]()
    sink, honest = _serve(case, "rows-honest", num_images_per_prompt=2)
    shape = honest.recipe["latent_shape"]
    one = torch.randn([1, *shape[1:]], generator=torch.Generator().manual_seed(3))
    sink, commitment = _serve(_BUILD["flux"](), "rows", num_images_per_prompt=2, latents=one)
    assert commitment.recipe["latent_shape"][0] == 1
    with pytest.raises(VerificationError):
        _challenge(folders("flux"), sink, commitment)


# --- committed request fields of odd types or shapes ----------------------------------------


@pytest.mark.parametrize("shape", [[], "x", [None], 5, {"0": 1}])
def test_a_malformed_sent_embeddings_shape_is_rejected_not_a_crash(
    folders: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch, shape: Any
) -> None:
    """The decode of a request without a prompt reads the row count of its sent embeddings,
    before the request check runs: a malformed shape is a rejection, never an IndexError,
    TypeError, ValueError or KeyError out of ``verify_challenge``."""
    _rewrite(
        monkeypatch,
        lambda p: p.__setitem__("promptEmbeds", {**p["promptEmbeds"], "shape": shape}),
    )
    sink, commitment = _serve(BUILDERS["wan"](), "shape")
    with pytest.raises(VerificationError):
        _challenge(folders("wan"), sink, commitment)


@pytest.mark.parametrize("images", [1 << 20, 20000])
def test_the_images_a_request_makes_the_verifier_encode_are_bounded(
    folders: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch, images: int
) -> None:
    """The output decode runs the pipeline with the request's arguments before the request
    check: an ``imagesPerPrompt`` of 2^20 would have ``encode_prompt`` repeat the embeddings
    2^20 times, and 20000 images of 8x8 pixels pass a pixel bound while their embeddings fill
    memory (3.3 GB for this tiny SD3, about 100 GB for the real one). Both are refused before
    the pipeline runs; the stand-in ``_run`` raises MemoryError where the real one would
    allocate."""
    real = pipeline_codec.PipelineCodec._run

    def run(self: Any, kwargs: dict[str, Any], *a: Any) -> Any:
        for key in ("num_images_per_prompt", "num_videos_per_prompt"):
            if int(kwargs.get(key, 1)) > 64 * 64:
                raise MemoryError(f"{key}={kwargs[key]} reached the pipeline")
        return real(self, kwargs, *a)

    monkeypatch.setattr(pipeline_codec.PipelineCodec, "_run", run)
    _forge(monkeypatch, imagesPerPrompt=images)
    sink, commitment = _serve(_BUILD["stable-diffusion-3"](), "big")
    with pytest.raises(VerificationError):
        _challenge(folders("stable-diffusion-3"), sink, commitment)


def test_an_integer_committed_as_a_float_keeps_its_digest_and_is_rejected(
    folders: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 8785 writes 16 and 16.0 alike, so the consumer's digest cannot tell them apart: the
    provider may retype any integer. The codecs must not read 16.0 as something else."""
    base = {"requestId": "r", "tenant": "t", "steps": 4, "guidanceScale": 3.0}
    assert request_digest({**base, "height": 16}) == request_digest({**base, "height": 16.0})
    for family, claim in (
        ("stable-diffusion-xl", {"height": 16.0, "width": 16.0}),
        ("latent-consistency", {"imagesPerPrompt": 1.0}),
        ("flux", {"height": 16.0}),
    ):
        with monkeypatch.context() as m:
            _forge(m, **claim)
            sink, commitment = _serve(_BUILD[family](), f"float-{family}")
        with pytest.raises(VerificationError):
            _challenge(folders(family), sink, commitment)


# --- requests other than the ones run -------------------------------------------------------


def test_sdxl_negative_micro_conditioning_half_committed_is_rejected(
    folders: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider ran negative sizes; it commits the consumer's request, which sets only
    the negative original size (so the pipeline reuses the positive micro-conditioning)."""
    _rewrite(monkeypatch, lambda p: p.pop("negativeTargetSize"))
    sink, commitment = _serve(
        stable_diffusion_xl_prompted(),
        "half",
        negative_original_size=(8, 8),
        negative_target_size=(8, 8),
    )
    with pytest.raises(VerificationError, match="'add_time_ids' is not what"):
        _challenge(folders("stable-diffusion-xl"), sink, commitment)


def test_lcm_fewer_images_than_requested_are_rejected(
    folders: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _forge(monkeypatch, imagesPerPrompt=2)
    sink, commitment = _serve(latent_consistency_prompted(), "lcm-less")
    with pytest.raises(VerificationError, match="request binding"):
        _challenge(folders("latent-consistency"), sink, commitment)


def test_wan_positive_and_negative_swapped_is_rejected(
    folders: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Wan's two calls per step: the provider guides toward the consumer's negative prompt
    (runs the calls' prompts the other way round) and commits the consumer's request."""
    _forge(monkeypatch, prompt="a red cat", negativePrompt="blurry")
    sink, commitment = _serve(
        _BUILD["wan"](), "wan-swap", prompt="blurry", negative_prompt="a red cat"
    )
    with pytest.raises(VerificationError, match="is not what the request derives"):
        _challenge(folders("wan"), sink, commitment)


def test_stable_audio_shorter_clip_than_requested_is_rejected(
    folders: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer asked for 0.5 s to 1.5 s; the provider conditioned on (and served) 0 s to
    1 s."""
    _forge(monkeypatch, audioStartInS=0.5, audioEndInS=1.5)
    sink, commitment = _serve(_BUILD["stable-audio"](), "audio", audio_end_in_s=1.0)
    with pytest.raises(VerificationError):
        _challenge(folders("stable-audio"), sink, commitment)


# --- a hostile reference folder -------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "component"),
    [("wan", "vae"), ("wan", "text_encoder"), ("stable-audio", "projection_model")],
)
def test_a_reference_with_a_bare_null_component_does_not_blame_the_provider(
    folders: Callable[[str], Path], tmp_path: Path, family: str, component: str
) -> None:
    """``"vae": null`` in the reference's model_index.json is a missing component, not a
    pipeline setting: a pipeline built without its VAE or encoder would reject every honest
    provider ("output binding: ... cannot run the request"). The reference is what is
    unusable: MalformedInputError, or a run without a codec (NOT CHECKED)."""
    ref = tmp_path / family
    shutil.copytree(folders(family), ref)
    index = ref / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), component: None}))
    sink, commitment = _serve(_BUILD[family](), "null")
    try:
        result = _challenge(ref, sink, commitment)
    except MalformedInputError:
        return
    assert result.accepted and result.unchecked


# --- sent embeddings and prompt cleaning ----------------------------------------------------


def test_sent_embeddings_run_in_the_unconditional_half_are_rejected(
    folders: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider guides toward the consumer's negative embeddings: it runs the positive and
    negative tensors (and their pooled ones) the other way round and commits the consumer's
    bindings. Each sent tensor is still found somewhere in the committed conditioning, but the
    pipeline's derivation from them puts them in their own halves."""
    from samplerguard.commitment.request import embeds_param

    case = BUILDERS["stable-diffusion-3"]()
    kw = case.kwargs
    _forge(
        monkeypatch,
        promptEmbeds=embeds_param(kw["prompt_embeds"]),
        negativePromptEmbeds=embeds_param(kw["negative_prompt_embeds"]),
        pooledPromptEmbeds=embeds_param(kw["pooled_prompt_embeds"]),
        negativePooledPromptEmbeds=embeds_param(kw["negative_pooled_prompt_embeds"]),
    )
    kw["prompt_embeds"], kw["negative_prompt_embeds"] = (
        kw["negative_prompt_embeds"],
        kw["prompt_embeds"],
    )
    kw["pooled_prompt_embeds"], kw["negative_pooled_prompt_embeds"] = (
        kw["negative_pooled_prompt_embeds"],
        kw["pooled_prompt_embeds"],
    )
    sink, commitment = _serve(case, "inverted")
    with pytest.raises(VerificationError, match="not what the request's embeddings derive"):
        _challenge(folders("stable-diffusion-3"), sink, commitment)


def test_a_swapped_prompt_behind_other_cleaning_packages_is_never_passed(
    folders: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A limit, kept visible: a Wan prompt that is not printable ASCII is derived only where
    the provider records the verifier's prompt-cleaning packages. A provider that swaps such a
    prompt and records other packages gets NOT CHECKED (an incomplete challenge), not a
    rejection; it never gets a pass. Recording the verifier's packages gets it rejected."""
    from samplerguard.commitment.fingerprint import build_fingerprint
    from samplerguard.hook import recorder as hook_recorder

    _forge(monkeypatch, prompt="ein Kätzchen")
    sink, commitment = _serve(_BUILD["wan"](), "clean-same", prompt="ein Hündchen")
    with pytest.raises(VerificationError, match="is not what the request derives"):
        _challenge(folders("wan"), sink, commitment)
    monkeypatch.setattr(
        hook_recorder,
        "build_fingerprint",
        lambda d: {**build_fingerprint(d), "textCleaning": "bs4 -, ftfy 6.2.0"},
    )
    sink, commitment = _serve(_BUILD["wan"](), "clean-other", prompt="ein Hündchen")
    result = _challenge(folders("wan"), sink, commitment)
    assert result.accepted and result.unchecked  # the verdict is an error, never a pass
    assert "Wan cleans prompts that are not printable ASCII" in result.unchecked[0]
