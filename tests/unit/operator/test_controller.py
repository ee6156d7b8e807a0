"""The reconcilers against an in-memory API server that enforces resourceVersion."""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from samplerguard.errors import TemporaryError
from samplerguard.operator.controller import Controller, OperatorConfig
from samplerguard.policy.report import ReportResult

Validate = Callable[[dict[str, Any]], list[str]]
POLICIES = Path(__file__).resolve().parents[3] / "policies"


def _controller(kube: Any, tmp_path: Path | None = None) -> Controller:
    cfg = OperatorConfig(namespace="sg", extra_ip_sans=("127.0.0.1",), cert_dir=tmp_path)
    return Controller(cfg, kube)


def test_certs_then_both_ca_bundles(kube: Any, tmp_path: Path) -> None:
    kube.add_webhook("mutating", "samplerguard-mutating", ["inject.samplerguard.dev"])
    kube.add_webhook(
        "validating",
        "samplerguard-validating",
        ["pods.samplerguard.dev", "workloads.samplerguard.dev"],
    )
    c = _controller(kube, tmp_path)
    assert c.reconcile_certs()
    state, _ = kube.get_secret("sg", "samplerguard-webhook-tls")
    enc = base64.b64encode(state.ca_bundle).decode()
    for cfg in kube.webhooks.values():
        assert all(h["clientConfig"]["caBundle"] == enc for h in cfg["webhooks"])
    # the out-of-cluster webhook's files
    assert (tmp_path / "tls.crt").read_bytes() == state.data["tls.crt"]
    assert oct((tmp_path / "tls.key").stat().st_mode & 0o777) == "0o600"
    # Idempotent: a second pass writes nothing.
    writes = kube.writes
    assert not c.reconcile_certs()
    assert kube.writes == writes


def test_helm_upgrade_wiping_the_bundle_is_repaired(kube: Any) -> None:
    kube.add_webhook("mutating", "samplerguard-mutating", ["inject.samplerguard.dev"])
    kube.add_webhook("validating", "samplerguard-validating", ["pods.samplerguard.dev"])
    c = _controller(kube)
    c.reconcile_certs()
    secret_before = kube.objects[("Secret", "sg", "samplerguard-webhook-tls")]["data"]
    # helm upgrade re-applies the configuration from the template: caBundle gone
    kube.add_webhook("validating", "samplerguard-validating", ["pods.samplerguard.dev"])
    assert c.reconcile_certs()
    assert kube.webhooks[("validating", "samplerguard-validating")]["webhooks"][0]["clientConfig"][
        "caBundle"
    ]
    # the Secret (not Helm-managed) and so the CA are unchanged
    assert kube.objects[("Secret", "sg", "samplerguard-webhook-tls")]["data"] == secret_before


def test_rotation_from_the_controller(kube: Any) -> None:
    kube.add_webhook("mutating", "samplerguard-mutating", ["inject.samplerguard.dev"])
    c = _controller(kube)
    c.reconcile_certs()
    old, _ = kube.get_secret("sg", "samplerguard-webhook-tls")
    assert c.reconcile_certs(now=dt.datetime.now(dt.UTC) + dt.timedelta(days=70))
    new, _ = kube.get_secret("sg", "samplerguard-webhook-tls")
    assert new.data["tls.crt"] != old.data["tls.crt"]
    leaf = x509.load_pem_x509_certificate(new.data["tls.crt"])
    assert leaf.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=150)


def test_record_survives_lost_races(kube: Any, crd_validate: Validate) -> None:
    c = _controller(kube)
    r = ReportResult.build(
        policy="demo-tiny",
        rule="trajectory-recheck",
        result="fail",
        message="relL2 0.3 > tau",
        resource={"apiVersion": "v1", "kind": "Pod", "namespace": "ml", "name": "p", "uid": "u"},
        rel_l2=0.3,
        tau=1e-4,
        step=2,
    )
    kube.conflicts_left = 3  # three other replicas write first
    assert c.record([r, r]) == 2
    body = kube.get_report("ml", "samplerguard")
    assert crd_validate(body) == []
    assert body["summary"]["fail"] == 2 and body["results"][0]["properties"]["count"] == "2"
    # A Warning Event on the pod, rate limited to one.
    assert [e["reason"] for e in kube.events] == ["VerificationFailed"]
    assert kube.events[0]["involvedObject"]["name"] == "p"
    assert c.refresh_cluster_report()
    cluster = kube.get_report(None, "samplerguard-cluster")
    assert crd_validate(cluster) == [] and cluster["summary"]["fail"] == 2
    assert not c.refresh_cluster_report()  # nothing new
    # The policy's Verdict column.
    assert kube.status_patches == [
        (None, "demo-tiny", {"lastVerdict": "fail 2/2 (trajectory-recheck)"})
    ]


