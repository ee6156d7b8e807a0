"""Failed checks reach the operator's real results endpoint (TLS, bearer token) off the
admission path, so denials become PolicyReport entries and Events; an unreachable operator
loses results (counted), never an admission."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from samplerguard.errors import MalformedInputError
from samplerguard.policy.report import ReportResult
from samplerguard.policy.report_client import ResultsClient
from samplerguard.webhook.admission import _forwarder
from samplerguard.webhook.audit import AuditTrail, ResultsForwarder
from samplerguard.webhook.config import WebhookConfig
from tests.unit.operator.test_report_client import Server  # the real TLS ingest server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    yield s
    s.stop()


def _denial(i: int) -> ReportResult:
    return ReportResult.build(
        policy="prod",
        rule="signature",
        result="fail",
        message=f"image reg/acme/s:{i}: no valid signature (policy prod)",
        resource={"apiVersion": "v1", "kind": "Pod", "namespace": "ml", "name": f"p{i}"},
    )


def _wait(pred: object, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():  # type: ignore[operator]
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_denials_are_posted_to_the_operator(server: Server) -> None:
    client = ResultsClient(
        f"https://127.0.0.1:{server.port}/v1/results",
        token_file=server.tmp / "token",
        ca_file=server.tmp / "ca.crt",
    )
    forward = ResultsForwarder(client)
    trail = AuditTrail(None, forward=forward)
    trail.record([_denial(1), _denial(2)])
    _wait(lambda: len(server.got) == 2)
    assert [r.resources[0].name for r in server.got] == ["p1", "p2"]
    assert server.got[0].result == "fail" and server.got[0].rule == "signature"
    forward.close()
    assert forward.sent == 2 and forward.dropped == 0


def test_unreachable_operator_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    client = ResultsClient(
        "https://127.0.0.1:9/v1/results", token_file=tmp_path / "token", timeout=0.5, deadline=0.5
    )
    forward = ResultsForwarder(client, capacity=2)
    start = time.monotonic()
    for i in range(20):
        forward.submit([_denial(i)])
    assert time.monotonic() - start < 0.5  # submit never waits for the network
    _wait(lambda: forward.dropped >= 18, timeout=30)
    forward.close()
    assert forward.sent == 0


def test_report_url_needs_a_token_file() -> None:
    config = WebhookConfig(
        host="127.0.0.1", port=0, certfile="c", keyfile="k", report_url="https://op/v1/results"
    )
    with pytest.raises(MalformedInputError, match="needs --report-token-file"):
        _forwarder(config)
