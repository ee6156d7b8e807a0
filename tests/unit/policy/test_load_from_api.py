"""A policy reference read from the API server: what each failure of the read means."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from samplerguard.errors import PolicyError, TemporaryError
from samplerguard.kubeapi import Unavailable
from samplerguard.policy.load import load_policy


class _Refusing:
    """CustomObjectsApi answering every read with one status."""

    def __init__(self, status: int) -> None:
        self.status = status

    def get_cluster_custom_object(self, *args: Any, **kwargs: Any) -> Any:
        raise ApiException(status=self.status, reason="Refused")

    get_namespaced_custom_object = get_cluster_custom_object


def test_a_missing_policy_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="policy ClusterSamplerPolicy/q does not exist"):
        load_policy("ClusterSamplerPolicy/q", api=_Refusing(404))


def test_a_forbidden_read_is_permanent_not_a_retry() -> None:
    with pytest.raises(PolicyError, match="policy SamplerPolicy/ml/q cannot be read: ") as exc:
        load_policy("SamplerPolicy/ml/q", api=_Refusing(403))
    assert "API server answered 403 (Refused)" in str(exc.value)
    assert not isinstance(exc.value, TemporaryError)


def test_an_api_server_away_is_temporary() -> None:
    with pytest.raises(Unavailable, match="read policy ClusterSamplerPolicy/q: API server answ"):
        load_policy("ClusterSamplerPolicy/q", api=_Refusing(503))


def test_a_malformed_reference_is_a_policy_error() -> None:
    with pytest.raises(PolicyError, match="is not ClusterSamplerPolicy/<name> or SamplerPoli"):
        load_policy("ClusterSamplerPolicy/a/b", api=_Refusing(404))
