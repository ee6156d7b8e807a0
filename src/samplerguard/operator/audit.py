"""Background audit: re-verify the images of running pods under the policies in force now.

Admission checked each image once, when its pod was created. Signatures get removed, keys get
rotated and policies get tightened afterwards; the audit catches all three by re-running the
same :class:`~samplerguard.supplychain.verifier.ImageVerifier` on every opted-in pod's image
digest (the digest the kubelet actually pulled, from ``status.containerStatuses[].imageID``,
else the pinned reference the webhook wrote) and reporting ``signature``, ``provenance`` and
``golden-digests`` results per workload.

The checker is a callable so that the audit is tested without a registry; in the operator it is
:func:`image_checker` over the supply-chain verifier.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from samplerguard.errors import MalformedInputError, TemporaryError
from samplerguard.policy import ClusterSamplerPolicy, SamplerPolicy, parse_policy
from samplerguard.policy.report import ReportResult, Rule

__all__ = [
    "OPT_IN_NAMESPACE_LABEL",
    "OPT_IN_POD_LABEL",
    "AuditTarget",
    "Verdict",
    "audit",
    "image_checker",
    "policies_for",
    "targets",
    "verdict_results",
]

log = logging.getLogger("samplerguard.operator.audit")

OPT_IN_NAMESPACE_LABEL = "samplerguard.dev/enforce"
OPT_IN_POD_LABEL = "samplerguard.dev/inject"
#: Never audited, as never admitted-through (DESIGN.md: kube-system and our own namespace).
EXEMPT = frozenset({"kube-system"})

AnyPolicy = ClusterSamplerPolicy | SamplerPolicy


class Check(Protocol):
    """What :class:`samplerguard.supplychain.verdict.CheckResult` offers (read-only)."""

    @property
    def name(self) -> str: ...
    @property
    def passed(self) -> bool: ...
    @property
    def detail(self) -> str: ...


class Verdict(Protocol):
    """What :class:`samplerguard.supplychain.verdict.ImageVerdict` offers (read-only)."""

    @property
    def image(self) -> str: ...
    @property
    def digest(self) -> str: ...
    @property
    def policy(self) -> str: ...
    @property
    def passed(self) -> bool: ...
    @property
    def checks(self) -> tuple[Check, ...]: ...


#: (image reference, digest or None, policy) -> verdict. Raises TemporaryError when the
#: registry cannot be reached, MalformedInputError for a bad reference.
Checker = Callable[[str, str | None, AnyPolicy], Verdict]


@dataclass(frozen=True)
class AuditTarget:
    namespace: str
    pod: str
    uid: str
    owner_kind: str
    owner_name: str
    container: str
    image: str
    digest: str | None

    def resource(self) -> dict[str, str]:
        if self.owner_kind and self.owner_name:
            return {
                "apiVersion": "v1",
                "kind": "Pod",
                "namespace": self.namespace,
                "name": self.pod,
                "uid": self.uid,
                "fieldPath": f"spec.containers{{{self.container}}}",
            }
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": self.namespace,
            "name": self.pod,
            "uid": self.uid,
        }


def _digest_of(image_id: str | None) -> str | None:
    # imageID looks like "docker-pullable://repo@sha256:…" or "repo@sha256:…"
    if image_id and "@sha256:" in image_id:
        return "sha256:" + image_id.rsplit("@sha256:", 1)[1]
    return None


def targets(
    pods: Iterable[dict[str, Any]],
    namespaces: Iterable[dict[str, Any]],
    own_namespace: str,
    opt_in_label: str = OPT_IN_NAMESPACE_LABEL,
) -> list[AuditTarget]:
    """The containers the audit covers: running pods in opted-in namespaces, or opted-in pods,
    never in kube-system or samplerguard's own namespace."""
    opted = {
        (n.get("metadata") or {}).get("name")
        for n in namespaces
        if ((n.get("metadata") or {}).get("labels") or {}).get(opt_in_label) == "true"
    }
    out: list[AuditTarget] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        ns = meta.get("namespace", "")
        if ns in EXEMPT or ns == own_namespace:
            continue
        labels = meta.get("labels") or {}
        if ns not in opted and labels.get(OPT_IN_POD_LABEL) != "true":
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        owners = meta.get("ownerReferences") or [{}]
        statuses = {
            s.get("name"): s for s in ((pod.get("status") or {}).get("containerStatuses") or [])
        }
        spec = pod.get("spec") or {}
        for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
            image = c.get("image") or ""
            digest = _digest_of((statuses.get(c.get("name")) or {}).get("imageID"))
            if digest is None and "@sha256:" in image:
                digest = "sha256:" + image.rsplit("@sha256:", 1)[1]
            out.append(
                AuditTarget(
                    namespace=ns,
                    pod=meta.get("name", ""),
                    uid=meta.get("uid", ""),
                    owner_kind=owners[0].get("kind", ""),
                    owner_name=owners[0].get("name", ""),
                    container=c.get("name", ""),
                    image=image,
                    digest=digest,
                )
            )
    return out


