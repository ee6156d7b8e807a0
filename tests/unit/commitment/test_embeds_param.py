"""How a request binds prompt embeddings: the consumer and the hook compute the same parameter
from the same tensor, and anything but a 3-D (or pooled, 2-D) floating-point tensor is
refused."""

from __future__ import annotations

import pytest
import torch

from samplerguard.commitment.digest import tensor_digest
from samplerguard.commitment.request import embeds_param, request_digest
from samplerguard.errors import MalformedInputError
from samplerguard.families import family_for_pipeline
from samplerguard.hook.pipelines import request_params
from samplerguard.hook.recorder import TrajectoryRequest

ZERO = "sha256:" + "0" * 64


def test_the_hook_binds_the_embeddings_the_pipeline_was_called_with() -> None:
    embeds = torch.randn(2, 7, 16, dtype=torch.float16)
    negative = torch.randn(2, 7, 16, dtype=torch.float16)
    family = family_for_pipeline("StableDiffusionPipeline")
    request = TrajectoryRequest("r", "t", family.name, "m", ZERO, "euler", 7.5, 20)
    params = request_params(
        family, request, {"prompt_embeds": embeds, "negative_prompt_embeds": negative}
    )
    # what the consumer computes from the tensors it sent
    assert params["promptEmbeds"] == {
        "digest": tensor_digest(embeds),
        "dtype": "float16",
        "shape": [2, 7, 16],
    }
    assert params["negativePromptEmbeds"] == embeds_param(negative)
    assert "prompt" not in params
    request_digest(params)  # canonical JSON, within the size cap


@pytest.mark.parametrize(
    "value",
    [
        torch.zeros(16),
        torch.zeros(1, 1, 7, 16),
        torch.zeros(1, 7, 16, dtype=torch.int64),
        [[0.0]],
        "embeds",
    ],
)
def test_anything_but_a_3d_float_tensor_is_refused(value: object) -> None:
    with pytest.raises(MalformedInputError, match="3-D floating-point tensor"):
        embeds_param(value)


def test_pooled_embeddings_are_bound_as_2d() -> None:
    pooled = torch.randn(2, 32)
    assert embeds_param(pooled)["shape"] == [2, 32]


@pytest.mark.parametrize(
    "spec",
    [
        "sha256:" + "0" * 64,
        {"digest": ZERO, "dtype": "float32"},
        {"digest": "md5:00", "dtype": "float32", "shape": [1, 7, 16]},
        {"digest": ZERO, "dtype": "int64", "shape": [1, 7, 16]},
        {"digest": ZERO, "dtype": "float32", "shape": [1, 7]},
        {"digest": ZERO, "dtype": "float32", "shape": [1, 7, True]},
        {"digest": ZERO, "dtype": "float32", "shape": [65, 7, 16]},
        {"digest": ZERO, "dtype": "float32", "shape": [1, 7, 16], "extra": 1},
    ],
)
def test_the_verifier_refuses_a_malformed_embeddings_binding(spec: object) -> None:
    from samplerguard.families._embeds import embeds_spec

    with pytest.raises(MalformedInputError, match="promptEmbeds"):
        embeds_spec({"promptEmbeds": spec}, "promptEmbeds")


def test_embeddings_are_recovered_only_from_floating_point_rows_of_their_shape() -> None:
    from samplerguard.commitment.transcript import UncheckedBinding
    from samplerguard.errors import VerificationError
    from samplerguard.families._embeds import sent_embeds

    sent = torch.randn(1, 7, 16, dtype=torch.float16)
    spec = embeds_param(sent)
    assert torch.equal(sent_embeds(sent.float(), spec, "prompt embeddings"), sent)  # widened
    with pytest.raises(VerificationError, match="swapped embeddings"):
        sent_embeds(sent.float() + 1, spec, "prompt embeddings")
    with pytest.raises(VerificationError, match="are \\[1, 7, 16\\], the committed"):
        sent_embeds(torch.zeros(1, 7, 8), spec, "prompt embeddings")
    with pytest.raises(VerificationError, match="not floating point"):
        sent_embeds(torch.zeros(1, 7, 16, dtype=torch.int64), spec, "prompt embeddings")
    with pytest.raises(UncheckedBinding, match="sent as float32 and run as float16"):
        sent_embeds(sent, embeds_param(sent.float()), "prompt embeddings")
