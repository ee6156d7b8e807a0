"""Shared test configuration. Component fixtures live in the conftest.py of their folders."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_TESTDATA = REPO.parent / "shared" / "testdata"


@pytest.fixture(scope="session")
def shared_testdata() -> Path:
    """../shared/testdata: NIST DRBG vectors and real Sigstore bundles."""
    if not SHARED_TESTDATA.is_dir():
        pytest.fail(f"{SHARED_TESTDATA} is missing: clone the repo beside shared/")
    return SHARED_TESTDATA
