"""Policy validation as status: the ``Ready`` condition and its report result.

The CRD's OpenAPI and CEL rules refuse most bad policies at ``kubectl apply``. What CEL cannot
check (a PEM that does not parse, a regex in a dialect the API server's RE2 accepts and Python
does not, anything added to the models later) reaches the operator, which must say so on the
object without ever raising: :func:`evaluate` turns any body into a status.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from samplerguard.errors import PolicyError
from samplerguard.policy import parse_policy
from samplerguard.policy.report import ReportResult

__all__ = ["Evaluation", "evaluate", "policy_ref"]


@dataclass(frozen=True)
class Evaluation:
    ok: bool
    message: str
    #: The ``status`` to write (merged over the existing one by kopf's status patch).
    status: dict[str, Any]
    #: For the ClusterPolicyReport / PolicyReport: pass or fail of rule ``policy``.
    result: ReportResult


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def policy_ref(body: dict[str, Any]) -> str:
    """How reports name a policy: ``name`` (cluster) or ``namespace/name``."""
    meta = body.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    ns = meta.get("namespace")
    name = str(meta.get("name") or "?")
    return f"{ns}/{name}" if ns else name


def evaluate(body: dict[str, Any], *, now: str | None = None) -> Evaluation:
    """Validate one policy object; never raises."""
    meta = body.get("metadata")
    meta = meta if isinstance(meta, dict) else {}
    generation = meta.get("generation")
    status_in = body.get("status")
    conditions = status_in.get("conditions") if isinstance(status_in, dict) else None
    previous = {
        c.get("type"): c
        for c in (conditions if isinstance(conditions, list) else [])
        if isinstance(c, dict)
    }
    try:
        policy = parse_policy(body)
    except PolicyError as exc:
        ok, reason, message = False, "Invalid", str(exc)
    except Exception as exc:  # a bug in a validator must not crash the operator
        ok, reason, message = False, "ValidationCrashed", f"{type(exc).__name__}: {exc}"
    else:
        spec = policy.spec
        ok, reason = True, "Valid"
        message = (
            f"{len(spec.images)} image rule(s), {len(spec.attestations)} attestation rule(s), "
            f"mode {spec.mode}"
        )
    status_str = "True" if ok else "False"
    old = previous.get("Ready") or {}
    transition = (
        old.get("lastTransitionTime")
        if old.get("status") == status_str and old.get("lastTransitionTime")
        else (now or _now())
    )
    condition: dict[str, Any] = {
        "type": "Ready",
        "status": status_str,
        "reason": reason,
        "message": message[:4096],
        "lastTransitionTime": transition,
    }
    if isinstance(generation, int):
        condition["observedGeneration"] = generation
    status: dict[str, Any] = {"conditions": [condition]}
    if isinstance(generation, int):
        status["observedGeneration"] = generation
    kind = body.get("kind", "?")
    resource = {
        "apiVersion": str(body.get("apiVersion", "samplerguard.dev/v1alpha1")),
        "kind": str(kind),
        "name": str(meta.get("name") or "?"),
    }
    if meta.get("namespace"):
        resource["namespace"] = str(meta["namespace"])
    if meta.get("uid"):
        resource["uid"] = str(meta["uid"])
    result = ReportResult.build(
        policy=policy_ref(body),
        rule="policy",
        result="pass" if ok else "fail",
        message=message,
        resource=resource,
    )
    return Evaluation(ok=ok, message=message, status=status, result=result)
