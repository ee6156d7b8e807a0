"""The reference codec of Stable Diffusion: the verifier re-derives the prompt's conditioning
with the reference tokenizer and text encoder, and the served output with the reference VAE,
from a diffusers pipeline folder. Every provider here records through the real hook."""

from __future__ import annotations

import copy
import json
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from samplerguard.commitment.challenge import ChallengeResult, verify_challenge
from samplerguard.commitment.digest import module_digest
from samplerguard.commitment.opening import Opening
from samplerguard.commitment.statement import Commitment
from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.hook import pipelines
from samplerguard.hook.local import LocalSink
from samplerguard.hook.pipelines import instrument
from samplerguard.hook.recorder import Recorder
from samplerguard.policy.spec import GoldenDigests
from samplerguard.verifier.reference import ReferenceModels
from tests.support.families import Case, request_for, stable_diffusion_prompted

pytestmark = pytest.mark.slow


def saved_reference(
    tmp_path_factory: pytest.TempPathFactory, build: Callable[[], Case], name: str
) -> Path:
    """The verifier's reference: the honest pipeline ``build`` makes, saved as a diffusers
    folder."""
    path = tmp_path_factory.mktemp(name)
    build().pipe.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return saved_reference(tmp_path_factory, stable_diffusion_prompted, "sd")


def _serve(case: Case, rid: str, **kwargs: Any) -> tuple[LocalSink, Commitment]:
    sink = LocalSink()
    recorder = Recorder(sink)
    call = {**case.kwargs, **kwargs}
    runner = instrument(case.pipe, recorder)
    try:
        gen = torch.Generator().manual_seed(7)
        out = runner(
            num_inference_steps=case.steps,
            guidance_scale=case.guidance,
            generator=gen,
            trajectory_request=request_for(case, rid),
            **call,
        )
    finally:
        recorder.close()
    return sink, Commitment.verify(out.commitment.to_json(), sink.key.public_key())


def _challenge(
    folder: Path,
    sink: LocalSink,
    commitment: Commitment,
    golden: GoldenDigests | None = None,
    tau: float = 0.0,
) -> ChallengeResult:
    digest = commitment.recipe["model"]["digest"]
    refs = ReferenceModels(
        {commitment.recipe["pipeline"]: folder}, golden or GoldenDigests(model_weights=[digest])
    )
    rid = commitment.request_id
    return verify_challenge(
        commitment,
        sink.transcript(rid),
        lambda s: Opening.from_bytes(sink.opening(rid, s).to_bytes()),
        refs.program(dict(commitment.recipe)),
        steps=list(range(commitment.n_steps)),
        tau=tau,
    )


def test_an_honest_prompted_generation_is_checked_end_to_end(folder: Path) -> None:
    sink, commitment = _serve(stable_diffusion_prompted(), "honest")
    result = _challenge(folder, sink, commitment)
    assert result.accepted and result.exact
    assert result.unchecked == []  # the output and the conditioning were re-derived
    assert [r.worst for r in result.results] == [0.0] * commitment.n_steps


def test_the_recipe_records_the_output_type_the_call_produces(folder: Path) -> None:
    """The request declares ``np``; the call leaves ``output_type`` at the pipeline's default
    (PIL images). The recipe records what the call produced, so the honest output checks."""
    case = stable_diffusion_prompted()
    del case.kwargs["output_type"]
    sink, commitment = _serve(case, "pil")
    assert commitment.recipe["output_type"] == "pil"
    result = _challenge(folder, sink, commitment)
    assert result.accepted and result.unchecked == []


def test_several_images_per_prompt_and_no_guidance_are_derived_as_the_pipeline_does(
    folder: Path,
) -> None:
    case = stable_diffusion_prompted()
    case.guidance = 1.0
    sink, commitment = _serve(case, "batch", num_images_per_prompt=2, prompt=["a", "b c"])
    result = _challenge(folder, sink, commitment)
    assert result.accepted and result.unchecked == []


def _forge(monkeypatch: pytest.MonkeyPatch, **fields: Any) -> None:
    """The provider records request parameters other than those of the call it ran."""
    real = pipelines.request_params

    def forged(*args: Any) -> dict[str, Any]:
        return {**real(*args), **fields}

    monkeypatch.setattr(pipelines, "request_params", forged)


