"""Canary suites on the bundled model, scored by the bundled classifier."""

from __future__ import annotations

import pytest
import torch

from samplerguard.models.digits import CLASSIFIER_FILE, MODEL_FILE, load_classifier, load_unet
from samplerguard.policy.spec import SamplerPolicySpec
from samplerguard.verifier.canary import run_canary_suite

pytestmark = pytest.mark.skipif(
    not (MODEL_FILE.exists() and CLASSIFIER_FILE.exists()), reason="bundled weights missing"
)


def _spec(*cases: dict[str, object]) -> SamplerPolicySpec:
    return SamplerPolicySpec.model_validate(
        {
            "recipe": {
                "samplers": ["euler"],
                "steps": {"min": 10, "max": 10},
                "cfg": {"min": 3, "max": 3},
            },
            "verification": {"canaries": list(cases), "canaryMinAccuracy": 0.7},
        }
    )


def test_honest_classes_pass_and_a_shifted_seed_vector_fails() -> None:
    torch.set_num_threads(1)
    spec = _spec(
        {"classLabel": 3, "samples": 12}, {"classLabel": 3, "seedShift": 3.0, "samples": 12}
    )
    honest, shifted = run_canary_suite(spec, load_unet(), load_classifier())
    assert honest.passed and honest.accuracy >= 0.7, honest.message
    assert not shifted.passed
    assert "< canaryMinAccuracy 0.70" in shifted.message


def test_a_drop_against_the_baseline_is_a_regression() -> None:
    torch.set_num_threads(1)
    spec = _spec({"classLabel": 7, "samples": 8})
    [o] = run_canary_suite(spec, load_unet(), load_classifier(), baseline={"class=7,shift=0": 2.0})
    assert not o.passed
    assert "regressed from baseline 2.00" in o.message
