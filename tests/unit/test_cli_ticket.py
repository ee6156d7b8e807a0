"""``samplerguard ticket``: a gateway key whose printed block a policy accepts, and tickets from
it that the policy's signers verify; unusable input exits 2 with the reason."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from samplerguard.cli import main
from samplerguard.commitment.request import request_digest
from samplerguard.commitment.ticket import TicketSigners, verify_ticket
from samplerguard.policy.spec import TicketRule


def test_keygen_then_issue_verifies_under_the_printed_policy_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "gateway.key"
    assert main(["ticket", "keygen", "--key", str(key), "--name", "edge"]) == 0
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    block = yaml.safe_load(capsys.readouterr().out)
    rule = TicketRule.model_validate(block["rng"]["tickets"])
    assert rule.signers[0].name == "edge"
    params = {"requestId": "r-9", "tenant": "acme", "steps": 20, "guidanceScale": 7.0}
    (tmp_path / "req.json").write_text(json.dumps(params))
    args = ["ticket", "issue", "--key", str(key), "--tenant", "acme"]
    assert main([*args, "--request", str(tmp_path / "req.json"), "--lifetime", "60"]) == 0
    ticket = json.loads(capsys.readouterr().out)
    signers = TicketSigners.from_pems(
        tuple(s.public_key for s in rule.signers), rule.max_lifetime_seconds
    )
    got = verify_ticket(
        ticket, signers, tenant="acme", request_id="r-9", request_digest=request_digest(params)
    )
    assert got.expires_at - got.issued_at == 60
    # without a request file: a fresh request id, no parameters bound
    assert main(args) == 0
    bare = json.loads(capsys.readouterr().out)
    assert bare != ticket


def test_unusable_input_exits_2_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "gateway.key"
    assert main(["ticket", "keygen", "--key", str(key)]) == 0
    before = key.read_bytes()
    assert main(["ticket", "keygen", "--key", str(key)]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert key.read_bytes() == before
    (tmp_path / "req.json").write_text(
        json.dumps({"requestId": "r", "tenant": "other", "steps": 1, "guidanceScale": 1})
    )
    issue = ["ticket", "issue", "--key", str(key), "--tenant", "acme"]
    cases = {
        "not an unencrypted PEM private key": ["--key", str(tmp_path / "req.json")],
        "is for tenant 'other'": ["--request", str(tmp_path / "req.json")],
        "cannot read": ["--request", str(tmp_path / "missing.json")],
        "1..86400": ["--lifetime", "0"],
    }
    for message, extra in cases.items():
        assert main([*issue, *extra]) == 2, message
        assert message in capsys.readouterr().err
