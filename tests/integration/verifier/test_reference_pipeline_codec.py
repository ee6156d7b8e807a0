"""The reference pipeline as codec (AnimateDiff, SD3, Flux, PixArt-Σ, Wan, Stable Audio): the
verifier runs the family's own diffusers pipeline on its components to derive the conditioning
from the consumer's request and the output from the final latent. Every provider here records
through the real hook."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.families import UnsupportedPipeline
from samplerguard.hook import pipelines
from tests.integration.verifier.test_reference_codec import (
    _challenge,
    _forge,
    _serve,
    rejects_a_substituted_encoder,
    saved_reference,
)
from tests.support.families import BUILDERS, PROMPTED

pytestmark = pytest.mark.slow

FAMILIES = sorted(PROMPTED)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The verifier's references: each honest pipeline, saved as a diffusers folder."""
    return {name: saved_reference(tmp_path_factory, PROMPTED[name], name) for name in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_an_honest_generation_is_checked_end_to_end(folders: dict[str, Path], family: str) -> None:
    sink, commitment = _serve(PROMPTED[family](), "honest")
    result = _challenge(folders[family], sink, commitment)
    assert result.accepted and result.exact
    assert result.unchecked == []  # the output and every conditioning tensor re-derived
    assert [r.worst for r in result.results] == [0.0] * commitment.n_steps


@pytest.mark.parametrize("family", FAMILIES)
def test_a_swapped_prompt_is_rejected(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, family: str
) -> None:
    """The consumer asked for "a blue dog"; the provider ran "a red cat" and committed the
    consumer's request. Every step re-checks, but the conditioning is not the request's."""
    _forge(monkeypatch, prompt="a blue dog")
    sink, commitment = _serve(PROMPTED[family](), "swap")
    with pytest.raises(VerificationError, match="is not what the request derives"):
        _challenge(folders[family], sink, commitment)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_substituted_text_encoder_is_rejected(folders: dict[str, Path], family: str) -> None:
    rejects_a_substituted_encoder(folders[family], PROMPTED[family]())


@pytest.mark.parametrize("family", FAMILIES)
def test_a_served_output_that_is_not_the_decode_is_rejected(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, family: str
) -> None:
    """The provider commits (and serves) other bytes than its pipeline's decode of the final
    latent: another image, video or waveform."""
    real = pipelines.output_bytes
    monkeypatch.setattr(pipelines, "output_bytes", lambda out: real(out)[:-1] + b"\x01")
    sink, commitment = _serve(PROMPTED[family](), "output")
    with pytest.raises(VerificationError, match="output binding: the served output"):
        _challenge(folders[family], sink, commitment)


@pytest.mark.parametrize(
    ("family", "claim"),
    [
        ("animatediff", {"height": 32, "width": 32}),
        ("animatediff", {"numFrames": 8}),
        ("stable-diffusion-3", {"height": 16, "width": 16}),
        ("stable-diffusion-3", {"imagesPerPrompt": 2}),
        ("wan", {"numFrames": 9}),
    ],
)
def test_fewer_or_smaller_outputs_than_requested_are_rejected(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, family: str, claim: dict[str, Any]
) -> None:
    """The provider commits the consumer's request but generates less (smaller images, fewer
    frames or images): each step it ran re-checks, and the conditioning may not show it."""
    _forge(monkeypatch, **claim)
    sink, commitment = _serve(PROMPTED[family](), "less")
    with pytest.raises(VerificationError, match="request binding"):
        _challenge(folders[family], sink, commitment)


@pytest.mark.parametrize(
    ("claim", "message"),
    [
        ({"height": 1 << 20}, r"height is not an integer 1\.\.65536"),
        ({"numFrames": 4096, "height": 16384, "width": 16384}, "more than this verifier derives"),
        ({"prompt": "x" * 5000}, "prompt is longer than 4096"),
        ({"prompt": [{"a": 1}]}, "not a string, a number or a list of them"),
        ({"clipSkip": 63}, "cannot run the request"),
        ({"clipSkip": 99}, r"clipSkip is not an integer 0\.\.64"),
        (
            {"prompt": ["a"] * 64, "videosPerPrompt": 2},
            "makes more than 64 images",
        ),
        # the pipeline refuses both; committing both must not turn a rejection into NOT CHECKED
        (
            {
                "promptEmbeds": {
                    "digest": "sha256:" + "0" * 64,
                    "dtype": "float32",
                    "shape": [1, 8, 32],
                }
            },
            "both a prompt and prompt embeddings",
        ),
    ],
)
def test_a_hostile_request_is_refused_with_its_reason(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, claim: dict[str, Any], message: str
) -> None:
    _forge(monkeypatch, **claim)
    sink, commitment = _serve(PROMPTED["animatediff"](), "hostile")
    with pytest.raises(VerificationError, match=message):
        _challenge(folders["animatediff"], sink, commitment)


def test_a_sequence_length_that_would_pad_without_bound_is_refused(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _forge(monkeypatch, maxSequenceLength=10**9)
    sink, commitment = _serve(PROMPTED["wan"](), "long")
    with pytest.raises(VerificationError, match=r"maxSequenceLength is not an integer 0\.\.1024"):
        _challenge(folders["wan"], sink, commitment)


@pytest.mark.parametrize("family", FAMILIES)
def test_sent_embeddings_are_found_in_the_committed_conditioning(
    folders: dict[str, Path], family: str
) -> None:
    """The tiny pipelines without tokenizers send embeddings, bound to the request by digest:
    the verifier finds them in the committed conditioning and the pipeline derives the rest.
    PixArt-Σ and Stable Audio send attention masks with them, which the request does not
    bind: NOT CHECKED, never passed."""
    sink, commitment = _serve(BUILDERS[family](), "embeds")
    result = _challenge(folders[family], sink, commitment)
    assert result.accepted
    if family in ("pixart-sigma", "stable-audio"):
        assert len(result.unchecked) == 1
        assert "attention masks, which the request does not bind" in result.unchecked[0]
    else:
        assert result.unchecked == []


@pytest.mark.parametrize("family", ["animatediff", "stable-diffusion-3", "flux", "wan"])
def test_swapped_embeddings_are_rejected(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, family: str
) -> None:
    """The consumer sent other embeddings than the provider ran."""
    from samplerguard.commitment.request import embeds_param

    case = BUILDERS[family]()
    sent = case.kwargs["prompt_embeds"]
    _forge(monkeypatch, promptEmbeds=embeds_param(sent + 1.0))
    sink, commitment = _serve(case, "swap")
    with pytest.raises(VerificationError, match="does not hold the request's promptEmbeds"):
        _challenge(folders[family], sink, commitment)


def _recording_text_cleaning(monkeypatch: pytest.MonkeyPatch, packages: str) -> None:
    """The provider's build fingerprint records these prompt-cleaning packages."""
    from samplerguard.commitment.fingerprint import build_fingerprint
    from samplerguard.hook import recorder as hook_recorder

    monkeypatch.setattr(
        hook_recorder,
        "build_fingerprint",
        lambda d: {**build_fingerprint(d), "textCleaning": packages},
    )


def test_pixart_captions_cleaned_by_default_are_checked_where_the_packages_match(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PixArt-Σ cleans captions only where ``bs4`` and ``ftfy`` are installed. With the same
    packages recorded as the verifier has, its default cleaning is derived; with others, the
    prompt's conditioning is reported NOT CHECKED (the output is still held)."""
    case = PROMPTED["pixart-sigma"]()
    del case.kwargs["clean_caption"]
    sink, commitment = _serve(case, "clean")
    assert _challenge(folders["pixart-sigma"], sink, commitment).unchecked == []
    _recording_text_cleaning(monkeypatch, "bs4 4.12.3, ftfy 6.2.0")
    case = PROMPTED["pixart-sigma"]()
    del case.kwargs["clean_caption"]
    sink, commitment = _serve(case, "other")
    result = _challenge(folders["pixart-sigma"], sink, commitment)
    assert result.accepted
    assert len(result.unchecked) == 1
    assert "(bs4 4.12.3, ftfy 6.2.0) are not this verifier's" in result.unchecked[0]
    assert "clean_caption=False" in result.unchecked[0]


@pytest.mark.parametrize(
    ("prompt", "checked"), [("a red cat", True), ("a red cat\r\n", False), ("ein Kätzchen", False)]
)
def test_wan_prompts_ftfy_would_change_need_the_same_packages(
    folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch, prompt: str, checked: bool
) -> None:
    """Wan cleans prompts with ``ftfy`` where it is installed, which leaves printable ASCII
    alone: those are checked whatever the provider records; others only where it recorded
    the verifier's packages."""
    _recording_text_cleaning(monkeypatch, "bs4 -, ftfy 6.2.0")
    sink, commitment = _serve(PROMPTED["wan"](), "ftfy", prompt=prompt)
    result = _challenge(folders["wan"], sink, commitment)
    assert result.accepted
    if checked:
        assert result.unchecked == []
    else:
        assert len(result.unchecked) == 1
        assert "Wan cleans prompts that are not printable ASCII" in result.unchecked[0]


def test_animatediff_decodes_sixteen_frames_at_a_time_only() -> None:
    case = PROMPTED["animatediff"]()
    with pytest.raises(UnsupportedPipeline, match="decode_chunk_size"):
        _serve(case, "chunk", decode_chunk_size=2)


def test_a_component_class_outside_the_allowed_ones_is_refused(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    """The reference folder names which classes to build; only known encoders, tokenizers and
    VAEs are instantiated."""
    copy_ = tmp_path / "wan"
    shutil.copytree(folders["wan"], copy_)
    index = copy_ / "model_index.json"
    index.write_text(
        json.dumps({**json.loads(index.read_text()), "text_encoder": ["transformers", "BertModel"]})
    )
    sink, commitment = _serve(PROMPTED["wan"](), "bert")
    with pytest.raises(MalformedInputError, match=r"text_encoder is transformers\.BertModel"):
        _challenge(copy_, sink, commitment)


def test_concurrent_derivations_share_nothing(folders: dict[str, Path]) -> None:
    """Challenges run on several threads share one loaded reference: each derivation runs on
    its own copy of the pipeline, scheduler and denoiser stand-in."""
    from samplerguard.policy.spec import GoldenDigests
    from samplerguard.verifier.reference import ReferenceModels

    sink, commitment = _serve(PROMPTED["flux"](), "threads")
    refs = ReferenceModels(
        {"flux": folders["flux"]},
        GoldenDigests(model_weights=[commitment.recipe["model"]["digest"]]),
    )
    program: Any = refs.program(dict(commitment.recipe))
    request = sink.transcript("threads").meta.request or {}
    final = sink.transcript("threads").final
    results: list[tuple[bytes, dict[str, torch.Tensor]]] = []

    def derive() -> None:
        results.append(
            (
                program.output(final, commitment.recipe, request),
                program.conditioning(request, commitment.recipe),
            )
        )

    threads = [threading.Thread(target=derive) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    for output, conditioning in results[1:]:
        assert output == results[0][0]
        assert conditioning.keys() == results[0][1].keys()
        assert all(torch.equal(conditioning[k], results[0][1][k]) for k in conditioning)


@pytest.mark.parametrize("family", ["stable-diffusion-3", "flux"])
def test_the_pins_samplerguard_digest_prints_admit_every_text_encoder(
    folders: dict[str, Path], family: str
) -> None:
    """``samplerguard digest`` of the reference folder prints the text encoders' digests that
    the codec then holds each encoder to (SD3 and Flux have two)."""
    from samplerguard.cli._pins import pinned_digests
    from samplerguard.policy.spec import GoldenDigests

    pins = pinned_digests(folders[family]).golden_digests()
    assert len(pins["textEncoder"]) == 2
    sink, commitment = _serve(PROMPTED[family](), "pinned")
    golden = GoldenDigests(model_weights=pins["modelWeights"], text_encoder=pins["textEncoder"])
    result = _challenge(folders[family], sink, commitment, golden)
    assert result.accepted and result.unchecked == []
    with pytest.raises(VerificationError, match=r"goldenDigests\.textEncoder"):
        _challenge(
            folders[family],
            sink,
            commitment,
            GoldenDigests(model_weights=pins["modelWeights"], text_encoder=pins["textEncoder"][:1]),
        )
