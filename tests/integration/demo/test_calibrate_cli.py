"""``samplerguard calibrate`` on the backends at hand: honest drift is measured, τ proposed."""

from __future__ import annotations

import json

import pytest

from samplerguard.cli import main


@pytest.mark.slow
def test_calibrate_proposes_a_tau_from_honest_scores(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--steps", "4", "--requests", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    pairs = out["pairs"]
    assert pairs and all(p["checks"] == 4 for p in pairs)
    same = [p for p in pairs if p["producer"] == p["verifier"]]
    assert all(p["max"] == 0.0 for p in same)  # same backend: exactly reproducible
    worst = max(p["max"] for p in pairs)
    assert out["proposed_tau"] == max(worst * 10.0, 1e-9)


def test_calibrate_refuses_nonsense_arguments() -> None:
    assert main(["calibrate", "--steps", "0"]) == 2
