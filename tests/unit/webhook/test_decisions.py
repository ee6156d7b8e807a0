"""Modes, last-known-good, caching and the deadline, driven through :class:`Admission`."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any, Literal

import pytest

from samplerguard.policy import parse_policy
from samplerguard.policy.spec import SamplerPolicySpec
from samplerguard.webhook import (
    Admission,
    AdmissionRequest,
    StaticNamespaceLabels,
    StaticPolicySource,
    VerdictCache,
    WebhookConfig,
)
from tests.support.webhook import REGISTRY, RegistryDouble, policy, review, workload

SIGNED = f"{REGISTRY}/acme/sampler:1.0"
UNSIGNED = f"{REGISTRY}/acme/unsigned:1.0"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _request(obj: dict[str, Any], **kw: Any) -> AdmissionRequest:
    return AdmissionRequest.model_validate(review(obj, **kw)["request"])


def _run(adm: Admission, obj: dict[str, Any], *, mutate: bool = False, **kw: Any) -> Any:
    answer = asyncio.run(adm.review(_request(obj, **kw), mutate=mutate))
    assert answer.response is not None
    return answer.response


def _admission(
    config: WebhookConfig, registry: RegistryDouble, *policies: dict[str, object], **kw: Any
) -> Admission:
    return Admission(
        config,
        StaticPolicySource(parse_policy(p) for p in policies),
        registry,
        registry,
        namespaces=StaticNamespaceLabels({"ml": {"samplerguard.dev/enforce": "true"}}),
        **kw,
    )


def test_warn_mode_admits_with_warnings(config: WebhookConfig, registry: RegistryDouble) -> None:
    adm = _admission(config, registry, policy("soft", f"{REGISTRY}/acme/**", "warn"))
    response = _run(adm, workload("Pod", UNSIGNED))
    assert response.allowed is True
    assert response.warnings and f"image {UNSIGNED}" in response.warnings[0]
    assert "ClusterSamplerPolicy/soft" in response.warnings[0]


def test_audit_mode_admits_and_records(config: WebhookConfig, registry: RegistryDouble) -> None:
    adm = _admission(config, registry, policy("watch", f"{REGISTRY}/acme/**", "audit"))
    response = _run(adm, workload("Pod", UNSIGNED))
    assert response.allowed is True
    assert "no signature verifies" in response.audit_annotations["image-policy-audit"]
    [record] = list(adm.audit.recent)
    assert record.policy == "watch"
    assert record.rule == "signature"
    assert record.properties["image"] == UNSIGNED
    assert record.resources[0].kind == "Pod"
    # A dry run records nothing.
    _run(adm, workload("Pod", UNSIGNED), dry_run=True)
    assert len(adm.audit.recent) == 1


def test_every_policy_must_pass(config: WebhookConfig, registry: RegistryDouble) -> None:
    own = policy("own", f"{REGISTRY}/acme/sampler", namespace="ml")
    strict = policy("strict", f"{REGISTRY}/acme/**")
    adm = _admission(config, registry, own, strict)
    assert _run(adm, workload("Pod", SIGNED)).allowed is True
    registry.signed.clear()
    adm.cache = VerdictCache()
    message = _run(adm, workload("Pod", SIGNED)).status.message
    assert "policy SamplerPolicy/ml/own" in message
    assert "policy ClusterSamplerPolicy/strict" in message


def test_cluster_policy_namespace_selector(config: WebhookConfig, registry: RegistryDouble) -> None:
    other = policy("other-team", "**", selector={"team": "other"})
    adm = _admission(config, registry, other, policy("acme", f"{REGISTRY}/acme/**"))
    # "other-team" would deny busybox…, but it does not govern namespace ml.
    response = _run(adm, workload("Pod", SIGNED))
    assert response.allowed is True


def test_last_known_good_during_outage(config: WebhookConfig, registry: RegistryDouble) -> None:
    clock = Clock()
    cache = VerdictCache(fresh_ttl=60, last_known_good_ttl=600, failure_ttl=5, clock=clock)
    adm = _admission(config, registry, policy("acme", f"{REGISTRY}/acme/**"), cache=cache)
    adm.resolutions._clock = clock  # one clock for both caches
    pinned = f"{REGISTRY}/acme/sampler@{registry.tags[SIGNED]}"
    assert _run(adm, workload("Pod", pinned)).allowed is True
    other = registry.push(f"{REGISTRY}/acme/sampler:2.0")  # signed, but never verified

    registry.down = True
    clock.now += 120  # past the fresh TTL: the registry would be asked again
    response = _run(adm, workload("Pod", pinned))
    assert response.allowed is True
    assert "last-known-good" in response.warnings[0]
    # A digest verified before the outage passes; one never verified is denied.
    response = _run(adm, workload("Pod", f"{REGISTRY}/acme/sampler@{other}"))
    assert response.allowed is False
    assert "registry unreachable" in response.status.message
    assert "fail closed" in response.status.message
    # So is a tag never resolved before the outage.
    assert _run(adm, workload("Pod", f"{REGISTRY}/acme/sampler:2.0")).allowed is False
    # Past the last-known-good window, even the old pass is gone.
    clock.now += 600
    assert _run(adm, workload("Pod", pinned)).allowed is False
    registry.down = False
    assert _run(adm, workload("Pod", pinned)).allowed is True


def test_rejection_ends_last_known_good(config: WebhookConfig, registry: RegistryDouble) -> None:
    clock = Clock()
    cache = VerdictCache(fresh_ttl=60, last_known_good_ttl=600, failure_ttl=5, clock=clock)
    adm = _admission(config, registry, policy("acme", f"{REGISTRY}/acme/**"), cache=cache)
    assert _run(adm, workload("Pod", SIGNED)).allowed is True
    registry.signed.clear()  # the signature was revoked
    clock.now += 61
    assert _run(adm, workload("Pod", SIGNED)).allowed is False
    registry.down = True
    clock.now += 6
    assert _run(adm, workload("Pod", SIGNED)).allowed is False


def test_policy_change_invalidates(config: WebhookConfig, registry: RegistryDouble) -> None:
    adm = _admission(config, registry, policy("acme", f"{REGISTRY}/acme/**"))
    _run(adm, workload("Pod", SIGNED))
    calls = registry.verify_calls
    _run(adm, workload("Pod", SIGNED))
    assert registry.verify_calls == calls
    changed = policy("acme", f"{REGISTRY}/acme/**")
    changed["spec"]["verification"] = {"fraction": 0.5}  # type: ignore[index]
    adm.policies = StaticPolicySource([parse_policy(changed)])
    _run(adm, workload("Pod", SIGNED))
    assert registry.verify_calls == calls + 1


def test_concurrent_identical_checks_share_one_verification(
    config: WebhookConfig, registry: RegistryDouble
) -> None:
    slow = _Slow(registry, 0.2)
    adm = Admission(
        config,
        StaticPolicySource([parse_policy(policy("acme", f"{REGISTRY}/acme/**"))]),
        slow,
        registry,
    )

    async def many() -> list[Any]:
        reqs = [_request(workload("Pod", SIGNED)) for _ in range(20)]
        return await asyncio.gather(*(adm.review(r, mutate=False) for r in reqs))

    answers = asyncio.run(many())
    assert all(a.response.allowed for a in answers)
    assert slow.calls == 1


class _Slow:
    def __init__(self, inner: RegistryDouble, delay: float) -> None:
        self.inner, self.delay, self.calls = inner, delay, 0

    def verify(
        self,
        image_ref: str,
        spec: SamplerPolicySpec,
        *,
        policy_name: str,
        digest: str | None = None,
        client: object = None,
        policy_namespace: str | None = None,
    ) -> Any:
        self.calls += 1
        time.sleep(self.delay)
        return self.inner.verify(image_ref, spec, policy_name=policy_name, digest=digest)


def test_deadline_denies(registry: RegistryDouble, config: WebhookConfig) -> None:
    from dataclasses import replace

    quick = replace(config, deadline=0.2)
    adm = Admission(
        quick,
        StaticPolicySource([parse_policy(policy("acme", f"{REGISTRY}/acme/**"))]),
        _Slow(registry, 1.0),
        registry,
    )
    response = _run(adm, workload("Pod", SIGNED))
    assert response.allowed is False
    assert response.status.code == 503
    assert "could not finish checking within 0.2s" in response.status.message


@pytest.mark.parametrize("action", ["deny", "warn", "allow"])
def test_no_match_action(
    config: WebhookConfig, registry: RegistryDouble, action: Literal["deny", "warn", "allow"]
) -> None:
    from dataclasses import replace

    adm = _admission(
        replace(config, no_match=action), registry, policy("acme", f"{REGISTRY}/acme/**")
    )
    response = _run(adm, workload("Pod", "busybox"))
    assert response.allowed is (action != "deny")
    assert bool(response.warnings) is (action == "warn")


def test_pod_policy_annotation(config: WebhookConfig, registry: RegistryDouble) -> None:
    adm = _admission(
        config,
        registry,
        policy("acme", f"{REGISTRY}/acme/**"),
        policy("injected", f"{REGISTRY}/samplerguard/**"),
    )
    pod = workload(
        "Pod", SIGNED, annotations={"samplerguard.dev/policy": "ClusterSamplerPolicy/nope"}
    )
    response = _run(adm, pod, mutate=True)
    assert response.allowed is False
    assert "does not govern this namespace" in response.status.message


def test_status_writes_keep_cached_verdicts(
    config: WebhookConfig, registry: RegistryDouble
) -> None:
    def cluster_policy(generation: int, rv: str) -> Any:
        body = policy("acme", f"{REGISTRY}/acme/**")
        body["metadata"] = {
            "name": "acme",
            "uid": "u-1",
            "generation": generation,
            "resourceVersion": rv,
        }
        return parse_policy(body)

    adm = _admission(config, registry)
    adm.policies = StaticPolicySource([cluster_policy(1, "10")])
    _run(adm, workload("Pod", SIGNED))
    calls = registry.verify_calls
    adm.policies = StaticPolicySource([cluster_policy(1, "11")])  # the operator wrote status
    _run(adm, workload("Pod", SIGNED))
    assert registry.verify_calls == calls
    adm.policies = StaticPolicySource([cluster_policy(2, "12")])  # the spec changed
    _run(adm, workload("Pod", SIGNED))
    assert registry.verify_calls == calls + 1


def test_updates_neither_inject_nor_repin_existing_images(
    config: WebhookConfig, registry: RegistryDouble
) -> None:
    adm = _admission(
        config,
        registry,
        policy("acme", f"{REGISTRY}/acme/**"),
        policy("injected", f"{REGISTRY}/samplerguard/**"),
    )
    old = workload("Pod", SIGNED)  # created before samplerguard: a tag, no sidecar
    new = workload("Pod", SIGNED, labels={"touched": "yes"})
    response = _run(adm, new, mutate=True, operation="UPDATE", old=old)
    assert response.allowed is True
    assert response.patch is None
    # An image this update introduces is pinned.
    changed = workload("Pod", f"{REGISTRY}/acme/sampler:1.0", f"{REGISTRY}/samplerguard/hook:0.1")
    response = _run(adm, changed, mutate=True, operation="UPDATE", old=old)
    ops = json.loads(base64.b64decode(response.patch))
    assert [o["path"] for o in ops] == ["/spec/containers/1/image"]


def test_pod_opt_out_of_injection_is_still_validated(
    config: WebhookConfig, registry: RegistryDouble
) -> None:
    adm = _admission(config, registry, policy("acme", f"{REGISTRY}/acme/**"))
    labels = {"samplerguard.dev/inject": "false"}
    response = _run(adm, workload("Pod", SIGNED, labels=labels), mutate=True)
    ops = json.loads(base64.b64decode(response.patch))
    assert [o["path"] for o in ops] == ["/spec/containers/0/image"]  # pinned, not injected
    assert _run(adm, workload("Pod", UNSIGNED, labels=labels), mutate=True).allowed is False


def test_the_configured_opt_in_label_decides(
    config: WebhookConfig, registry: RegistryDouble
) -> None:
    """The chart's optInLabel selects the namespaces the API server sends; the webhook must
    read the same label, or it would wave those pods through unchecked."""
    from dataclasses import replace

    custom = replace(config, opt_in_label="example.com/verified-sampling")
    labels = StaticNamespaceLabels(
        {"ml": {"samplerguard.dev/enforce": "true"}, "team": {custom.opt_in_label: "true"}}
    )
    adm = Admission(
        custom,
        StaticPolicySource([parse_policy(policy("acme", f"{REGISTRY}/acme/**"))]),
        registry,
        registry,
        namespaces=labels,
    )
    assert _run(adm, workload("Pod", UNSIGNED), namespace="team").allowed is False
    assert _run(adm, workload("Pod", UNSIGNED), namespace="ml").allowed is True
