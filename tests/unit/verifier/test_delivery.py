"""Delivery to the operator: a refused post stays in the journal and goes out next round."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from samplerguard.policy.report import ReportResult, read_audit_log
from samplerguard.policy.report_client import ResultsClient
from samplerguard.verifier.discovery import StaticDiscovery
from samplerguard.verifier.journal import Journal
from samplerguard.verifier.service import Verifier


class _Checker:
    challenge: Any = None


def test_undelivered_results_are_retried_until_the_operator_takes_them(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("operator-token-123456")
    answers = [503, 503, 200]
    bodies: list[bytes] = []

    def handler(req: httpx.Request) -> httpx.Response:
        bodies.append(req.content)
        assert req.headers["authorization"] == "Bearer operator-token-123456"
        status = answers.pop(0) if answers else 200
        return httpx.Response(status, json={"recorded": 1} if status == 200 else {})

    client = ResultsClient(
        "https://operator.test/v1/results",
        token_file=token,
        transport=httpx.MockTransport(handler),
        deadline=0.0,  # one attempt per delivery
    )
    journal = Journal(tmp_path / "journal.jsonl")
    v = Verifier(
        discovery=StaticDiscovery([]),
        checker=_Checker(),  # type: ignore[arg-type]
        journal=journal,
        token=lambda: "x",
        audit_log=tmp_path / "audit.jsonl",
        results_client=client,
    )
    r = ReportResult.build(policy="p", rule="recipe", result="pass", trajectoryId="t-1")
    journal.record("pod/t-1", "ab" * 32, [r.to_wire()])
    assert v.redeliver() == 0 and "pod/t-1" in journal.undelivered()
    assert v.redeliver() == 0
    assert v.redeliver() == 1
    assert journal.undelivered() == {}
    assert b'"trajectoryId":"t-1"' in bodies[-1]
    # the local audit log got it on every attempt (at least once, never zero times)
    assert {x.properties["trajectoryId"] for x in read_audit_log(tmp_path / "audit.jsonl")} == {
        "t-1"
    }
    journal.close()


def test_a_request_id_committed_again_under_another_root_is_a_failure(tmp_path: Path) -> None:
    """A sidecar that evicted a judged trajectory and committed its request id again (a
    replay) is caught: the listing's root differs from the journaled one."""
    from samplerguard.policy.spec import SamplerPolicySpec
    from samplerguard.verifier.check import Checker
    from samplerguard.verifier.client import SidecarClient
    from samplerguard.verifier.discovery import Target

    def _client(root: str) -> SidecarClient:
        """A sidecar whose listing holds one trajectory, ``t-1``, committed under ``root``."""

        def handler(req: httpx.Request) -> httpx.Response:
            assert req.url.path == "/v1/trajectories"
            return httpx.Response(
                200, json={"trajectories": [{"id": "t-1", "seq": 2, "root": root}]}
            )

        return SidecarClient("http://sidecar", lambda: "x", transport=httpx.MockTransport(handler))

    journal = Journal(tmp_path / "journal.jsonl")
    checker = Checker(SamplerPolicySpec(), "p", references=None)  # type: ignore[arg-type]
    v = Verifier(
        discovery=StaticDiscovery([]),
        checker=checker,
        journal=journal,
        token=lambda: "x",
        audit_log=tmp_path / "audit.jsonl",
    )
    target = Target(url="http://sidecar", uid="pod")
    journal.record("pod/t-1", "ab" * 32, [])
    assert v._audit(target, _client("ab" * 32), None) == 0  # judged before, same root
    assert not (tmp_path / "audit.jsonl").exists()
    v._audit(target, _client("cd" * 32), None)
    v._audit(target, _client("cd" * 32), None)  # reported once
    fails = [x for x in read_audit_log(tmp_path / "audit.jsonl") if x.result == "fail"]
    assert len(fails) == 1 and "committed again with root cdcdcd" in fails[0].message
    journal.close()


def test_a_drbg_claim_the_verifier_cannot_check_is_a_failure() -> None:
    """A provider declaring DRBG noise must let the verifier regenerate it: without an escrow,
    or with one this verifier cannot open, the claim fails; framework noise has nothing to
    check."""
    import pytest

    from samplerguard.errors import VerificationError
    from samplerguard.policy.spec import SamplerPolicySpec
    from samplerguard.verifier.check import Checker

    class _Commitment:
        def __init__(self, rng: str) -> None:
            self.recipe = {"rng": rng}
            self.predicate: dict[str, Any] = {}
            self.request_id = "r-1"

    checker = Checker(SamplerPolicySpec(), "p", references=None)  # type: ignore[arg-type]
    with pytest.raises(VerificationError, match="declares 'ctr-drbg' noise but the sidecar"):
        checker._noise({}, _Commitment("ctr-drbg"))  # type: ignore[arg-type]
    with pytest.raises(VerificationError, match="holds no escrow key"):
        checker._noise({"seedEscrow": {"x": 1}}, _Commitment("ctr-drbg"))  # type: ignore[arg-type]
    assert checker._noise({}, _Commitment("framework")) is None  # type: ignore[arg-type]
