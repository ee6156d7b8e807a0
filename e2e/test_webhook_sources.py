"""The webhook's cluster side against a real API server: the policy watch and namespace labels.

Creates, edits and deletes one uniquely named ClusterSamplerPolicy that governs no image.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from samplerguard.webhook.kube import KubernetesNamespaceLabels, KubernetesPolicySource
from samplerguard.webhook.policies import spec_version


def _until(what: str, check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def kube() -> Iterator[None]:
    from kubernetes import config

    config.load_kube_config()
    yield


def test_policy_watch_follows_create_status_spec_delete(kube: None) -> None:
    from kubernetes import client

    api = client.CustomObjectsApi()
    name = f"webhook-watch-{uuid.uuid4().hex[:8]}"
    body = {
        "apiVersion": "samplerguard.dev/v1alpha1",
        "kind": "ClusterSamplerPolicy",
        "metadata": {"name": name},
        "spec": {"mode": "audit", "images": []},
    }
    args = ("samplerguard.dev", "v1alpha1", "clustersamplerpolicies")
    source = KubernetesPolicySource(watch_timeout=30)
    source.start()
    try:
        _until("the first list", lambda: source.ready)

        def mine() -> list[object]:
            return [p for p in source.snapshot().policies if p.metadata.name == name]

        api.create_cluster_custom_object(*args, body)
        _until("the ADDED event", lambda: bool(mine()))
        [first] = mine()
        assert first.metadata.uid and first.metadata.generation == 1  # type: ignore[attr-defined]
        # A status write moves resourceVersion, not the spec version (the cache key).
        api.patch_cluster_custom_object_status(*args, name, {"status": {"lastVerdict": "probe"}})
        _until(
            "the status MODIFIED event",
            lambda: (
                mine()[0].metadata.resource_version  # type: ignore[attr-defined]
                != first.metadata.resource_version
            ),
        )  # type: ignore[attr-defined]
        assert spec_version(mine()[0]) == spec_version(first)  # type: ignore[arg-type]
        api.patch_cluster_custom_object(*args, name, {"spec": {"mode": "warn"}})
        _until("the spec MODIFIED event", lambda: mine()[0].spec.mode == "warn")  # type: ignore[attr-defined]
        assert spec_version(mine()[0]) != spec_version(first)  # type: ignore[arg-type]
    finally:
        api.delete_cluster_custom_object(*args, name)
        _until("the DELETED event", lambda: not mine())
        source.stop()


def test_namespace_labels(kube: None) -> None:
    labels = KubernetesNamespaceLabels()
    found = asyncio.run(labels.labels("default"))
    assert found is not None and found["kubernetes.io/metadata.name"] == "default"
    assert asyncio.run(labels.labels(f"missing-{uuid.uuid4().hex[:8]}")) is None
