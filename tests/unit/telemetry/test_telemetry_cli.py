"""``samplerguard drift fit|check`` over audit logs and plain records, and the stream reader."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from samplerguard.cli import main
from samplerguard.errors import MalformedInputError
from samplerguard.policy.report import ReportResult, append_audit_log
from samplerguard.telemetry import DriftBaseline
from samplerguard.telemetry.streams import read_request_records


def _audit_log(path: Path, rng: np.random.Generator, n: int, *, cfg_mean: float) -> None:
    results = []
    for i, cfg in enumerate(np.clip(rng.normal(cfg_mean, 1.0, n), 1, 15)):
        common: dict[str, Any] = dict(
            policy="default",
            guidance=float(cfg),
            steps=30,
            sampler="euler",
            schedule="karras",
            requestId=f"req-{cfg_mean}-{i}",
        )
        # Two results per request (two rules): the request must count once.
        results.append(ReportResult.build(rule="recipe", result="pass", **common))
        results.append(ReportResult.build(rule="trajectory-recheck", result="pass", **common))
    # A result about an image carries no recipe and is skipped.
    results.append(ReportResult.build(policy="default", rule="signature", result="pass"))
    append_audit_log(path, results)


def test_read_request_records_from_an_audit_log(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    _audit_log(log, np.random.default_rng(0), 5, cfg_mean=7.0)
    records = list(read_request_records(log))
    assert len(records) == 5
    assert set(records[0]) == {"guidance_scale", "steps", "sampler", "schedule"}
    assert records[0]["steps"] == 30 and records[0]["schedule"] == "karras"
    assert isinstance(records[0]["guidance_scale"], float)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"guidance_scale": 7.0}\n{"guid', "audit.jsonl:2: not JSON"),
        ("[1, 2]\n", "audit.jsonl:1: expected a JSON object"),
        ('{"hello": "world"}\n', "neither an audit-log result nor a request record"),
        ('{"policy": "p", "result": "pass", "properties": []}\n', "'properties' must be an"),
        ('{"steps": ' + "1" * 70000 + "}\n", "line longer than 65536 bytes"),
    ],
)
def test_read_request_records_refuses_bad_lines(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text(content)
    with pytest.raises(MalformedInputError, match=match):
        list(read_request_records(path))


def test_fit_then_check_honest_and_shifted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(1)
    honest, live_ok, live_bad = (tmp_path / n for n in ("h.jsonl", "ok.jsonl", "bad.jsonl"))
    _audit_log(honest, rng, 3000, cfg_mean=7.0)
    _audit_log(live_ok, rng, 500, cfg_mean=7.0)
    _audit_log(live_bad, rng, 300, cfg_mean=9.0)
    baseline = tmp_path / "baseline.json"

    assert main(["drift", "fit", "--from", str(honest), "--out", str(baseline)]) == 0
    assert DriftBaseline.load(baseline).numeric["guidance_scale"].total == 3000

    assert main(["drift", "check", "--baseline", str(baseline), "--from", str(live_ok)]) == 0
    assert "500 requests, 0 drift alert(s)" in capsys.readouterr().err

    code = main(["drift", "check", "--baseline", str(baseline), "--from", str(live_bad), "--json"])
    assert code == 1
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[0]["feature"] == "guidance_scale"
    assert lines[0]["kind"] == "distribution-shift"
    assert lines[0]["request"] <= 200


def test_check_as_a_real_process(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    records = [{"guidance_scale": 7.0 + (i % 5) / 10, "schedule": "karras"} for i in range(200)]
    DriftBaseline.fit(records).save(baseline)
    live = tmp_path / "live.jsonl"
    live.write_text(json.dumps({"guidance_scale": 7.2, "schedule": "unheard-of"}) + "\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "samplerguard",
            "drift",
            "check",
            "--baseline",
            str(baseline),
            "--from",
            str(live),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    assert "request 1: schedule 'unheard-of' is not in the golden baseline" in proc.stdout


def test_unusable_inputs_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "baseline.json"
    bad.write_text('{"kind": "nope"}')
    live = tmp_path / "live.jsonl"
    live.write_text('{"guidance_scale": 7.0}\n')
    assert main(["drift", "check", "--baseline", str(bad), "--from", str(live)]) == 2
    assert "drift baseline kind is 'nope'" in capsys.readouterr().err
    missing = tmp_path / "missing.jsonl"
    assert main(["drift", "fit", "--from", str(missing), "--out", str(bad)]) == 2
    DriftBaseline.fit([{"guidance_scale": 7.0}]).save(bad)
    assert (
        main(["drift", "check", "--baseline", str(bad), "--from", str(live), "--window", "1"]) == 2
    )
    assert "bad detector setting: window must be" in capsys.readouterr().err
