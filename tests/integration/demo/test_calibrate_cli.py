"""``samplerguard calibrate``: honest drift per pair of builds, τ and its false rejection, and
entries the policy accepts as they are printed."""

from __future__ import annotations

import json

import pytest

from samplerguard.cli import main
from samplerguard.cli.calibrate import (
    clopper_pearson_upper,
    configurations,
    request_false_rejection,
)
from samplerguard.policy.spec import VerificationRule


@pytest.mark.slow
def test_calibrate_prints_entries_the_policy_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    levels = [c.name for c in configurations() if c.capability is not None]
    if "cpu-avx2" not in levels:
        pytest.skip("no lower CPU kernel level that re-checks here")
    argv = ["calibrate", "--steps", "2", "--requests", "1", "--json"]
    assert main([*argv, "--configs", "onednn-off,cpu-avx2"]) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert set(doc) == {"calibration"} and len(doc["calibration"]) == 1
    (entry,) = doc["calibration"]
    assert entry["producer"] == {"capability": "AVX2"} and entry["honestSamples"] == 2
    assert 0 < entry["tau"] < entry["weightNoiseMin"]
    VerificationRule.model_validate({"calibration": doc["calibration"]})
    # the reproduced pair re-checks exactly and gets no entry; progress went to stderr
    assert "onednn-off" in captured.err and "nothing (reproduced)" in captured.err
    assert "[2/2] cpu-avx2: re-checking" in captured.err


def test_false_rejection_is_measured_over_the_drawn_windows_with_its_bound() -> None:
    honest = [[1e-6, 2e-6, 5e-6, 1e-6]]
    measured, bound = request_false_rejection(honest, 3e-6, k=1, window=1)
    assert measured == pytest.approx(0.25) and 0.25 < bound <= 1.0
    measured, bound = request_false_rejection(honest, 1e-5, k=2, window=1)
    assert measured == 0.0 and bound == 1.0  # 2 x 0.53, capped
    assert clopper_pearson_upper(0, 3000) == pytest.approx(1 - 0.05 ** (1 / 3000), rel=1e-6)
    assert clopper_pearson_upper(5, 5) == 1.0


def test_calibrate_refuses_nonsense_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", "--steps", "0"]) == 2
    assert main(["calibrate", "--configs", "quantum"]) == 2
    assert "unknown configurations ['quantum']" in capsys.readouterr().out
