"""The sidecar's admission in-process: policy, tenant, integrity, escrow, telemetry."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from safetensors.torch import save_file

from samplerguard.commitment.digest import module_digest
from samplerguard.commitment.request import request_digest
from samplerguard.commitment.ticket import issue_ticket, ticket_digest
from samplerguard.sidecar.config import SidecarConfig
from samplerguard.sidecar.enforce import RequestRefusedError
from samplerguard.sidecar.ingest import StartRequest
from samplerguard.sidecar.service import Sidecar


def _policy(
    path: Path,
    digest: str,
    mode: str = "enforce",
    escrow: bool = False,
    tickets: dict[str, Any] | None = None,
) -> Path:
    rng: dict[str, Any] = {"mode": "framework", "escrow": escrow}
    if tickets is not None:
        rng["tickets"] = tickets
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "samplerguard.dev/v1alpha1",
                "kind": "ClusterSamplerPolicy",
                "metadata": {"name": "p"},
                "spec": {
                    "mode": mode,
                    "recipe": {
                        "samplers": ["euler"],
                        "steps": {"min": 1, "max": 50},
                        "cfg": {"min": 1, "max": 8},
                    },
                    "goldenDigests": {"modelWeights": [digest]},
                    "rng": rng,
                },
            }
        )
    )
    return path


@pytest.fixture
def model(tmp_path: Path) -> tuple[Path, str]:
    m = torch.nn.Linear(2, 2)
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    return path, module_digest(m)


def _sidecar(tmp_path: Path, policy: Path, model: Path, **kw: Any) -> Sidecar:
    token = tmp_path / "token"
    token.write_text("a-token-long-enough-123")
    cfg = SidecarConfig(
        socket=tmp_path / "s.sock",
        openings_dir=tmp_path / "openings",
        token_file=token,
        policy=str(policy),
        model_files=(model,),
        **kw,
    )
    sc = Sidecar(cfg)
    sc.integrity.measure()
    return sc


def _start(digest: str, **recipe: Any) -> StartRequest:
    r = {
        "sampler": "euler",
        "scheduler_class": "EulerDiscreteScheduler",
        "scheduler_config": {},
        "steps": 10,
        "guidance_scale": 3.0,
        "model": {"digest": digest},
    }
    r.update(recipe)
    return StartRequest("r-1", "tenant-a", "framework", r, None, None)


def test_admission_accepts_and_builds_the_predicate(tmp_path: Path, model: Any) -> None:
    path, digest = model
    sc = _sidecar(tmp_path, _policy(tmp_path / "p.yaml", digest), path)
    try:
        d = sc._admit(_start(digest))
        assert d.admission.verdict == "accept"
        assert d.predicate["policy"] == "p"
        assert d.predicate["integrity"]["modelWeights"] == [digest]
        assert d.predicate["hashBeacon"].startswith("sha256:")
    finally:
        sc.ingest.close()


def test_tenant_escrow_and_warn_mode(tmp_path: Path, model: Any) -> None:
    path, digest = model
    sc = _sidecar(
        tmp_path, _policy(tmp_path / "p.yaml", digest, escrow=True), path, tenant="tenant-b"
    )
    try:
        with pytest.raises(RequestRefusedError, match="not this pod's tenant"):
            sc._admit(_start(digest))
    finally:
        sc.ingest.close()
    sc = _sidecar(tmp_path, _policy(tmp_path / "p.yaml", digest, mode="warn", escrow=True), path)
    try:
        d = sc._admit(_start(digest, guidance_scale=11.0))
        assert d.admission.verdict == "quarantine"
        assert any("CFG range" in r for r in d.admission.reasons)
        assert any("requires a seed escrow" in r for r in d.admission.reasons)
    finally:
        sc.ingest.close()


def test_request_tickets_in_enforce_and_audit_mode(tmp_path: Path, model: Any) -> None:
    """Under ``rng.tickets``: a request with the gateway's ticket is admitted and its predicate
    binds the ticket; one without (or with a ticket for another request) is refused under
    enforce, before a seed is issued as well as at START, and quarantined under audit."""
    path, digest = model
    gateway = Ed25519PrivateKey.generate()
    pem = gateway.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    rule = {"signers": [{"name": "edge", "publicKey": pem.decode()}]}
    params = {"requestId": "r-1", "tenant": "tenant-a", "steps": 10, "guidanceScale": 3.0}
    bound = request_digest(params)
    ticket = issue_ticket(gateway, request_id="r-1", tenant="tenant-a", request_digest=bound)
    other = issue_ticket(gateway, request_id="r-2", tenant="tenant-a")
    sc = _sidecar(tmp_path, _policy(tmp_path / "p.yaml", digest, tickets=rule), path)
    try:
        d = sc._admit(dataclasses.replace(_start(digest, request=bound), ticket=ticket))
        assert d.admission.verdict == "accept"
        assert d.predicate["requestTicket"]["digest"] == ticket_digest(ticket)
        sc.check_ticket(ticket, "tenant-a", "r-1")  # a seed may be issued
        for shown, message in [(None, "carries none"), (other, "issued for request 'r-2'")]:
            with pytest.raises(RequestRefusedError, match=message) as err:
                sc.check_ticket(shown, "tenant-a", "r-1")
            assert err.value.checks == ("ticket",)
            with pytest.raises(RequestRefusedError, match=message):
                sc._admit(dataclasses.replace(_start(digest, request=bound), ticket=shown))
        swapped = request_digest({**params, "guidanceScale": 4.0})
        with pytest.raises(RequestRefusedError, match="binds other request parameters"):
            sc._admit(dataclasses.replace(_start(digest, request=swapped), ticket=ticket))
    finally:
        sc.ingest.close()
    sc = _sidecar(tmp_path, _policy(tmp_path / "p.yaml", digest, "audit", tickets=rule), path)
    try:
        sc.check_ticket(None, "tenant-a", "r-1")  # audit: the seed is issued, START is marked
        d = sc._admit(_start(digest))
        assert d.admission.verdict == "quarantine"
        assert "ticket" in d.admission.checks
        assert "requestTicket" not in d.predicate
    finally:
        sc.ingest.close()


def test_integrity_mismatch_refuses_every_new_request(tmp_path: Path, model: Any) -> None:
    path, digest = model
    sc = _sidecar(tmp_path, _policy(tmp_path / "p.yaml", digest), path)
    try:
        save_file({"weight": torch.ones(2, 2), "bias": torch.ones(2)}, str(path))
        sc.integrity.measure()
        assert sc.alerts and "runtime integrity mismatch" in sc.alerts[-1]
        assert not sc.gate.ready
        with pytest.raises(RequestRefusedError, match="runtime integrity mismatch"):
            sc._admit(_start(digest))
    finally:
        sc.ingest.close()


def test_an_edited_policy_applies_without_a_restart(tmp_path: Path, model: Any) -> None:
    path, digest = model
    policy = _policy(tmp_path / "p.yaml", digest)
    sc = _sidecar(tmp_path, policy, path)
    try:
        with pytest.raises(RequestRefusedError, match="sampler 'ddim' is not allowed"):
            sc._admit(_start(digest, sampler="ddim", scheduler_class="DDIMScheduler"))
        assert not sc.refresh_policy()  # unchanged
        body = yaml.safe_load(policy.read_text())
        body["spec"]["recipe"]["samplers"] = ["euler", "ddim"]
        body["spec"]["verification"] = {"retention": "2h"}
        policy.write_text(yaml.safe_dump(body))
        assert sc.refresh_policy()
        assert (
            sc._admit(
                _start(digest, sampler="ddim", scheduler_class="DDIMScheduler")
            ).admission.verdict
            == "accept"
        )
        assert sc.store.retention == 7200
        # gone: fail closed until it is back
        policy.unlink()
        assert not sc.refresh_policy()
        with pytest.raises(RequestRefusedError, match=r"p\.yaml is unusable") as err:
            sc._admit(_start(digest))
        assert err.value.checks == ("policy",)
        policy.write_text(yaml.safe_dump(body))
        assert sc.refresh_policy()
        assert sc._admit(_start(digest)).admission.verdict == "accept"
    finally:
        sc.stop()
