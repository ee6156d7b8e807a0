"""Which τ a re-check is held to: calibrated pairs, the fallback, requireSameBuild, and the
calibration entries a policy refuses."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from samplerguard.policy.spec import VerificationRule
from samplerguard.policy.tolerance import select_tolerance

MINE = {"torch": "2.13.0+cpu", "device": "cpu", "capability": "AVX512", "threads": 2, "cuda": None}


def entry(producer: dict[str, str], verifier: dict[str, str], tau: float, **kw: Any) -> Any:
    return {
        "producer": producer,
        "verifier": verifier,
        "tau": tau,
        "honestSamples": 6000,
        "falseRejection": 1e-3,
        **kw,
    }


def rule(**kw: Any) -> VerificationRule:
    return VerificationRule.model_validate(kw)


AVX2 = entry({"capability": "AVX2"}, {"capability": "AVX512"}, 2e-5, weightNoiseMin=1e-4)
GPU = entry(
    {"device": "cuda", "capability": "9.0"}, {"device": "cpu", "capability": "AVX512"}, 4e-5
)


def test_the_same_build_is_exact() -> None:
    t = select_tolerance(rule(calibration=[AVX2]), {**MINE, "threads": 1}, MINE)
    assert t.exact and t.tau == 0.0 and t.why == "exact (same build)"


def test_the_entry_covering_the_pair_applies_and_says_so() -> None:
    r = rule(calibration=[GPU, AVX2])
    t = select_tolerance(r, {**MINE, "capability": "AVX2"}, MINE)
    assert (t.tau, t.entry) == (2e-5, 1)
    assert "calibrated for capability 'AVX2' -> 'AVX512'" in t.why and "entry 1" in t.why
    gpu = select_tolerance(r, {**MINE, "device": "cuda", "capability": "9.0"}, MINE)
    assert (gpu.tau, gpu.entry) == (4e-5, 0)


def test_an_entry_must_name_every_differing_field() -> None:
    # capability matches the AVX2 entry, but the torch version differs too: not covered
    declared = {**MINE, "capability": "AVX2", "torch": "2.5.0"}
    t = select_tolerance(rule(calibration=[AVX2], tau=1e-5), declared, MINE)
    assert t.entry is None and t.tau == 1e-5 and "policy tau" in t.why and "torch" in t.why


def test_the_tightest_matching_entry_wins() -> None:
    loose = entry(
        {"capability": "AVX2", "torch": "2.13.0+cpu"},
        {"capability": "AVX512", "torch": "2.13.0+cpu"},
        8e-5,
    )
    t = select_tolerance(rule(calibration=[loose, AVX2]), {**MINE, "capability": "AVX2"}, MINE)
    assert (t.tau, t.entry) == (2e-5, 1)


def test_the_fallback_is_the_tightest_calibrated_tau_unless_set() -> None:
    declared = {**MINE, "torch": "2.5.0"}
    assert select_tolerance(rule(), declared, MINE).tau == 1e-4
    t = select_tolerance(rule(calibration=[GPU, AVX2]), declared, MINE)
    assert t.tau == 2e-5 and "the tightest calibrated tau" in t.why
    assert select_tolerance(rule(calibration=[AVX2], tau=1e-6), declared, MINE).tau == 1e-6


def test_require_same_build_refuses_an_uncovered_build_but_not_a_calibrated_one() -> None:
    r = rule(calibration=[AVX2], requireSameBuild=True)
    refused = select_tolerance(r, {**MINE, "torch": "2.5.0"}, MINE)
    assert refused.tau is None and "requireSameBuild" in refused.why
    assert select_tolerance(r, {**MINE, "capability": "AVX2"}, MINE).tau == 2e-5
    missing = select_tolerance(r, None, MINE)
    assert missing.tau is None and "no build fingerprint declared" in missing.why


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ({"calibration": [entry({"gpuVibes": "x"}, {"gpuVibes": "y"}, 1e-5)]}, "does not have"),
        ({"calibration": [entry({"threads": "1"}, {"threads": "2"}, 1e-5)]}, "never differ"),
        (
            {"calibration": [entry({"capability": "AVX2"}, {"capability": "AVX2"}, 1e-5)]},
            "same build",
        ),
        ({"calibration": [entry({"capability": "AVX2"}, {"device": "cpu"}, 1e-5)]}, "same fields"),
        (
            {"calibration": [entry({"capability": "AVX2"}, {"capability": "X"}, float("nan"))]},
            "finite",
        ),
        (
            {"calibration": [entry({"capability": "AVX2"}, {"capability": "X"}, 0.5)]},
            "less than or equal",
        ),
        (
            {"calibration": [entry({"capability": "AVX2"}, {"capability": "X"}, 0.0)]},
            "greater than",
        ),
        ({"calibration": [{**AVX2, "tau": 2e-4}]}, "would accept that provider"),
        ({"calibration": [AVX2, {**AVX2, "tau": 1e-5}]}, "repeat the pair"),
        ({"calibration": [AVX2], "tau": 1e-4}, "exceeds the tightest calibrated tau"),
        ({"calibration": [{**AVX2, "honestSamples": 0}]}, "greater than or equal"),
        ({"calibration": [{**AVX2, "producer": {"capability": "x" * 200}}]}, "at most 128"),
    ],
)
def test_hostile_calibration_entries_are_refused(body: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        rule(**body)
