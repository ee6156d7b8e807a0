"""``POST /validate-policy``: refuse a SamplerPolicy or ClusterSamplerPolicy the models refuse,
when it is applied.

The CRD's OpenAPI schema and CEL rules refuse most invalid policies in the API server itself,
but not what CEL cannot check: a PEM that does not parse, an identity pattern RE2 cannot
compile, a CEL condition on attestations that does not compile. This review runs
:func:`~samplerguard.policy.parse_policy` on the object, so ``kubectl apply`` answers with the
model's own message (``spec.attestations.0.conditions.0.expression: condition '…' is not
valid CEL: …``) instead of an object that the operator later marks ``Ready=False``.
"""

from __future__ import annotations

from pydantic import ValidationError

from samplerguard.errors import PolicyError
from samplerguard.policy import GROUP, parse_policy
from samplerguard.webhook.review import AdmissionReview, allow, deny

__all__ = ["POLICY_KINDS", "review_policy"]

POLICY_KINDS = frozenset({"ClusterSamplerPolicy", "SamplerPolicy"})


def review_policy(body: bytes) -> tuple[int, AdmissionReview | str]:
    """One AdmissionReview body → (HTTP status, the answer or the reason it is malformed)."""
    try:
        review = AdmissionReview.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[:3]
        return 400, "not an AdmissionReview admission.k8s.io/v1: " + "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in first
        )
    request = review.request
    if request is None:
        return 400, "the AdmissionReview carries no request"
    if (
        request.operation not in ("CREATE", "UPDATE")
        or request.kind.group != GROUP
        or request.kind.kind not in POLICY_KINDS
    ):
        return 200, allow(request.uid)
    try:
        parse_policy(request.object)
    except PolicyError as exc:
        return 200, deny(request.uid, str(exc), code=422, reason="Invalid")
    return 200, allow(request.uid)
