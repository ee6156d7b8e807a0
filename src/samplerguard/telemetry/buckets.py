"""Histogram bucket boundaries shared by the instruments (their Views) and the drift detector
(its baselines bin requests the same way)."""

from __future__ import annotations

from typing import Final

__all__ = ["GUIDANCE_BUCKETS", "STEPS_BUCKETS"]

#: Classifier-free guidance scale. Dense around the usual 5–9, coarse at the extremes. OTel
#: buckets are upper-inclusive: bucket i holds (b[i-1], b[i]].
GUIDANCE_BUCKETS: Final[tuple[float, ...]] = (
    0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 5.5, 6.0, 6.5, 7.0, 7.5, 8.0, 8.5, 9.0, 9.5,
    10.0, 11.0, 12.0, 14.0, 16.0, 20.0, 30.0,
)  # fmt: skip
#: Number of denoising steps.
STEPS_BUCKETS: Final[tuple[float, ...]] = (
    1.0, 2.0, 4.0, 8.0, 10.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0, 75.0, 100.0, 150.0, 200.0,
    500.0, 1000.0,
)  # fmt: skip
