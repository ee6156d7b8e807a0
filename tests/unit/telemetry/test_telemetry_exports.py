"""The façade is a promise (as httpx pins its own): these names, no more, no fewer."""

from __future__ import annotations

import samplerguard.telemetry as telemetry


def test_exported_members() -> None:
    assert sorted(telemetry.__all__) == sorted(
        [
            "GUIDANCE_BUCKETS",
            "REL_L2_BUCKETS",
            "STEPS_BUCKETS",
            "BaselineError",
            "CategoricalBaseline",
            "DriftAlert",
            "DriftBaseline",
            "DriftDetector",
            "DriftScore",
            "HistogramBaseline",
            "MetricName",
            "Metrics",
            "MetricsConfig",
            "RequestObservation",
            "SamplerTelemetry",
            "TelemetryConfigError",
            "compare_categorical",
            "compare_histogram",
            "histogram_views",
            "setup_metrics",
        ]
    )
    for name in telemetry.__all__:
        member = getattr(telemetry, name)
        if isinstance(member, tuple):
            assert all(isinstance(b, float) for b in member)
        else:
            assert member.__module__.startswith("samplerguard.telemetry.")


def test_telemetry_imports_no_torch() -> None:
    """The operator and webhook may use telemetry; it must not pull torch in."""
    import subprocess
    import sys

    code = (
        "import sys, samplerguard.telemetry; "
        "bad = [m for m in ('torch', 'diffusers', 'safetensors', 'scipy') if m in sys.modules]; "
        "print(bad); raise SystemExit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
