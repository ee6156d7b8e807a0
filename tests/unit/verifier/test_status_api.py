"""The verifier's status API: a round costs work, so only the verifier's own token starts one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from samplerguard.errors import TemporaryError
from samplerguard.policy.report import ReportResult
from samplerguard.verifier.discovery import StaticDiscovery
from samplerguard.verifier.journal import Journal
from samplerguard.verifier.serve import create_app
from samplerguard.verifier.service import Verifier

TOKEN = "verifier-token-0123456789"


class _Checker:
    challenge: Any = None

    def _result(self, target: Any, rule: Any, result: Any, message: str) -> ReportResult:
        return ReportResult.build(policy="p", rule=rule, result=result, message=message)


def _verifier(tmp_path: Path, token: Any) -> Verifier:
    return Verifier(
        discovery=StaticDiscovery([]),
        checker=_Checker(),  # type: ignore[arg-type]
        journal=Journal(tmp_path / "journal.jsonl"),
        token=token,
    )


@pytest.mark.parametrize(
    "header", [None, "Bearer", "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x"]
)
def test_a_round_needs_the_verifiers_own_token(tmp_path: Path, header: str | None) -> None:
    headers = {} if header is None else {"Authorization": header}
    with TestClient(create_app(_verifier(tmp_path, lambda: TOKEN))) as client:
        resp = client.post("/v1/rounds", headers=headers)
        assert resp.status_code == 401 and resp.json() == {"detail": "unauthorized"}
        assert client.get("/v1/status").status_code == 200  # the open routes stay open
        ok = client.post("/v1/rounds", headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and ok.json()["judged"] == 0


def test_an_unreadable_token_file_is_503_not_a_traceback(tmp_path: Path) -> None:
    def gone() -> str:
        raise TemporaryError("token file /x is unreadable (No such file or directory)")

    with TestClient(create_app(_verifier(tmp_path, gone)), raise_server_exceptions=False) as c:
        resp = c.post("/v1/rounds", headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 503 and resp.json() == {"detail": "authentication unavailable"}


def test_a_sidecar_answering_garbage_fails_its_own_audit_not_the_round(tmp_path: Path) -> None:
    """Real HTTP servers on loopback: one sends non-JSON, one JSON nested 100k deep, one
    trickles past the deadline; every one is reported, and the round reaches all of them."""
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    bodies = {"/garbage": b"<html>", "/nested": b"[" * 100_000 + b"]" * 100_000}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            kind = self.path.split("/")[1]
            body = bodies.get("/" + kind, b" " * 10)
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            if kind == "slow":
                for _ in range(10):
                    time.sleep(0.3)
                    try:
                        self.wfile.write(b" ")
                    except OSError:  # the verifier cut it at its deadline
                        return
                return
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    urls = [f"{base}/garbage", f"{base}/nested", f"{base}/slow"]
    verifier = Verifier(
        discovery=StaticDiscovery(urls),
        checker=_Checker(),  # type: ignore[arg-type]
        journal=Journal(tmp_path / "journal.jsonl"),
        token=lambda: TOKEN,
        timeout=1.0,
    )
    try:
        assert verifier.run_round() == 0
    finally:
        server.shutdown()
        server.server_close()
    status = verifier.stats.sidecars
    assert set(status) == set(urls)
    assert "non-JSON" in status[urls[0]]
    assert "nested too deeply" in status[urls[1]]
    assert "timed out after 1.0s" in status[urls[2]]


def test_a_pod_whose_sidecar_is_an_impostor_fails_once_and_is_never_asked(
    tmp_path: Path,
) -> None:
    """A refused target (its sidecar container runs another image) is one failure, recorded
    once across rounds; nothing is fetched from it (its URL goes nowhere)."""
    from samplerguard.verifier.discovery import Target

    impostor = Target(
        url="http://127.0.0.1:9",
        uid="uid-impostor",
        name="impostor",
        namespace="ml",
        refusal="its samplerguard-sidecar container runs 'registry.acme/fake:1'",
    )

    class _Found:
        def targets(self) -> list[Target]:
            return [impostor]

    verifier = Verifier(
        discovery=_Found(),
        checker=_Checker(),  # type: ignore[arg-type]
        journal=Journal(tmp_path / "journal.jsonl"),
        token=lambda: TOKEN,
        timeout=1.0,
    )
    assert verifier.run_round() == 0
    assert verifier.run_round() == 0
    assert verifier.stats.failed == 1
    assert verifier.stats.sidecars == {}  # never contacted
    recorded = (tmp_path / "journal.jsonl").read_text()
    assert "fake:1" in recorded and '"fail"' in recorded
