"""The verifier's status API: a round costs work, so only the verifier's own token starts one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from samplerguard.errors import TemporaryError
from samplerguard.verifier.discovery import StaticDiscovery
from samplerguard.verifier.journal import Journal
from samplerguard.verifier.serve import create_app
from samplerguard.verifier.service import Verifier

TOKEN = "verifier-token-0123456789"


class _Checker:
    challenge: Any = None


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
