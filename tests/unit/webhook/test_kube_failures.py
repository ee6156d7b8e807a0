"""The webhook's API reads, failing: each failure arrives as our type and is handled by it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from samplerguard.kubeapi import Forbidden, Gone, Unavailable
from samplerguard.webhook.kube import (
    KubernetesNamespaceLabels,
    KubernetesPolicySource,
    KubernetesPullSecrets,
)


class _Refusing:
    """Every call answers one status, as the kubernetes client raises it."""

    def __init__(self, status: int) -> None:
        self.status = status

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise ApiException(status=self.status, reason="Refused")

    list_cluster_custom_object = read_namespace = read_namespaced_secret = _refuse


@pytest.mark.parametrize(("status", "kind"), [(410, Gone), (403, Forbidden), (503, Unavailable)])
def test_a_failed_list_arrives_typed(status: int, kind: type[Exception]) -> None:
    source = KubernetesPolicySource(api=_Refusing(status))
    with pytest.raises(kind, match=f"list and watch samplerpolicies: API server answered {status}"):
        source._list_and_watch("samplerpolicies")
    assert not source.ready


def test_an_unreadable_namespace_counts_as_opted_in(caplog: pytest.LogCaptureFixture) -> None:
    labels = KubernetesNamespaceLabels(api=_Refusing(403))
    with caplog.at_level(logging.WARNING):
        assert asyncio.run(labels.labels("ml")) is None
    assert "read Namespace ml: API server answered 403 (Refused)" in caplog.text


def test_an_unreadable_pull_secret_is_skipped_naming_the_status_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secrets = KubernetesPullSecrets(api=_Refusing(404))
    with caplog.at_level(logging.WARNING):
        assert asyncio.run(secrets.credentials("ml", ["regcred"])) is None
    assert "pull secret ml/regcred unusable: 404 Refused" in caplog.text
