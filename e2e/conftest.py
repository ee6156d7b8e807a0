"""e2e: needs a real cluster named by KUBECONFIG (skipped without one)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig and Path(kubeconfig).is_file():
        return
    skip = pytest.mark.skip(reason="e2e needs a cluster: set KUBECONFIG")
    for item in items:
        item.add_marker(skip)