def test_a_swapped_prompt_is_rejected(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The consumer asked for "a blue dog"; the provider ran "a red cat" and committed the
    consumer's request. Every step re-checks (they ran what they committed), but the
    conditioning is not what the request derives."""
    _forge(monkeypatch, prompt="a blue dog")
    sink, commitment = _serve(stable_diffusion_prompted(), "swap")
    with pytest.raises(VerificationError, match=r"conditioning 'prompt_embeds' is not what"):
        _challenge(folder, sink, commitment)


def rejects_a_substituted_encoder(folder: Path, case: Case, encoder: str = "text_encoder") -> None:
    """A provider whose text encoder is not the reference's (a fine-tune that drops a safety
    concept, say) conditions the UNet on other embeddings for the same prompt."""
    changed = copy.deepcopy(getattr(case.pipe, encoder))
    with torch.no_grad():
        for p in changed.parameters():
            p.mul_(1.001)
    setattr(case.pipe, encoder, changed)
    sink, commitment = _serve(case, "encoder")
    with pytest.raises(VerificationError, match="not what the request derives"):
        _challenge(folder, sink, commitment)


def rejects_an_output_not_the_decode(
    folder: Path, monkeypatch: pytest.MonkeyPatch, case: Case
) -> None:
    """The provider serves an image other than the decode of its final latent."""
    _post(monkeypatch, case, lambda image: image * 0.99)
    sink, commitment = _serve(case, "image")
    with pytest.raises(VerificationError, match="output binding: the served output"):
        _challenge(folder, sink, commitment)


def test_a_substituted_text_encoder_is_rejected(folder: Path) -> None:
    rejects_a_substituted_encoder(folder, stable_diffusion_prompted())


def _post(monkeypatch: pytest.MonkeyPatch, case: Case, change: Callable[[Any], Any]) -> None:
    processor = case.pipe.image_processor
    real = processor.postprocess
    monkeypatch.setattr(processor, "postprocess", lambda *a, **k: change(real(*a, **k)))


def test_a_served_image_that_is_not_the_decode_is_rejected(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rejects_an_output_not_the_decode(folder, monkeypatch, stable_diffusion_prompted())


def test_a_swapped_output_behind_a_false_build_claim_is_rejected(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider declares a build the verifier does not reproduce, where a decode may differ
    in its last bits, and serves another image. Its steps reproduce bit for bit, so the build
    it claims does not explain the differing output: rejected."""
    from samplerguard.commitment.fingerprint import build_fingerprint
    from samplerguard.hook import recorder as hook_recorder

    mine = build_fingerprint("cpu")
    monkeypatch.setattr(hook_recorder, "build_fingerprint", lambda d: {**mine, "torch": "0.0.1"})
    case = stable_diffusion_prompted()
    _post(monkeypatch, case, lambda image: image * 0.99)
    sink, commitment = _serve(case, "other-build")
    with pytest.raises(VerificationError, match="false build claim"):
        _challenge(folder, sink, commitment)