def policies_for(
    namespace: str, namespace_labels: dict[str, str], policies: Iterable[AnyPolicy]
) -> list[AnyPolicy]:
    out: list[AnyPolicy] = []
    for p in policies:
        if isinstance(p, SamplerPolicy):
            if p.metadata.namespace == namespace:
                out.append(p)
        elif p.spec.namespace_selector is None or p.spec.namespace_selector.matches(
            namespace_labels
        ):
            out.append(p)
    return out


def _rule_of(check_name: str) -> Rule:
    head = check_name.split("/", 1)[0]
    if head in ("attestation", "attestations", "provenance"):
        return "provenance"
    if head == "golden":
        return "golden-digests"
    return "signature"  # resolve, signatures, signature/<authority>


def _policy_ref(p: AnyPolicy) -> str:
    ns = p.metadata.namespace
    return f"{ns}/{p.metadata.name}" if isinstance(p, SamplerPolicy) and ns else p.metadata.name


def verdict_results(target: AuditTarget, policy: AnyPolicy, verdict: Verdict) -> list[ReportResult]:
    """One result per rule (signature, provenance, golden-digests) that the verdict touched:
    fail if any of its checks failed, with those checks' details as the message."""
    by_rule: dict[Rule, list[Check]] = {}
    for c in verdict.checks:
        by_rule.setdefault(_rule_of(c.name), []).append(c)
    if not by_rule:
        by_rule["signature"] = []
    out = []
    for rule, checks in sorted(by_rule.items()):
        failed: list[Check | None] = [c for c in checks if not c.passed]
        if not checks and not verdict.passed:
            failed = [None]
        message = "; ".join(f"{c.name}: {c.detail}" for c in failed if c is not None) or (
            "no check ran" if not checks else f"{len(checks)} check(s) passed"
        )
        out.append(
            ReportResult.build(
                policy=_policy_ref(policy),
                rule=rule,
                result="fail" if failed else "pass",
                message=f"image {target.image} ({verdict.digest or 'unresolved'}): {message}",
                resource=target.resource(),
                image=target.image,
                digest=verdict.digest or "",
                mode=policy.spec.mode,
                origin="background-audit",
            )
        )
    return out


def audit(
    pods: Iterable[dict[str, Any]],
    namespaces: list[dict[str, Any]],
    policy_bodies: Iterable[dict[str, Any]],
    check: Checker,
    own_namespace: str,
    opt_in_label: str = OPT_IN_NAMESPACE_LABEL,
) -> list[ReportResult]:
    """One audit pass. Invalid policies are skipped (their status says why); an unreachable
    registry is an ``error`` result (fail closed: never a silent pass)."""
    policies: list[AnyPolicy] = []
    for body in policy_bodies:
        try:
            policies.append(parse_policy(body))
        except MalformedInputError:
            continue
    labels = {
        (n.get("metadata") or {}).get("name", ""): ((n.get("metadata") or {}).get("labels") or {})
        for n in namespaces
    }
    results: list[ReportResult] = []
    cache: dict[tuple[str, str | None, str], Verdict | Exception] = {}
    for t in targets(pods, namespaces, own_namespace, opt_in_label):
        for p in policies_for(t.namespace, labels.get(t.namespace, {}), policies):
            if not p.spec.image_rules_for(t.image.split("@", 1)[0]) and not p.spec.image_rules_for(
                t.image
            ):
                continue  # this policy does not govern this image
            key = (t.image, t.digest, p.key)
            if key not in cache:
                try:
                    cache[key] = check(t.image, t.digest, p)
                except (TemporaryError, MalformedInputError) as exc:
                    cache[key] = exc
            got = cache[key]
            if isinstance(got, Exception):
                results.append(
                    ReportResult.build(
                        policy=_policy_ref(p),
                        rule="signature",
                        result="error",
                        message=f"image {t.image}: could not re-verify: {got}",
                        resource=t.resource(),
                        image=t.image,
                        origin="background-audit",
                    )
                )
            else:
                results.extend(verdict_results(t, p, got))
    return results


def image_checker(verifier: Any) -> Checker:
    """Adapt a :class:`samplerguard.supplychain.verifier.ImageVerifier` to :data:`Checker`."""

    def check(image: str, digest: str | None, policy: AnyPolicy) -> Verdict:
        name = (
            f"SamplerPolicy/{policy.metadata.namespace}/{policy.metadata.name}"
            if isinstance(policy, SamplerPolicy)
            else f"ClusterSamplerPolicy/{policy.metadata.name}"
        )
        verdict: Verdict = verifier.verify(image, policy.spec, policy_name=name, digest=digest)
        return verdict

    return check
