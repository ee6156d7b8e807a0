"""The four Containerfiles build from any base image and package source the builder chooses,
take a private CA only as a build secret, and run non-root."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
COMPONENTS = ("operator", "webhook", "sidecar", "verifier")
DEFAULT_BASE = "docker.io/library/python:3.11-slim"


def _lines(component: str) -> list[str]:
    text = (ROOT / component / "Containerfile").read_text()
    return [line.strip() for line in text.replace("\\\n", " ").splitlines()]


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_stage_starts_from_the_base_image_argument(component: str) -> None:
    lines = _lines(component)
    froms = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    arg = lines.index(f"ARG BASE_IMAGE={DEFAULT_BASE}")
    assert arg < froms[0], "ARG BASE_IMAGE must come before the first FROM to reach every stage"
    assert len(froms) == 2
    assert all(re.match(r"FROM \$\{BASE_IMAGE\}( AS \w+)?$", lines[i]) for i in froms)


@pytest.mark.parametrize("component", ["sidecar", "verifier"])
def test_torch_comes_from_a_chosen_index(component: str) -> None:
    lines = _lines(component)
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in lines
    install = next(line for line in lines if "pip install --no-cache-dir torch==" in line)
    assert '${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}' in install
    assert "download.pytorch.org" not in install


@pytest.mark.parametrize("component", COMPONENTS)
def test_a_private_ca_is_a_build_secret_and_the_image_runs_non_root(component: str) -> None:
    lines = _lines(component)
    downloads = [line for line in lines if line.startswith("RUN ") and "pip install" in line]
    assert downloads
    for line in downloads:
        assert "--mount=type=secret,id=ca-bundle," in line
        assert "PIP_CERT=/run/secrets/ca-bundle.crt" in line
    assert not [line for line in lines if re.match(r"(COPY|ADD)\b.*ca-bundle", line)]
    assert lines[[i for i, line in enumerate(lines) if line.startswith("USER ")][-1]] == (
        "USER 65532:65532"
    )
    assert any("65532:65532" in line and "/etc/passwd" in line for line in lines)


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_readme_documents_the_build(component: str) -> None:
    readme = (ROOT / component / "README.md").read_text()
    assert "## Building the image" in readme
    for word in ("BASE_IMAGE", "id=ca-bundle", "readOnlyRootFilesystem"):
        assert word in readme
    assert ("TORCH_INDEX_URL" in readme) == (component in ("sidecar", "verifier"))


def test_the_sidecar_image_ships_the_hook_tree() -> None:
    assert any(
        "python -m samplerguard.hook.layout /opt/samplerguard/python" in line
        for line in _lines("sidecar")
    )
