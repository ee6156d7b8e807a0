"""The operator's kopf identity and peering priority: no user-database lookup (the image's uid
has no passwd entry) and no tie between replicas (equal priorities pause every peer)."""

from __future__ import annotations

import getpass
from typing import Any

import kopf
import pytest
from kubernetes import config as kconfig

from samplerguard.cli import build_parser
from samplerguard.operator import run as operator_run
from samplerguard.operator.identity import operator_identity, peering_priority


def _no_passwd_entry() -> str:
    raise KeyError("getpwuid(): uid not found: 65532")


def test_identity_comes_from_the_pod_name_not_the_user_database(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(getpass, "getuser", _no_passwd_entry)
    assert operator_identity({"POD_NAME": "sg-operator-7d9f-abcde"}) == "sg-operator-7d9f-abcde"
    assert operator_identity({"POD_ID": "pod-b"}) == "pod-b"
    assert operator_identity({}).startswith("samplerguard-operator@")


def test_replicas_get_distinct_stable_priorities() -> None:
    names = [f"samplerguard-operator-5c8d7-{i:05d}" for i in range(200)]
    priorities = [peering_priority(n) for n in names]
    assert len(set(priorities)) == len(names)
    assert all(1 <= p <= 2**31 - 2 for p in priorities)
    assert peering_priority(names[0]) == priorities[0]
    with pytest.raises(ValueError, match="must not be empty"):
        peering_priority("")


def test_the_cli_hands_kopf_an_identity_and_a_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(getpass, "getuser", _no_passwd_entry)
    monkeypatch.setattr(kconfig, "load_incluster_config", lambda: None)
    monkeypatch.setattr(kopf, "run", lambda **kw: seen.update(kw))
    monkeypatch.setattr(operator_run, "setup_service_metrics", lambda name: None)
    monkeypatch.setenv("POD_NAME", "samplerguard-operator-abc-12345")
    args = build_parser().parse_args(["operator", "--peering", "samplerguard", "--no-audit"])
    assert args._run(args) == 0
    assert seen["identity"] == "samplerguard-operator-abc-12345"
    assert seen["priority"] == peering_priority("samplerguard-operator-abc-12345")
    assert seen["peering_name"] == "samplerguard"

    seen.clear()
    args = build_parser().parse_args(["operator", "--no-audit", "--peering-priority", "7"])
    args._run(args)
    assert seen["priority"] == 7
    assert seen["standalone"] is True


def test_the_audit_can_be_scoped_to_namespaces(monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator sharing the cluster with another installation audits only its own pods."""
    from samplerguard.operator import audit as audit_mod
    from samplerguard.operator.controller import Controller
    from samplerguard.operator.kube import Kube

    captured: dict[str, Any] = {}
    audited: list[list[str]] = []
    monkeypatch.setattr(kconfig, "load_incluster_config", lambda: None)
    monkeypatch.setattr(kopf, "run", lambda **kw: None)
    monkeypatch.setattr(operator_run, "setup_service_metrics", lambda name: None)
    monkeypatch.setattr(operator_run, "register_handlers", lambda *a, **kw: captured.update(kw))
    pods = [{"metadata": {"namespace": ns, "name": f"p-{ns}"}} for ns in ("mine", "theirs")]
    monkeypatch.setattr(Kube, "list_pods", lambda self: pods)
    monkeypatch.setattr(Kube, "list_namespaces", lambda self: [])
    monkeypatch.setattr(Kube, "list_policies", lambda self, plural: [])
    monkeypatch.setattr(Controller, "record", lambda self, results: len(results))

    def fake_audit(pods: list[dict[str, Any]], *_: Any) -> list[Any]:
        audited.append([p["metadata"]["name"] for p in pods])
        return []

    monkeypatch.setattr(audit_mod, "audit", fake_audit)
    for extra, want in ((["--audit-namespace", "mine"], ["p-mine"]), ([], ["p-mine", "p-theirs"])):
        args = build_parser().parse_args(["operator", *extra])
        args._run(args)
        captured["auditor"]()
        assert audited[-1] == want
