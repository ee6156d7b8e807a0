"""Prompt embeddings a request binds by digest (``{"digest", "dtype", "shape"}``, see
:func:`samplerguard.commitment.request.embeds_param`): the request's spec checked, the sent
tensor recovered from the committed conditioning, its per-image copies held bit for bit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from samplerguard.commitment.transcript import UncheckedBinding
from samplerguard.errors import MalformedInputError, VerificationError

__all__ = [
    "MAX_IMAGES",
    "MAX_PROMPTS",
    "MAX_PROMPT_CHARS",
    "OUTPUT_TYPES",
    "check_images",
    "embeds_spec",
    "repeated_exactly",
    "sent_embeds",
]

#: the most prompts a request may carry, and the longest prompt
MAX_PROMPTS = 64
MAX_PROMPT_CHARS = 4096
#: the pipeline output types the reference codecs post-process
OUTPUT_TYPES = ("np", "pil", "pt", "latent")
#: the most images (prompts times images per prompt) a request may make the verifier encode
MAX_IMAGES = 64

_FLOAT_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
#: the dtypes each sent dtype may be run in without losing a bit (a cast back recovers it)
_WIDER = {
    torch.float16: {torch.float16, torch.float32, torch.float64},
    torch.bfloat16: {torch.bfloat16, torch.float32, torch.float64},
    torch.float32: {torch.float32, torch.float64},
    torch.float64: {torch.float64},
}


def embeds_spec(request: Mapping[str, Any], key: str, rank: int = 3) -> dict[str, Any]:
    """The request's ``{"digest", "dtype", "shape"}`` of a tensor of embeddings, checked
    (``rank``: 3 for prompt embeddings, 2 for pooled ones)."""
    from samplerguard.commitment.digest import DIGEST_RE

    spec = request.get(key)
    if not isinstance(spec, dict) or set(spec) != {"digest", "dtype", "shape"}:
        raise MalformedInputError(f"the request's {key} is not {{digest, dtype, shape}}")
    shape = spec["shape"]
    if (
        not isinstance(spec["digest"], str)
        or not DIGEST_RE.match(spec["digest"])
        or spec["dtype"] not in _FLOAT_DTYPES
        or not isinstance(shape, list)
        or len(shape) != rank
        or not all(type(d) is int and 0 < d <= 1 << 16 for d in shape)
        or shape[0] > MAX_PROMPTS
    ):
        raise MalformedInputError(
            f"the request's {key} needs a sha256 digest, a floating-point dtype and a {rank}-D "
            "shape "
            f"of at most {MAX_PROMPTS} prompts"
        )
    return spec


def sent_embeds(found: torch.Tensor, spec: Mapping[str, Any], what: str) -> torch.Tensor:
    """The embeddings the request sent, recovered from the committed conditioning's rows
    ``found``, and checked against the request's digest."""
    from samplerguard.commitment.digest import tensor_digest

    if list(found.shape) != spec["shape"]:
        raise VerificationError(
            f"request binding: the request's {what} are {spec['shape']}, the committed "
            f"conditioning holds {list(found.shape)}",
            check="request-binding",
        )
    dtype = _FLOAT_DTYPES[spec["dtype"]]
    if found.dtype not in _WIDER:
        raise VerificationError(
            f"request binding: the committed conditioning holds {what} of dtype "
            f"{str(found.dtype).removeprefix('torch.')}, not floating point",
            check="request-binding",
        )
    if found.dtype not in _WIDER[dtype]:
        raise UncheckedBinding(
            f"the {what} were sent as {spec['dtype']} and run as "
            f"{str(found.dtype).removeprefix('torch.')}, which loses bits: they cannot be "
            "recovered from the committed conditioning (send them in the model's dtype)"
        )
    sent = found.to(dtype)
    if tensor_digest(sent) != spec["digest"]:
        raise VerificationError(
            f"request binding: the committed conditioning does not hold the request's {what} "
            "(swapped embeddings)",
            check="request-binding",
        )
    return sent


def repeated_exactly(rows: torch.Tensor, sent: torch.Tensor, per_prompt: int, what: str) -> None:
    """``rows`` are each prompt's ``sent`` embeddings once per image, in the committed dtype."""
    if not torch.equal(rows, sent.to(rows.dtype).repeat_interleave(per_prompt, dim=0)):
        raise VerificationError(
            f"request binding: the committed rows of the request's {what} are not the sent "
            "ones, once per image",
            check="request-binding",
        )


def check_images(prompts: int, per_prompt: int) -> None:
    """A request makes at most :data:`MAX_IMAGES` images: the verifier encodes every one."""
    if prompts * per_prompt > MAX_IMAGES:
        raise MalformedInputError(
            f"the request makes {prompts * per_prompt} images, more than {MAX_IMAGES} (prompts "
            "times images per prompt)"
        )
