"""``samplerguard demo`` as users run it: a real sidecar and verifier process, the providers
through the hook, the driver as the consumer's gateway signing a ticket per request. The
honest provider passes, every cheat is rejected, and the seed shopper gets no seed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from samplerguard.cli import main
from samplerguard.demo.providers import CHEATS


@pytest.mark.slow
def test_the_live_demo_rejects_every_cheat_and_refuses_seed_shopping(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--steps", "10", "-k", "3", "--max-requests", "40"])
    summary = json.loads((out / "summary.json").read_text())
    verdicts = {p["provider"]: p["verdict"] for p in summary["providers"]}
    assert verdicts == {
        "honest": "accepted",
        **dict.fromkeys(CHEATS, "rejected"),
        "seed-shopping": "rejected",
    }
    assert summary["all_cheaters_caught"] and code == 0
    policy = (out / "policy.yaml").read_text()
    assert "tickets:" in policy and "demo-gateway" in policy
    shopper = summary["providers"][-1]
    reasons = [c["reason"] for c in shopper["checks"]]
    assert len(reasons) == 4
    assert all("requires a request ticket" in r for r in reasons[:3]), reasons
    assert "already committed" in reasons[3], reasons
    # every committed request of the others carried the gateway's ticket: the honest one
    # passed its re-checks at exactly 0
    honest = summary["providers"][0]
    assert honest["checks"] and all(
        c["worst"] == 0.0 for c in honest["checks"] if c["step"] is not None
    )
