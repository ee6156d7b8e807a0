"""Shared test configuration. Component fixtures live in the conftest.py of their folders."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_TESTDATA = REPO / "tests" / "data"


@pytest.fixture(scope="session")
def shared_testdata() -> Path:
    """tests/data: NIST DRBG vectors and real Sigstore bundles (origin and licence in each
    folder's README)."""
    if not (SHARED_TESTDATA / "drbg").is_dir() or not (SHARED_TESTDATA / "sigstore").is_dir():
        pytest.fail(f"{SHARED_TESTDATA} lacks drbg/ or sigstore/: the checkout is incomplete")
    return SHARED_TESTDATA
