"""The operator's DRBG Secrets: created when absent, kept consistent, never logged, never
overwritten where that would lose a key still in use."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from samplerguard.errors import SamplerGuardError, TemporaryError
from samplerguard.operator.controller import Controller, OperatorConfig
from samplerguard.operator.drbg import DrbgSecrets, reconcile_drbg

CFG = DrbgSecrets(
    namespace="samplerguard",
    escrow_secret="sg-escrow",
    drbg_secret="sg-drbg",
    namespaces=("ml", "vision", "ml"),
)


def _data(kube: Any, ns: str, name: str) -> dict[str, bytes]:
    obj = kube.objects[("Secret", ns, name)]
    return {k: base64.b64decode(v) for k, v in obj["data"].items()}


def test_first_run_makes_the_key_pair_and_one_independent_secret_per_namespace(
    kube: Any,
) -> None:
    written = reconcile_drbg(kube, CFG)
    assert written == ["samplerguard/sg-escrow", "ml/sg-drbg", "vision/sg-drbg"]
    escrow = _data(kube, "samplerguard", "sg-escrow")
    key = serialization.load_pem_private_key(escrow["escrow-private.pem"], password=None)
    assert isinstance(key, X25519PrivateKey)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert escrow["escrow-public.pem"] == public
    masters = []
    for ns in ("ml", "vision"):
        data = _data(kube, ns, "sg-drbg")
        assert set(data) == {"master-secret", "escrow-public.pem"}  # never the private key
        assert data["escrow-public.pem"] == public
        assert len(bytes.fromhex(data["master-secret"].decode())) == 32
        assert kube.objects[("Secret", ns, "sg-drbg")]["type"] == "Opaque"
        masters.append(data["master-secret"])
    assert masters[0] != masters[1]
    # A second pass finds everything right and writes nothing.
    writes = kube.writes
    assert reconcile_drbg(kube, CFG) == []
    assert kube.writes == writes


def test_a_restarted_operator_keeps_the_existing_secrets(kube: Any) -> None:
    reconcile_drbg(kube, CFG)
    before = {k: dict(v) for k, v in kube.objects.items()}
    reconcile_drbg(kube, CFG)  # as a new replica or a restarted pod would
    assert kube.objects == before


def test_a_damaged_master_secret_is_replaced_and_a_stale_public_key_refreshed(kube: Any) -> None:
    reconcile_drbg(kube, CFG)
    obj = kube.objects[("Secret", "ml", "sg-drbg")]
    obj["data"]["master-secret"] = base64.b64encode(b"short").decode()
    obj["data"]["escrow-public.pem"] = base64.b64encode(b"not a key").decode()
    assert reconcile_drbg(kube, CFG) == ["ml/sg-drbg"]
    data = _data(kube, "ml", "sg-drbg")
    assert len(bytes.fromhex(data["master-secret"].decode())) == 32
    assert (
        data["escrow-public.pem"] == _data(kube, "samplerguard", "sg-escrow")["escrow-public.pem"]
    )


def test_an_unreadable_private_key_is_reported_never_overwritten(kube: Any) -> None:
    reconcile_drbg(kube, CFG)
    obj = kube.objects[("Secret", "samplerguard", "sg-escrow")]
    obj["data"]["escrow-private.pem"] = base64.b64encode(b"-----BEGIN junk").decode()
    damaged = dict(obj["data"])
    with pytest.raises(TemporaryError, match=r"sg-escrow: escrow-private\.pem is not an X25519"):
        reconcile_drbg(kube, CFG)
    assert kube.objects[("Secret", "samplerguard", "sg-escrow")]["data"] == damaged


def test_a_namespace_without_access_does_not_stop_the_others(kube: Any) -> None:
    kube.forbidden_namespaces.add("ml")
    with pytest.raises(SamplerGuardError, match="ml: write Secret ml/sg-drbg: API server ") as exc:
        reconcile_drbg(kube, CFG)
    # a 403 stays a 403 until the installation changes: not a temporary error to retry soon
    assert not isinstance(exc.value, TemporaryError)
    assert "secrets is forbidden in namespace ml" in str(exc.value)
    assert ("Secret", "vision", "sg-drbg") in kube.objects
    assert ("Secret", "ml", "sg-drbg") not in kube.objects


def test_lost_races_are_retried(kube: Any) -> None:
    kube.conflicts_left = 2
    reconcile_drbg(kube, CFG)
    assert {("Secret", "ml", "sg-drbg"), ("Secret", "samplerguard", "sg-escrow")} <= set(
        kube.objects
    )


def test_no_secret_reaches_the_log(kube: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        reconcile_drbg(kube, CFG)
    text = caplog.text
    assert "sg-drbg" in text and "a new master secret" in text
    for ns, name in (("ml", "sg-drbg"), ("vision", "sg-drbg"), ("samplerguard", "sg-escrow")):
        for value in _data(kube, ns, name).values():
            for line in value.decode().splitlines():
                if "-----" not in line:
                    assert line not in text


def test_the_controller_manages_them_only_when_configured(kube: Any) -> None:
    assert Controller(OperatorConfig(), kube).reconcile_drbg() == []
    assert kube.objects == {}
    cfg = OperatorConfig(escrow_secret="sg-escrow", drbg_secret="d", drbg_namespaces=("ml",))
    assert Controller(cfg, kube).reconcile_drbg() == ["samplerguard/sg-escrow", "ml/d"]


def test_a_lost_drbg_secret_made_again_is_a_warning_event_on_the_secret(kube: Any) -> None:
    cfg = OperatorConfig(
        escrow_secret="sg-escrow", drbg_secret="sg-drbg", drbg_namespaces=("ml", "vision")
    )
    controller = Controller(cfg, kube)
    controller.reconcile_drbg()
    # first sight: a Normal Event per namespace, on its Secret
    assert [(e["type"], e["reason"]) for e in kube.events] == [
        ("Normal", "DrbgSecretCreated"),
        ("Normal", "DrbgSecretCreated"),
    ]
    assert [e["involvedObject"]["namespace"] for e in kube.events] == ["ml", "vision"]
    controller.reconcile_drbg()
    assert len(kube.events) == 2  # nothing written, nothing said

    lost = _data(kube, "ml", "sg-drbg")["master-secret"]
    del kube.objects[("Secret", "ml", "sg-drbg")]
    assert controller.reconcile_drbg() == ["ml/sg-drbg"]
    event = kube.events[-1]
    assert (event["type"], event["reason"]) == ("Warning", "DrbgSecretRecreated")
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Secret",
        "namespace": "ml",
        "name": "sg-drbg",
    }
    assert "was lost and is made again" in event["message"]
    assert "escrows already made still open" in event["message"]
    new = _data(kube, "ml", "sg-drbg")["master-secret"]
    for secret in (lost, new):
        assert secret.decode() not in event["message"]

    # a damaged one replaced: a Warning of its own
    obj = kube.objects[("Secret", "vision", "sg-drbg")]
    obj["data"]["master-secret"] = base64.b64encode(b"short").decode()
    controller.reconcile_drbg()
    assert kube.events[-1]["reason"] == "DrbgSecretReplaced"
    assert kube.events[-1]["type"] == "Warning"


def test_events_are_best_effort_and_can_be_turned_off(kube: Any) -> None:
    cfg = OperatorConfig(escrow_secret="e", drbg_secret="d", drbg_namespaces=("ml",), events=False)
    assert Controller(cfg, kube).reconcile_drbg() == ["samplerguard/e", "ml/d"]
    assert kube.events == []

    def refuse(*_: Any, **__: Any) -> None:
        raise PermissionError("events is forbidden")

    kube.create_event = refuse
    del kube.objects[("Secret", "ml", "d")]
    on = OperatorConfig(escrow_secret="e", drbg_secret="d", drbg_namespaces=("ml",))
    assert Controller(on, kube).reconcile_drbg() == ["ml/d"]  # the Secret is made regardless