def test_a_swapped_prompt_behind_a_false_build_claim_is_rejected(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a declared build the verifier does not reproduce, derived conditioning is compared
    within tau. One swapped prompt among 32 moves the whole tensor little, so the comparison
    is per row; and since every step reproduces bit for bit, the build claim explains no
    difference at all: rejected either way."""
    from samplerguard.commitment.fingerprint import build_fingerprint
    from samplerguard.hook import recorder as hook_recorder

    mine = build_fingerprint("cpu")
    monkeypatch.setattr(hook_recorder, "build_fingerprint", lambda d: {**mine, "torch": "0.0.1"})
    prompts = [f"a cat number {i}" for i in range(32)]
    _forge(monkeypatch, prompt=[*prompts[:-1], "a dog"])
    sink, commitment = _serve(
        stable_diffusion_prompted(), "build-swap", prompt=prompts, negative_prompt=None
    )
    with pytest.raises(VerificationError, match="does not explain it"):
        _challenge(folder, sink, commitment, tau=0.3)


def test_conditioning_within_tau_passes_only_where_the_steps_drift_too() -> None:
    """The rule behind the test above, on its own: a derived conditioning a few bits from the
    committed one passes at tau when the steps drift as a real build difference makes them,
    and is rejected when they reproduce bit for bit. One row far off is not diluted."""
    from samplerguard.commitment.challenge import ChallengeResult, _check_approximate, _rel_l2
    from samplerguard.commitment.recheck import RecheckResult
    from samplerguard.commitment.transcript import TailFacts

    committed = torch.randn(32, 4, 8, generator=torch.Generator().manual_seed(1))
    derived = committed * (1 + 1e-7)
    facts = TailFacts(
        initial_latent=torch.zeros(1), step_noise=[], unchecked=[], approximate={"c": derived}
    )
    opened: Any = types.SimpleNamespace(conditioning={"c": committed})
    drift = RecheckResult("r", 0, 2e-7, 0.0, 3e-7, tau=1e-5)
    result = ChallengeResult(steps=[0], exact=False, tau=1e-5, results=[drift])
    _check_approximate(facts, opened, result)
    assert result.accepted
    exact = RecheckResult("r", 0, 0.0, 0.0, 0.0, tau=1e-5)
    with pytest.raises(VerificationError, match="does not explain it"):
        _check_approximate(facts, opened, ChallengeResult([0], False, 1e-5, results=[exact]))
    swapped = committed.clone()
    swapped[7] = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    assert (
        _rel_l2(swapped, committed)
        > 1.0
        > 3 * float((swapped - committed).norm() / committed.norm())
    )


def test_on_a_build_whose_steps_drift_a_differing_decode_is_not_checked_never_passed() -> None:
    """Where the steps drift (a real build difference), a decode a few bits apart is reported
    as NOT CHECKED (an incomplete challenge), neither passed nor failed."""
    from samplerguard.commitment.challenge import ChallengeResult, _check_approximate
    from samplerguard.commitment.recheck import RecheckResult
    from samplerguard.commitment.transcript import TailFacts

    facts = TailFacts(
        initial_latent=torch.zeros(1),
        step_noise=[],
        unchecked=["output binding (the reference decode differs …)"],
        output_differs=True,
    )
    drift = RecheckResult("r", 0, 2e-7, 0.0, 3e-7, tau=1e-5)
    result = ChallengeResult(steps=[0], exact=False, tau=1e-5, results=[drift])
    result.unchecked = list(facts.unchecked)
    _check_approximate(facts, None, result)
    assert result.accepted and result.unchecked == facts.unchecked
    exact = RecheckResult("r", 0, 0.0, 0.0, 0.0, tau=1e-5)
    with pytest.raises(VerificationError, match="false build claim"):
        _check_approximate(facts, None, ChallengeResult([0], False, 1e-5, results=[exact]))


def _embeddings(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """What a consumer sends instead of a prompt: its own encoding of one."""
    with torch.no_grad():
        embeds, negative = case.pipe.encode_prompt("a red cat", "cpu", 1, True, "blurry")
    return embeds, negative


@pytest.mark.parametrize("images", [1, 2])
def test_prompt_embeddings_are_found_in_the_committed_conditioning(
    folder: Path, images: int
) -> None:
    """The request binds the embeddings it sent by digest; the verifier finds them in the
    committed conditioning (each image's rows, the negative half) and has the pipeline's own
    code derive the whole conditioning from them."""
    case = stable_diffusion_prompted()
    embeds, negative = _embeddings(case)
    sink, commitment = _serve(
        case, f"embeds-{images}", prompt=None, negative_prompt=None, prompt_embeds=embeds,
        negative_prompt_embeds=negative, num_images_per_prompt=images,
    )  # fmt: skip
    result = _challenge(folder, sink, commitment)
    assert result.accepted and result.unchecked == []


def test_prompt_embeddings_with_a_negative_prompt_derive_the_negative_half(folder: Path) -> None:
    case = stable_diffusion_prompted()
    embeds, _ = _embeddings(case)
    sink, commitment = _serve(
        case, "embeds-neg", prompt=None, negative_prompt="blurry", prompt_embeds=embeds
    )
    assert _challenge(folder, sink, commitment).unchecked == []


def test_swapped_prompt_embeddings_are_rejected(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The consumer sent the embeddings of "a blue dog"; the provider ran others and committed
    the consumer's request."""
    from samplerguard.commitment.request import embeds_param

    case = stable_diffusion_prompted()
    embeds, negative = _embeddings(case)
    with torch.no_grad():
        asked, _ = case.pipe.encode_prompt("a blue dog", "cpu", 1, True, "blurry")
    _forge(monkeypatch, promptEmbeds=embeds_param(asked))
    sink, commitment = _serve(
        case, "embeds-swap", prompt=None, negative_prompt=None, prompt_embeds=embeds,
        negative_prompt_embeds=negative,
    )  # fmt: skip
    with pytest.raises(VerificationError, match="does not hold the request's prompt embeddings"):
        _challenge(folder, sink, commitment)


def test_a_negative_half_other_than_the_request_derives_is_rejected(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request sent embeddings and the negative prompt "blurry"; the provider ran the empty
    negative prompt (no negative guidance away from "blurry") with the consumer's embeddings."""
    case = stable_diffusion_prompted()
    embeds, _ = _embeddings(case)
    _forge(monkeypatch, negativePrompt="blurry")
    sink, commitment = _serve(
        case, "embeds-neg-swap", prompt=None, negative_prompt=None, prompt_embeds=embeds
    )
    with pytest.raises(VerificationError, match="not what the request's embeddings derive"):
        _challenge(folder, sink, commitment)


def test_embeddings_narrowed_by_the_pipeline_are_not_checked_never_passed(folder: Path) -> None:
    """Sent as float64, run as float32: the sent bits cannot be recovered from what was
    committed, so the conditioning is reported NOT CHECKED (an incomplete challenge)."""
    case = stable_diffusion_prompted()
    embeds, negative = _embeddings(case)
    sink, commitment = _serve(
        case, "embeds-f64", prompt=None, negative_prompt=None, prompt_embeds=embeds.double(),
        negative_prompt_embeds=negative.double(),
    )  # fmt: skip
    result = _challenge(folder, sink, commitment)
    assert result.accepted
    assert len(result.unchecked) == 1
    assert "sent as float64 and run as float32, which loses bits" in result.unchecked[0]


def test_a_request_without_a_prompt_or_its_embeddings_is_not_checked(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider that records no embeddings digest cannot make the conditioning pass."""
    real = pipelines.request_params

    def without_embeds(*args: Any) -> dict[str, Any]:
        params = real(*args)
        params.pop("promptEmbeds", None)
        params.pop("negativePromptEmbeds", None)
        return params

    monkeypatch.setattr(pipelines, "request_params", without_embeds)
    case = stable_diffusion_prompted()
    embeds, negative = _embeddings(case)
    sink, commitment = _serve(
        case, "embeds-none", prompt=None, negative_prompt=None, prompt_embeds=embeds,
        negative_prompt_embeds=negative,
    )  # fmt: skip
    result = _challenge(folder, sink, commitment)
    assert result.accepted
    assert result.unchecked == [
        "request conditioning (the request carries neither a prompt nor a digest of its "
        "prompt embeddings)"
    ]


def test_a_text_encoder_outside_the_policys_pins_is_refused(folder: Path) -> None:
    sink, commitment = _serve(stable_diffusion_prompted(), "pinned")
    golden = GoldenDigests(
        model_weights=[commitment.recipe["model"]["digest"]],
        text_encoder=["sha256:" + "0" * 64],
    )
    with pytest.raises(VerificationError, match=r"goldenDigests\.textEncoder"):
        _challenge(folder, sink, commitment, golden)
    pinned = module_digest(stable_diffusion_prompted().pipe.text_encoder)
    ok = _challenge(
        folder,
        sink,
        commitment,
        GoldenDigests(model_weights=[commitment.recipe["model"]["digest"]], text_encoder=[pinned]),
    )
    assert ok.accepted and ok.unchecked == []


def test_a_component_naming_another_class_is_unusable(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    copy_ = tmp_path / "sd"
    shutil.copytree(folder, copy_)
    config = copy_ / "tokenizer" / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "tokenizer_class": "Evil"}))
    sink, commitment = _serve(stable_diffusion_prompted(), "evil")
    with pytest.raises(MalformedInputError, match="names 'Evil'; the tokenizer is a CLIPTokenizer"):
        _challenge(copy_, sink, commitment)


@pytest.mark.parametrize(
    ("claim", "message"),
    [
        ({"height": 32, "width": 32}, r"asks for 32x32 images, the committed latents are 16x16"),
        ({"imagesPerPrompt": 2}, r"request derives 2 images, the committed latents hold 1"),
    ],
)
def test_fewer_or_smaller_images_than_requested_are_rejected(
    folder: Path, monkeypatch: pytest.MonkeyPatch, claim: dict[str, Any], message: str
) -> None:
    """The provider commits the consumer's request but generates less: smaller images (a
    quarter of the UNet's work) or fewer of them. Each step it ran re-checks."""
    _forge(monkeypatch, **claim)
    sink, commitment = _serve(stable_diffusion_prompted(), "less")
    with pytest.raises(VerificationError, match=message):
        _challenge(folder, sink, commitment)


def test_an_explicit_size_is_held_too(folder: Path) -> None:
    sink, commitment = _serve(stable_diffusion_prompted(), "sized", height=24, width=16)
    assert commitment.recipe["latent_shape"][2:] == [12, 8]
    assert _challenge(folder, sink, commitment).unchecked == []


def test_prompt_embeddings_through_the_sidecar_are_found_in_what_it_stored(
    folder: Path, tmp_path: Path
) -> None:
    """The deployed path: the hook streams to a real ingest server, which checks the request
    parameters (the embeddings' binding is a nested object) against the recipe's digest and
    stores them; the verifier reads the transcript and the openings as the sidecar serves
    them, and finds the request's embeddings in the committed conditioning."""
    from samplerguard.commitment.transcript import Transcript
    from samplerguard.hook.sidecar_sink import SidecarSink
    from tests.unit.sidecar.test_keepalive import _KEY, _server

    server = _server(tmp_path)
    server.gate.key = _KEY
    case = stable_diffusion_prompted()
    embeds, negative = _embeddings(case)
    recorder = Recorder(SidecarSink(server.path))
    try:
        out = instrument(case.pipe, recorder)(
            num_inference_steps=case.steps,
            guidance_scale=case.guidance,
            generator=torch.Generator().manual_seed(7),
            trajectory_request=request_for(case, "embeds-sidecar"),
            **{**case.kwargs, "prompt": None, "negative_prompt": None},
            prompt_embeds=embeds,
            negative_prompt_embeds=negative,
        )
        commitment = out.commitment
        transcript = Transcript.from_bytes(server.store.transcript_bytes("embeds-sidecar"))
        assert transcript.meta.request is not None
        assert transcript.meta.request["promptEmbeds"]["shape"] == list(embeds.shape)
        digest = commitment.recipe["model"]["digest"]
        program = ReferenceModels(
            {"stable-diffusion": folder}, GoldenDigests(model_weights=[digest])
        ).program(dict(commitment.recipe))
        result = verify_challenge(
            commitment,
            transcript,
            lambda s: Opening.from_bytes(server.store.opening_bytes("embeds-sidecar", s)),
            program,
            steps=list(range(commitment.n_steps)),
            tau=0.0,
        )
    finally:
        recorder.close()
        server.close()
    assert result.accepted and result.unchecked == []


def test_a_nudged_image_row_behind_a_false_build_claim_is_rejected(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider declares a build the verifier does not reproduce, so derived conditioning
    is compared within tau, and nudges the second image's copy of the consumer's embeddings by
    1e-7 (far below tau): the first rows still hold the sent embeddings. Rows made of sent
    embeddings are copies on any build, so the nudge is rejected."""
    from samplerguard.commitment.fingerprint import build_fingerprint
    from samplerguard.hook import recorder as hook_recorder

    mine = build_fingerprint("cpu")
    monkeypatch.setattr(hook_recorder, "build_fingerprint", lambda d: {**mine, "torch": "0.0.1"})
    case = stable_diffusion_prompted()
    embeds, negative = _embeddings(case)
    real = case.pipe.encode_prompt

    def nudged(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        positive, neg = real(*args, **kwargs)
        positive = positive.clone()
        positive[1] += 1e-7 * positive[1].abs().max()
        return positive, neg

    monkeypatch.setattr(case.pipe, "encode_prompt", nudged)
    sink, commitment = _serve(
        case, "embeds-nudge", prompt=None, negative_prompt=None, prompt_embeds=embeds,
        negative_prompt_embeds=negative, num_images_per_prompt=2,
    )  # fmt: skip
    digest = commitment.recipe["model"]["digest"]
    rid = commitment.request_id
    with pytest.raises(VerificationError, match="not the sent ones, once per image"):
        verify_challenge(
            commitment,
            sink.transcript(rid),
            lambda s: Opening.from_bytes(sink.opening(rid, s).to_bytes()),
            ReferenceModels(
                {"stable-diffusion": folder}, GoldenDigests(model_weights=[digest])
            ).program(dict(commitment.recipe)),
            steps=list(range(commitment.n_steps)),
            tau=1e-3,
        )
