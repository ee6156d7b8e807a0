"""PNGs carry their provenance and the signed commitment; ``inspect --public-key`` checks one
against the other, says "unsigned" when it cannot, and rejects an edited record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from PIL import Image, PngImagePlugin

from samplerguard.commitment.digest import module_digest
from samplerguard.commitment.statement import Commitment
from samplerguard.demo.run import _save_grid
from samplerguard.hook import LocalSink, Recorder, TrajectoryRequest, instrument
from samplerguard.models.digits import DigitsPipeline, build_unet, make_scheduler
from samplerguard.recipe.provenance import PNG_KEY, read_provenance


@pytest.fixture(scope="module")
def png(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("png")
    unet = build_unet(seed=0).eval()
    sink = LocalSink()
    recorder = Recorder(sink)
    request = TrajectoryRequest(
        request_id="req-png",
        tenant="t",
        pipeline="digits",
        model_name="digits",
        model_digest=module_digest(unet),
        sampler="euler",
        guidance_scale=3.0,
        steps=3,
    )
    labels = torch.tensor([1, 7])
    out = instrument(DigitsPipeline(unet, make_scheduler("euler")), recorder)(
        labels.tolist(), num_inference_steps=3, trajectory_request=request
    )
    recorder.close()
    commitment = Commitment.verify(out.commitment.to_json(), sink.key.public_key())
    path = root / "out.png"
    _save_grid(out.output, path, commitment, labels)
    key = root / "key.pem"
    key.write_bytes(
        sink.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path, key


def _inspect(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "samplerguard", "inspect", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_record_names_the_signed_trajectory(png: Any) -> None:
    path, _ = png
    record = read_provenance(path)
    assert record.request_id == "req-png" and record.commitment_root
    assert record.extra == {"classLabels": "1,7"} and record.seed_pseudonym == "withheld"


def test_inspect_verifies_the_record_against_the_commitment(png: Any) -> None:
    path, key = png
    run = _inspect(str(path), "--public-key", str(key))
    assert run.returncode == 0, run.stderr
    assert "verified: the commitment's signature" in run.stdout


def test_without_a_key_it_says_unsigned(png: Any) -> None:
    path, _ = png
    run = _inspect(str(path))
    assert run.returncode == 0 and "unsigned" in run.stdout


def test_an_edited_record_is_rejected(png: Any, tmp_path: Path) -> None:
    path, key = png
    im = Image.open(path)
    assert isinstance(im, PngImagePlugin.PngImageFile)
    record = json.loads(im.text[PNG_KEY])
    record["cfg"] = 7.5  # the record now claims stronger guidance than was signed
    info = PngImagePlugin.PngInfo()
    for k, v in im.text.items():
        info.add_itxt(k, json.dumps(record) if k == PNG_KEY else v)
    edited = tmp_path / "edited.png"
    im.save(edited, pnginfo=info)
    run = _inspect(str(edited), "--public-key", str(key))
    assert run.returncode == 1
    assert "cfg is 7.5, the signed commitment says 3.0" in run.stderr


def test_a_record_beside_another_commitment_is_rejected(png: Any, tmp_path: Path) -> None:
    """A valid record and a valid commitment of another key: the signature check fails."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path, _ = png
    other = tmp_path / "other.pem"
    other.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    run = _inspect(str(path), "--public-key", str(other))
    assert run.returncode == 1