def test_verdicts_per_policy_kind(kube: Any) -> None:
    c = _controller(kube)
    ok = ReportResult.build(
        policy="ml/sdxl-base",
        rule="recipe",
        result="pass",
        resource={"kind": "Pod", "namespace": "ml", "name": "p"},
    )
    c.record([ok, ok, ok])
    assert c.flush_verdicts() == 1
    assert kube.status_patches == [("ml", "sdxl-base", {"lastVerdict": "pass 3/3"})]
    assert c.flush_verdicts() == 0


def test_unreachable_sidecars_are_errors_not_failures(kube: Any) -> None:
    c = _controller(kube)
    resource = {"kind": "Pod", "namespace": "ml", "name": "p"}
    ok = ReportResult.build(
        policy="demo-tiny", rule="trajectory-recheck", result="pass", resource=resource
    )
    unreachable = ReportResult.build(
        policy="demo-tiny",
        rule="trajectory-recheck",
        result="error",
        message="cannot reach the sidecar: connection refused",
        resource=resource,
    )
    c.record([ok, unreachable, unreachable, ok])
    c.flush_verdicts()
    assert kube.status_patches == [(None, "demo-tiny", {"lastVerdict": "pass 2/2, 2 errors"})]


def test_record_gives_up_with_a_temporary_error(kube: Any) -> None:
    c = _controller(kube)
    kube.conflicts_left = 100
    r = ReportResult.build(
        policy="p",
        rule="recipe",
        result="pass",
        resource={"kind": "Pod", "namespace": "x", "name": "y"},
    )
    with pytest.raises(TemporaryError, match="kept conflicting"):
        c.record([r])


def test_invalid_cluster_policy_reaches_report_and_event(kube: Any) -> None:
    c = _controller(kube)
    body = yaml.safe_load((POLICIES / "edm.yaml").read_text())
    body["metadata"]["uid"] = "x"
    body["spec"]["recipe"]["samplers"] = ["warp_drive"]
    ev = c.reconcile_policy(body)
    assert not ev.ok and "unknown sampler(s) ['warp_drive']" in ev.message
    c.refresh_cluster_report()
    cluster = kube.get_report(None, "samplerguard-cluster")
    assert cluster["results"][0]["rule"] == "policy" and cluster["results"][0]["result"] == "fail"
    assert kube.events[0]["reason"] == "PolicyInvalid"
    c.forget_policy(body)
    c.refresh_cluster_report()
    assert kube.get_report(None, "samplerguard-cluster")["results"] == []


def test_cert_listeners_hear_each_new_leaf_once(kube: Any) -> None:
    c = _controller(kube)
    seen: list[bytes] = []
    c.cert_listeners.append(lambda st: seen.append(st.data["tls.crt"]))
    c.reconcile_certs()
    c.reconcile_certs()
    c.observe_certs()
    assert len(seen) == 1
    # Another replica (the leader) rotates: this one picks the new leaf up by observing.
    other = _controller(kube)
    other.reconcile_certs(now=dt.datetime.now(dt.UTC) + dt.timedelta(days=70))
    c.observe_certs()
    assert len(seen) == 2 and seen[1] != seen[0]


def test_cert_dir_switches_atomically(kube: Any, tmp_path: Path) -> None:
    c = _controller(kube, tmp_path)
    c.reconcile_certs()
    first = (tmp_path / "tls.crt").read_bytes()
    assert (tmp_path / "tls.crt").is_symlink() and (tmp_path / "..data").is_symlink()
    c.reconcile_certs(now=dt.datetime.now(dt.UTC) + dt.timedelta(days=70))
    second = (tmp_path / "tls.crt").read_bytes()
    assert second != first
    state, _ = kube.get_secret("sg", "samplerguard-webhook-tls")
    assert (tmp_path / "tls.key").read_bytes() == state.data["tls.key"]
    # only the live generation is kept
    generations = [
        p
        for p in tmp_path.iterdir()
        if p.name.startswith("..") and p.is_dir() and not p.is_symlink()
    ]
    assert len(generations) == 1
