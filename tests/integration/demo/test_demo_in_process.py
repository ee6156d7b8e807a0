"""The in-process demo on the bundled weights: the honest provider passes, every cheat is
caught, every control refuses, and the summary files are written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from samplerguard.cli import main


@pytest.mark.slow
def test_demo_catches_every_cheat_and_refuses_every_control(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    code = main(
        [
            "demo",
            "--in-process",
            "--out",
            str(out),
            "--steps",
            "10",
            "-k",
            "3",
            "--max-requests",
            "40",
        ]
    )
    summary = json.loads((out / "summary.json").read_text())
    verdicts = {p["provider"]: p["verdict"] for p in summary["providers"]}
    assert verdicts == {
        "honest": "accepted",
        "substituted-model": "rejected",
        "fewer-steps": "rejected",
        "guidance-off": "rejected",
        "scheduler-swap": "rejected",
        "fabricated-step": "rejected",
        "state-smuggling": "rejected",
        "output-swap": "rejected",
        "request-swap": "rejected",
        "replayed-noise": "rejected",
        "feature-caching": "rejected",
    }
    # a cheater is served until caught or a one-step fake would escape with p <= 1e-6: with
    # k = 3 of 10 steps that is at least 39 requests, so the verdicts hold by design
    assert summary["max_requests"] >= 39
    reasons = {
        p["provider"]: " ".join(c["reason"] for c in p["checks"]) for p in summary["providers"]
    }
    assert "not genuine" in reasons["state-smuggling"]
    assert "output binding" in reasons["output-swap"]
    assert "request binding" in reasons["request-swap"]
    assert "noise binding" in reasons["replayed-noise"]
    honest = summary["providers"][0]
    assert all(c["worst"] == 0.0 for c in honest["checks"])
    assert [c["verdict"] for c in summary["controls"]] == ["refused"] * 3
    assert code == 0
    assert (out / "honest.png").stat().st_size > 0
    assert "## Controls before generation" in (out / "summary.md").read_text()
