"""Background audit: which containers, which policies, and what a changed verdict reports."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from samplerguard.errors import TemporaryError
from samplerguard.operator.audit import audit, targets
from samplerguard.supplychain.verdict import CheckResult, ImageVerdict

POLICY = yaml.safe_load(
    (Path(__file__).resolve().parents[3] / "policies" / "demo-tiny.yaml").read_text()
)
POLICY["metadata"]["uid"] = "pol-1"
IMAGE = "127.0.0.1:5000/samplerguard/tiny@sha256:" + "ab" * 32
NAMESPACES = [
    {"metadata": {"name": "ml", "labels": {"samplerguard.dev/enforce": "true"}}},
    {"metadata": {"name": "other", "labels": {}}},
    {"metadata": {"name": "kube-system", "labels": {"samplerguard.dev/enforce": "true"}}},
    {"metadata": {"name": "samplerguard", "labels": {"samplerguard.dev/enforce": "true"}}},
]


def _pod(
    ns: str, name: str, image: str = IMAGE, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": ns,
            "name": name,
            "uid": f"uid-{name}",
            "labels": labels or {},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "tiny-abc"}],
        },
        "spec": {"containers": [{"name": "sampler", "image": image}]},
        "status": {
            "phase": "Running",
            "containerStatuses": [{"name": "sampler", "imageID": f"docker-pullable://{image}"}],
        },
    }


def test_targets_follow_opt_in_and_exemptions() -> None:
    pods = [
        _pod("ml", "a"),
        _pod("other", "b"),
        _pod("other", "c", labels={"samplerguard.dev/inject": "true"}),
        _pod("kube-system", "d"),
        _pod("samplerguard", "e"),
    ]
    got = targets(pods, NAMESPACES, own_namespace="samplerguard")
    assert [(t.namespace, t.pod) for t in got] == [("ml", "a"), ("other", "c")]
    assert got[0].digest == "sha256:" + "ab" * 32


def _verdict(passed: bool, checks: list[CheckResult]) -> ImageVerdict:
    return ImageVerdict(
        image=IMAGE,
        digest="sha256:" + "ab" * 32,
        policy="ClusterSamplerPolicy/demo-tiny",
        passed=passed,
        checks=tuple(checks),
    )


def test_removed_signature_shows_as_failing_signature_result() -> None:
    def check(image: str, digest: str | None, policy: Any) -> ImageVerdict:
        assert digest == "sha256:" + "ab" * 32 and policy.metadata.name == "demo-tiny"
        return _verdict(
            False,
            [
                CheckResult("signatures", False, "no signature found (expected 1 of [demo-key])"),
                CheckResult("attestation/slsa-build", True, "builder ok"),
            ],
        )

    results = audit([_pod("ml", "a")], NAMESPACES, [POLICY], check, "samplerguard")
    by_rule = {r.rule: r for r in results}
    assert by_rule["signature"].result == "fail"
    assert "no signature found (expected 1 of [demo-key])" in by_rule["signature"].message
    assert by_rule["provenance"].result == "pass"
    assert by_rule["signature"].resources[0].name == "a"
    assert by_rule["signature"].properties["origin"] == "background-audit"


def test_unreachable_registry_is_an_error_never_a_pass() -> None:
    def check(image: str, digest: str | None, policy: Any) -> ImageVerdict:
        raise TemporaryError("registry 127.0.0.1:5000 did not answer in 5s")

    results = audit([_pod("ml", "a")], NAMESPACES, [POLICY], check, "samplerguard")
    assert [(r.rule, r.result) for r in results] == [("signature", "error")]
    assert "did not answer" in results[0].message


def test_ungoverned_images_and_invalid_policies_are_skipped() -> None:
    broken = {**POLICY, "spec": {**POLICY["spec"], "mode": "nope"}}
    calls = []

    def check(image: str, digest: str | None, policy: Any) -> ImageVerdict:
        calls.append(image)
        return _verdict(True, [CheckResult("signatures", True, "ok")])

    pods = [_pod("ml", "a", image="docker.io/library/nginx:1.27"), _pod("ml", "b")]
    results = audit(pods, NAMESPACES, [POLICY, broken], check, "samplerguard")
    assert calls == [IMAGE]
    assert [r.result for r in results] == ["pass"]


def test_the_audit_follows_the_configured_opt_in_label() -> None:
    from samplerguard.operator.audit import targets

    pod = {
        "metadata": {"name": "p", "namespace": "team", "uid": "u"},
        "spec": {"containers": [{"name": "c", "image": "r.example/a:1"}]},
        "status": {"phase": "Running"},
    }
    namespaces = [{"metadata": {"name": "team", "labels": {"example.com/opt-in": "true"}}}]
    assert targets([pod], namespaces, "samplerguard") == []
    assert targets([pod], namespaces, "samplerguard", "example.com/opt-in")
