"""Kubernetes discovery: every injected pod, however it opted in, once its sidecar is Ready."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from samplerguard.errors import TemporaryError
from samplerguard.kubeapi import Forbidden, Unavailable
from samplerguard.verifier.discovery import KubernetesDiscovery


def _pod(
    name: str,
    *,
    labels: dict[str, str] | None = None,
    injected: bool = True,
    sidecar_ready: bool = True,
    native: bool = True,
    ip: str | None = "10.244.0.7",
) -> client.V1Pod:
    sidecar = client.V1ContainerStatus(
        name="samplerguard-sidecar",
        ready=sidecar_ready,
        image="s",
        image_id="",
        restart_count=0,
    )
    app = client.V1ContainerStatus(name="app", ready=True, image="a", image_id="", restart_count=0)
    return client.V1Pod(
        metadata=client.V1ObjectMeta(
            name=name,
            namespace="ml",
            uid=f"uid-{name}",
            labels=labels,
            annotations={"samplerguard.dev/injected": "true"} if injected else None,
        ),
        status=client.V1PodStatus(
            phase="Running",
            pod_ip=ip,
            init_container_statuses=[sidecar] if native else None,
            container_statuses=[app] if native else [app, sidecar],
        ),
    )


class FakeCoreV1:
    def __init__(self, pods: list[client.V1Pod]) -> None:
        self.pods = pods
        self.queries: list[dict[str, Any]] = []

    def list_pod_for_all_namespaces(self, **query: Any) -> client.V1PodList:
        self.queries.append(query)
        return client.V1PodList(items=self.pods)

    def list_namespaced_pod(self, namespace: str, **query: Any) -> client.V1PodList:
        self.queries.append({"namespace": namespace, **query})
        return client.V1PodList(items=self.pods)


def test_namespace_opted_in_pods_are_found_by_the_injection_annotation() -> None:
    api = FakeCoreV1(
        [
            _pod("by-namespace"),
            _pod("by-label", labels={"samplerguard.dev/inject": "true"}, native=False),
            _pod("not-injected", injected=False),
        ]
    )
    targets = KubernetesDiscovery(api=api).targets()
    assert [t.name for t in targets] == ["by-namespace", "by-label"]
    assert targets[0].url == "http://10.244.0.7:9471"
    assert api.queries == [{"field_selector": "status.phase=Running"}]


def test_a_pod_whose_sidecar_is_not_ready_waits_for_a_later_round() -> None:
    api = FakeCoreV1([_pod("starting", sidecar_ready=False), _pod("no-ip", ip=None)])
    assert KubernetesDiscovery(api=api).targets() == []


def test_a_label_selector_and_a_namespace_narrow_the_listing() -> None:
    api = FakeCoreV1([_pod("a")])
    KubernetesDiscovery(api=api, namespace="ml", label_selector="team=x").targets()
    assert api.queries == [
        {"namespace": "ml", "field_selector": "status.phase=Running", "label_selector": "team=x"}
    ]


def _refusing(status: int) -> FakeCoreV1:
    class Refusing(FakeCoreV1):
        def list_pod_for_all_namespaces(self, **query: Any) -> client.V1PodList:
            raise client.exceptions.ApiException(status=status, reason="Refused")

    return Refusing([])


def test_an_unanswered_listing_is_temporary() -> None:
    with pytest.raises(Unavailable, match="list injected pods: API server answered 503") as exc:
        KubernetesDiscovery(api=_refusing(503)).targets()
    assert isinstance(exc.value, TemporaryError)


def test_a_forbidden_listing_is_permanent() -> None:
    with pytest.raises(Forbidden, match="list injected pods: API server answered 403") as exc:
        KubernetesDiscovery(api=_refusing(403)).targets()
    assert not isinstance(exc.value, TemporaryError)
    assert (exc.value.status, exc.value.reason) == (403, "Refused")
