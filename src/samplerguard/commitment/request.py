"""The consumer's request, bound into the commitment, and the one call a consumer makes.

The provider controls every field it hands the hook, so a commitment that only bound what the
provider *says* was asked would let it serve a class-3 image for a class-7 request. The recipe
therefore commits ``request``: the digest of the request parameters exactly as the consumer sent
them (RFC 8785 JSON of a flat object). Two parties check it:

* the **consumer** (or the gateway acting for it), with :func:`verify_response`: the commitment
  is signed by the sidecar's key, names its request id, commits the digest of *its own*
  parameters, and its subject is the digest of the output bytes it received;
* the **verifier**, which gets the parameters with the transcript, checks them against the same
  digest, checks the declared steps and guidance against them, and re-derives the conditioning
  from them with the reference encoder (:mod:`samplerguard.commitment.transcript`).

Request parameters are a JSON object of at most 64 keys with these always present:
``requestId``, ``tenant``, ``steps``, ``guidanceScale``; the rest are the pipeline's inputs
(``classLabels`` for the bundled model; ``prompt`` and ``negativePrompt`` for text pipelines;
``height``, ``width``, ``seed`` where the consumer sent them). A consumer that sends prompt
embeddings instead of a prompt binds them as ``promptEmbeds`` (and ``negativePromptEmbeds``):
:func:`embeds_param` of the tensor it sent, ``{"digest", "dtype", "shape"}``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from samplerguard.commitment import jcs
from samplerguard.commitment.statement import Commitment
from samplerguard.commitment.ticket import ticket_digest
from samplerguard.errors import MalformedInputError, VerificationError

__all__ = [
    "MAX_REQUEST_BYTES",
    "REQUIRED_PARAMS",
    "check_request_params",
    "embeds_param",
    "request_digest",
    "verify_response",
]

MAX_REQUEST_BYTES = 64 << 10
#: the parameters every request carries
REQUIRED_PARAMS = ("requestId", "tenant", "steps", "guidanceScale")


def check_request_params(params: object) -> dict[str, Any]:
    """The parameters as a plain dict, or :class:`MalformedInputError` naming the problem."""
    if not isinstance(params, Mapping):
        raise MalformedInputError("request parameters are not a JSON object")
    if len(params) > 64:
        raise MalformedInputError(f"request parameters have {len(params)} keys, over 64")
    missing = [k for k in REQUIRED_PARAMS if k not in params]
    if missing:
        raise MalformedInputError(f"request parameters lack {missing}")
    steps, cfg = params["steps"], params["guidanceScale"]
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise MalformedInputError(f"request steps {steps!r} is not an integer")
    if isinstance(cfg, bool) or not isinstance(cfg, int | float) or not math.isfinite(cfg):
        raise MalformedInputError(f"request guidanceScale {cfg!r} is not a finite number")
    if not isinstance(params["requestId"], str) or not isinstance(params["tenant"], str):
        raise MalformedInputError("request requestId and tenant must be strings")
    return {str(k): v for k, v in params.items()}


def embeds_param(embeds: Any) -> dict[str, Any]:
    """The request parameter that binds a tensor of prompt embeddings, as its sender computes
    it: the canonical tensor digest, the dtype and the shape of the tensor exactly as sent
    (``samplerguard.commitment.digest.tensor_digest``). Prompt embeddings are 3-D (prompts,
    tokens, width); pooled ones (Stable Diffusion XL) 2-D (prompts, width). The verifier finds
    these embeddings in the conditioning the provider committed; it can when the pipeline ran
    them in the sent dtype or a wider one (float16 sent, float32 run), not when it narrowed
    them (float32 sent, float16 run: then they are reported NOT CHECKED)."""
    import torch

    from samplerguard.commitment.digest import tensor_digest

    if (
        not isinstance(embeds, torch.Tensor)
        or embeds.dim() not in (2, 3)
        or not embeds.is_floating_point()
    ):
        raise MalformedInputError(
            "prompt embeddings are a 3-D floating-point tensor (prompts, tokens, width), or "
            "2-D when pooled (prompts, width)"
        )
    return {
        "digest": tensor_digest(embeds),
        "dtype": str(embeds.dtype).removeprefix("torch."),
        "shape": list(embeds.shape),
    }


def request_digest(params: Mapping[str, Any]) -> str:
    """``sha256:`` over the RFC 8785 JSON of the request parameters."""
    doc = check_request_params(params)
    try:
        data = jcs.dumps(doc)  # rfc8785's bytes, on its fast path for plain documents
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise MalformedInputError(f"request parameters are not canonical JSON: {exc}") from None
    if len(data) > MAX_REQUEST_BYTES:
        raise MalformedInputError(
            f"request parameters are {len(data)} bytes, over the {MAX_REQUEST_BYTES} cap"
        )
    return "sha256:" + hashlib.sha256(data).hexdigest()


def verify_response(
    commitment: object,
    public_key: Ed25519PublicKey,
    *,
    request: Mapping[str, Any],
    output: bytes,
    ticket: Mapping[str, Any] | None = None,
) -> Commitment:
    """What a consumer checks about a response, with what it holds: the commitment envelope
    (JSON), the sidecar's public key, its own request parameters and the output bytes.

    Raises :class:`VerificationError` naming the failed check (or
    :class:`MalformedInputError` for input that is not a commitment at all); returns the
    verified commitment. It proves the response is *committed* to this request and output; the
    verifier's challenges prove the committed trajectory was computed as declared. A gateway that
    issued a request ``ticket`` (:mod:`samplerguard.commitment.ticket`) also checks that the
    commitment binds that very ticket.
    """
    # (1): the sidecar's signature
    c = Commitment.verify(commitment, public_key)
    # (2): the request id the consumer chose
    want_id = request.get("requestId")
    if c.request_id != want_id:
        raise VerificationError(
            f"request binding: the commitment is for request {c.request_id!r}, "
            f"expected {want_id!r}",
            check="request-binding",
            found=c.request_id,
            expected=want_id,
        )
    # (3): the consumer's own parameters, digest for digest
    want = request_digest(request)
    got = c.recipe.get("request")
    if got != want:
        raise VerificationError(
            f"request binding: the commitment binds request parameters {str(got)[:23]}…, "
            f"the request sent hashes to {want[:23]}… (a changed prompt, label, size, steps or "
            "guidance)",
            check="request-binding",
            found=str(got),
            expected=want,
        )
    # (4): the declared steps and guidance are the requested ones
    if c.recipe.get("steps") != request["steps"] or float(
        c.recipe.get("guidance_scale", math.nan)
    ) != float(request["guidanceScale"]):
        raise VerificationError(
            f"request binding: the recipe declares steps {c.recipe.get('steps')!r} and guidance "
            f"{c.recipe.get('guidance_scale')!r}, the request asked for {request['steps']!r} "
            f"and {request['guidanceScale']!r}",
            check="request-binding",
        )
    # (5): the gateway's own ticket, when it issued one
    if ticket is not None:
        bound = c.predicate.get("requestTicket")
        want_ticket = ticket_digest(ticket)
        got_ticket = bound.get("digest") if isinstance(bound, dict) else None
        if got_ticket != want_ticket:
            raise VerificationError(
                "request binding: the commitment does not bind the gateway's request ticket "
                f"({str(got_ticket)[:23]}…, expected {want_ticket[:23]}…)",
                check="ticket",
                found=str(got_ticket),
                expected=want_ticket,
            )
    # (6): the output received is the output committed
    got_out = "sha256:" + hashlib.sha256(output).hexdigest()
    if got_out != c.output_digest:
        raise VerificationError(
            f"output binding: the output received hashes to {got_out[:23]}…, the commitment's "
            f"subject is {c.output_digest[:23]}…",
            check="output-binding",
            found=got_out,
            expected=c.output_digest,
        )
    return c
