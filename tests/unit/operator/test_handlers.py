"""The kopf wiring: which resources the operator watches, and that it adds no finalizers."""

from __future__ import annotations

from typing import Any

import kopf

from samplerguard.errors import TemporaryError
from samplerguard.kubeapi import Forbidden, Unavailable
from samplerguard.operator.controller import Controller, OperatorConfig
from samplerguard.operator.handlers import _differs, _next_try, register


def test_registered_handlers(kube: Any) -> None:
    registry = kopf.OperatorRegistry()
    register(registry, Controller(OperatorConfig(), kube), peering="sg")
    watched = {(s.group, s.any_name) for s in registry._watching.get_all_selectors()}
    assert watched == {
        ("samplerguard.dev", "clustersamplerpolicies"),
        ("samplerguard.dev", "samplerpolicies"),
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations"),
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations"),
    }
    # Event handlers only: no change-tracking annotations, no finalizers that would block
    # `helm uninstall` or policy deletion while the operator is down.
    assert not list(registry._changing.get_all_handlers())
    assert not list(registry._spawning.get_all_handlers())
    activities = {
        h.activity.value if h.activity is not None else None
        for h in registry._activities.get_all_handlers()
    }
    assert {"startup", "cleanup", "authentication"} <= activities


def test_status_is_rewritten_only_when_it_changed() -> None:
    cond = {
        "type": "Ready",
        "status": "True",
        "reason": "Valid",
        "message": "m",
        "observedGeneration": 2,
    }
    same = {"conditions": [{**cond, "lastTransitionTime": "later"}]}
    assert not _differs({"conditions": [cond]}, same)
    assert _differs({"conditions": [cond]}, {"conditions": [{**cond, "observedGeneration": 3}]})
    assert _differs({}, same)


def test_background_work_retries_temporary_failures_soon_and_permanent_ones_never_early() -> None:
    forbidden = Forbidden("write Secret ml/sg-drbg", status=403, reason="Forbidden")
    assert _next_try("reconcile_drbg", forbidden, 300.0) == 300.0
    away = Unavailable("list pods", status=503, reason="ServiceUnavailable")
    assert _next_try("audit", away, 600.0) == 10.0
    assert _next_try("reconcile_certs", TemporaryError("kept changing"), 300.0) == 10.0
    assert _next_try("audit", RuntimeError("unexpected"), 600.0) == 10.0
