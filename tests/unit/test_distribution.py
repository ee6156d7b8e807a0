"""What ships: the wheel and the images carry the product, never the test tooling.

The webhook and operator images install ``pip install .`` from the files their Containerfiles
copy; this builds the wheel from exactly that set and reads its file list.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = ("webhook", "operator", "sidecar", "verifier")
#: the tooling that lives in tests/support, by the module path it once had in the package
TOOLING = (
    "samplerguard/supplychain/testing.py",
    "samplerguard/supplychain/publish.py",
    "samplerguard/rng/cavp.py",
    "samplerguard/models/tiny_sd.py",
)
#: top-level packages only tests import
TEST_ONLY = {"tests", "pytest", "hypothesis", "_pytest", "bcrypt"}


def build_stage_copies(containerfile: Path) -> set[str]:
    """The sources of the ``COPY`` lines that read the build context (not ``--from=``)."""
    sources: set[str] = set()
    for line in containerfile.read_text().splitlines():
        words = line.split()
        if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
            continue
        args = [w for w in words[1:] if not w.startswith("--")]
        if len(args) < 2:
            raise AssertionError(f"{containerfile}: unreadable COPY line {line!r}")
        sources.update(arg.rstrip("/") for arg in args[:-1])
    return sources


@pytest.mark.parametrize("image", IMAGES)
def test_images_copy_only_the_package_sources(image: str) -> None:
    copies = build_stage_copies(REPO / image / "Containerfile")
    assert "src" in copies
    assert copies <= {"pyproject.toml", "setup.py", "README.md", "src"}, copies


def test_build_stage_copies_reads_copy_lines(tmp_path: Path) -> None:
    containerfile = tmp_path / "Containerfile"
    containerfile.write_text(
        "FROM x AS build\nCOPY pyproject.toml README.md ./\nCOPY --chown=1:1 tests ./tests\n"
        "FROM y\nCOPY --from=build /opt/sg /opt/sg\n"
    )
    assert build_stage_copies(containerfile) == {"pyproject.toml", "README.md", "tests"}


@pytest.fixture(scope="module")
def wheel_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The files of the wheel built from the webhook's (and operator's) build context."""
    copies = build_stage_copies(REPO / "webhook" / "Containerfile")
    assert copies == build_stage_copies(REPO / "operator" / "Containerfile")
    context = tmp_path_factory.mktemp("context")
    out = tmp_path_factory.mktemp("wheel")
    for name in copies:
        source = REPO / name
        if source.is_dir():
            # as .dockerignore: no caches or built extensions
            ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info")
            shutil.copytree(source, context / name, ignore=ignore)
        else:
            shutil.copy2(source, context / name)
    build = (
        "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", build, str(out)],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    wheel = out / done.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheel) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_wheel_carries_the_deployables(wheel_files: dict[str, bytes]) -> None:
    for module in ("webhook/__init__.py", "operator/__init__.py", "supplychain/cosign.py"):
        assert f"samplerguard/{module}" in wheel_files


def test_wheel_lacks_the_test_tooling(wheel_files: dict[str, bytes]) -> None:
    assert not set(TOOLING) & set(wheel_files)
    outside = [name for name in wheel_files if not re.match(r"samplerguard[/-]", name)]
    assert outside == []


def test_no_packaged_module_imports_test_code(wheel_files: dict[str, bytes]) -> None:
    offenders = []
    for name, body in wheel_files.items():
        if not name.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(body, filename=name)):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            offenders += [f"{name}:{node.lineno} {root}" for root in roots & TEST_ONLY]
    assert offenders == []


@pytest.mark.parametrize(
    "entry",
    [
        "samplerguard.webhook, samplerguard.cli.webhook",
        "samplerguard.operator.run, samplerguard.cli.operator",
    ],
)
def test_webhook_and_operator_import_no_torch(entry: str) -> None:
    """What the Containerfiles assert after ``pip install .``, at run time: import-linter sees
    import statements, this sees what an import of the deployable actually loads."""
    code = (
        f"import sys, {entry}; "
        "print(sorted({'torch', 'diffusers', 'safetensors', 'transformers'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == "[]"
