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

from samplerguard.commitment.digest import output_bytes
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
        (d / f"{name}-transcript.safetensors").write_bytes(sink.transcript(f"{name}-1").to_bytes())
        files[f"{name}-transcript"] = d / f"{name}-transcript.safetensors"
        (d / f"{name}-request.json").write_text(
            json.dumps(
                {
                    "requestId": f"{name}-1",
                    "tenant": "tenant-demo",
                    "classLabels": [1, 2],
                    "steps": 4,
                    "guidanceScale": 3.0,
                }
            )
        )
        files[f"{name}-request"] = d / f"{name}-request.json"
        (d / f"{name}-output.bin").write_bytes(output_bytes(g.images))
        files[f"{name}-output"] = d / f"{name}-output.bin"
        (d / f"{name}-2.safetensors").write_bytes(sink.opening(f"{name}-1", 2).to_bytes())
        files[name] = d / f"{name}.json"
        files[f"{name}-opening"] = d / f"{name}-2.safetensors"
        files[f"{name}-key"] = d / f"{name}.pub"
        files[f"{name}-key"].write_bytes(
            sink.key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
        )
    return files


def _run(
    f: dict[str, Path],
    who: str,
    *,
    opening: Path | None = None,
    key: Path | None = None,
    extra: tuple[str, ...] = (),
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
            *extra,
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
    assert float(out["score (error over the model output's share)"]) == 0.0


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


def test_the_whole_auditor_check_accepts_an_honest_response(audit_files: dict[str, Path]) -> None:
    f = audit_files
    extra = (
        "--transcript",
        str(f["honest-transcript"]),
        "--request",
        str(f["honest-request"]),
        "--output",
        str(f["honest-output"]),
    )
    p = _run(f, "honest", extra=extra)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "checked: transcript" in p.stderr and "checked: request and output" in p.stderr
    assert json.loads(p.stdout)["tau"].endswith("(same build: exact)")


def test_a_response_for_another_request_is_rejected(
    audit_files: dict[str, Path], tmp_path: Path
) -> None:
    f = audit_files
    other = tmp_path / "asked.json"
    asked = json.loads(f["honest-request"].read_text())
    asked["classLabels"] = [7, 2]
    other.write_text(json.dumps(asked))
    p = _run(f, "honest", extra=("--request", str(other), "--output", str(f["honest-output"])))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "request binding" in json.loads(p.stdout)["reasons"][0]
    p = _run(f, "honest", extra=("--request", str(f["honest-request"]), "--output", str(other)))
    assert p.returncode == 1 and "output binding" in json.loads(p.stdout)["reasons"][0]
    p = _run(f, "honest", extra=("--request", str(f["honest-request"])))
    assert p.returncode == 2 and "go together" in json.loads(p.stdout)["reasons"][0]


def test_what_a_consumer_holds_is_enough(audit_files: dict[str, Path], tmp_path: Path) -> None:
    """The trajectory JSON the sidecar serves (commitment in .commitment) and the key as the
    sidecar's /v1/public-key JSON are read as such."""
    f = audit_files
    doc = tmp_path / "trajectory.json"
    doc.write_text(
        json.dumps({"id": "honest-1", "commitment": json.loads(f["honest"].read_text())})
    )
    key = tmp_path / "key.json"
    key.write_text(json.dumps({"publicKey": f["honest-key"].read_text(), "keyid": "x"}))
    p = _run({**f, "doc": doc, "doc-opening": f["honest-opening"]}, "doc", key=key)
    assert p.returncode == 0, p.stdout + p.stderr
    assert ".commitment of the trajectory document" in p.stderr


def test_a_file_of_the_wrong_kind_is_unusable_not_a_rejection(
    audit_files: dict[str, Path], tmp_path: Path
) -> None:
    f = audit_files
    p = _run(
        {**f, "x": f["honest-opening"], "x-opening": f["honest-opening"]}, "x", key=f["honest-key"]
    )
    assert p.returncode == 2
    assert "expected a DSSE envelope" in json.loads(p.stdout)["reasons"][0]
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"payloadType": None}))
    p = _run({**f, "y": other, "y-opening": f["honest-opening"]}, "y", key=f["honest-key"])
    assert p.returncode == 2 and "DSSE envelope" in json.loads(p.stdout)["reasons"][0]
