"""``samplerguard verify-trajectory`` as an auditor runs it: a real subprocess, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from safetensors.torch import save_file

from samplerguard.demo.providers import Declared, Provider
from samplerguard.hook.local import LocalSink
from samplerguard.hook.recorder import Recorder


@pytest.fixture(scope="module")
def audit_files(tmp_path_factory: pytest.TempPathFactory, tiny_unet: Any) -> dict[str, Path]:
    import torch

    d = tmp_path_factory.mktemp("audit")
    model = d / "model.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_unet.state_dict().items()}, str(model))
    files: dict[str, Path] = {"model": model}
    for name in ("honest", "guidance-off"):
        sink = LocalSink()
        recorder = Recorder(sink)
        try:
            g = Provider(name, tiny_unet, Declared(steps=4), recorder).generate(
                f"{name}-1", torch.tensor([1, 2]), torch.randn(2, 1, 8, 8)
            )
        finally:
            recorder.close()
        (d / f"{name}.json").write_text(g.commitment.to_json())
        (d / f"{name}-2.safetensors").write_bytes(sink.opening(f"{name}-1", 2).to_bytes())
        files[name] = d / f"{name}.json"
        files[f"{name}-opening"] = d / f"{name}-2.safetensors"
        files[f"{name}-key"] = d / f"{name}.pub"
        files[f"{name}-key"].write_bytes(
            sink.key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        )
    return files


def _run(
    f: dict[str, Path], who: str, *, opening: Path | None = None, key: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "samplerguard",
            "verify-trajectory",
            "--json",
            "--commitment",
            str(f[who]),
            "--opening",
            str(opening or f[f"{who}-opening"]),
            "--model",
            str(f["model"]),
            "--public-key",
            str(key or f[f"{who}-key"]),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_honest_opening_is_accepted(audit_files: dict[str, Path]) -> None:
    p = _run(audit_files, "honest")
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out["verdict"] == "accept" and out["step"] == 2
    assert float(out["worst (latent/state/update)"]) == 0.0


def test_guidance_skipped_is_rejected_with_its_score(audit_files: dict[str, Path]) -> None:
    p = _run(audit_files, "guidance-off")
    assert p.returncode == 1, p.stdout + p.stderr
    out = json.loads(p.stdout)
    assert out["verdict"] == "reject" and "exceeds tau" in out["reasons"][0]


def test_wrong_signing_key_is_a_rejection(audit_files: dict[str, Path]) -> None:
    p = _run(audit_files, "honest", key=audit_files["guidance-off-key"])
    assert p.returncode == 1
    assert "no signature verifies" in json.loads(p.stdout)["reasons"][0]


def test_opening_of_another_trajectory_is_a_rejection(audit_files: dict[str, Path]) -> None:
    p = _run(audit_files, "honest", opening=audit_files["guidance-off-opening"])
    assert p.returncode == 1
    assert "opening is for request 'guidance-off-1'" in json.loads(p.stdout)["reasons"][0]


def test_truncated_opening_is_unusable(audit_files: dict[str, Path], tmp_path: Path) -> None:
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(audit_files["honest-opening"].read_bytes()[:-100])
    p = _run(audit_files, "honest", opening=cut)
    assert p.returncode == 2
    assert "truncated" in json.loads(p.stdout)["reasons"][0]


def test_missing_file_is_unusable(audit_files: dict[str, Path], tmp_path: Path) -> None:
    p = _run(audit_files, "honest", opening=tmp_path / "nope.safetensors")
    assert p.returncode == 2
    assert "cannot read opening" in json.loads(p.stdout)["reasons"][0]
