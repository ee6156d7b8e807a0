"""Reference models for every family: a diffusers model or pipeline folder, loaded only after
its weights digest matches, re-checking a real recorded generation; a bounded cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from samplerguard.commitment.opening import Opening
from samplerguard.commitment.recheck import recheck_step
from samplerguard.commitment.statement import Commitment
from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.hook.local import LocalSink
from samplerguard.hook.pipelines import instrument
from samplerguard.hook.recorder import Recorder
from samplerguard.policy.spec import GoldenDigests
from samplerguard.verifier.reference import ReferenceModels
from tests.support.families import BUILDERS, Case, request_for

pytestmark = pytest.mark.slow


def _record(case: Case) -> tuple[LocalSink, Commitment]:
    request = request_for(case, "req-ref")
    sink = LocalSink()
    recorder = Recorder(sink)
    try:
        out = case.call(instrument(case.pipe, recorder), trajectory_request=request)
    finally:
        recorder.close()
    return sink, Commitment.verify(out.commitment.to_json(), sink.key.public_key())


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> tuple[Case, Path, LocalSink, Commitment]:
    case = BUILDERS["flux"]()
    folder = tmp_path_factory.mktemp("flux")
    case.pipe.save_pretrained(folder, safe_serialization=True)
    sink, commitment = _record(case)
    return case, folder, sink, commitment


def _scores(refs: ReferenceModels, sink: LocalSink, commitment: Commitment) -> list[float]:
    program = refs.program(commitment.recipe)
    return [
        recheck_step(
            commitment,
            Opening.from_bytes(sink.opening(commitment.request_id, i).to_bytes()),
            program,
            tau=0.0,
        ).worst
        for i in range(commitment.n_steps)
    ]


@pytest.mark.parametrize("form", ["pipeline folder", "model folder"])
def test_a_diffusers_folder_is_a_reference(flux: Any, form: str) -> None:
    _case, folder, sink, commitment = flux
    path = folder if form == "pipeline folder" else folder / "transformer"
    digest = commitment.recipe["model"]["digest"]
    refs = ReferenceModels({"flux": path}, GoldenDigests(model_weights=[digest]))
    assert _scores(refs, sink, commitment) == [0.0] * commitment.n_steps


def test_a_reference_outside_the_golden_digests_is_never_loaded(flux: Any) -> None:
    _, folder, _, commitment = flux
    refs = ReferenceModels({"flux": folder}, GoldenDigests(model_weights=["sha256:" + "0" * 64]))
    with pytest.raises(VerificationError, match="not among the policy's"):
        refs.program(commitment.recipe)


def test_a_reference_with_other_weights_is_refused(flux: Any, tmp_path: Path) -> None:
    """The folder holds weights other than the declared model's: refused before loading."""
    _case, _, _, commitment = flux
    other = BUILDERS["flux"]()
    with torch.no_grad():
        next(other.pipe.transformer.parameters()).mul_(1.001)
    other.pipe.transformer.save_pretrained(tmp_path / "transformer", safe_serialization=True)
    refs = ReferenceModels({"flux": tmp_path / "transformer"}, GoldenDigests())
    with pytest.raises(VerificationError, match="the reference checkpoint is"):
        refs.program(commitment.recipe)


def test_a_folder_naming_another_class_is_unusable(flux: Any, tmp_path: Path) -> None:
    _, folder, _, commitment = flux
    target = tmp_path / "transformer"
    target.mkdir()
    (target / "diffusion_pytorch_model.safetensors").write_bytes(
        (folder / "transformer" / "diffusion_pytorch_model.safetensors").read_bytes()
    )
    config = json.loads((folder / "transformer" / "config.json").read_text())
    (target / "config.json").write_text(json.dumps({**config, "_class_name": "os.system"}))
    refs = ReferenceModels({"flux": target}, GoldenDigests())
    with pytest.raises(MalformedInputError, match=r"names model class 'os\.system'"):
        refs.program(commitment.recipe)


def test_loaded_references_are_a_bounded_cache(flux: Any, tmp_path: Path) -> None:
    _case, folder, _sink, commitment = flux
    sd = BUILDERS["stable-diffusion"]()
    sd.pipe.unet.save_pretrained(tmp_path / "unet", safe_serialization=True)
    sd_sink, sd_commitment = _record(sd)
    refs = ReferenceModels(
        {"flux": folder, "stable-diffusion": tmp_path / "unet"}, GoldenDigests(), max_loaded=1
    )
    first = refs.program(commitment.recipe)
    assert _scores(refs, sd_sink, sd_commitment) == [0.0] * sd_commitment.n_steps
    assert refs.program(commitment.recipe) is not first  # evicted, loaded again
    assert len(refs._programs) == 1


def test_verify_trajectory_re_runs_a_flux_step_offline(flux: Any, tmp_path: Path) -> None:
    """The auditor's command takes a diffusers folder as the reference for any family."""
    from cryptography.hazmat.primitives import serialization

    _, folder, sink, commitment = flux
    (tmp_path / "c.json").write_text(commitment.to_json())
    (tmp_path / "o.bin").write_bytes(sink.opening(commitment.request_id, 1).to_bytes())
    (tmp_path / "k.pem").write_bytes(
        sink.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "samplerguard",
            "verify-trajectory",
            "--commitment",
            str(tmp_path / "c.json"),
            "--opening",
            str(tmp_path / "o.bin"),
            "--public-key",
            str(tmp_path / "k.pem"),
            "--model",
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "accept" in run.stdout


def test_a_family_without_reference_decode_is_never_a_pass(flux: Any) -> None:
    """Every step of an honest Flux trajectory re-checks to 0, but its output and request
    conditioning cannot be re-derived without a reference VAE and text encoders: the challenge
    says what it did not check instead of passing."""
    from samplerguard.commitment.challenge import verify_challenge

    _, folder, sink, commitment = flux
    refs = ReferenceModels({"flux": folder}, GoldenDigests())
    program = refs.program(commitment.recipe)
    outcome = verify_challenge(
        commitment,
        sink.transcript(commitment.request_id),
        lambda step: Opening.from_bytes(sink.opening(commitment.request_id, step).to_bytes()),
        program,
        steps=[0, 1],
        tau=0.0,
    )
    assert outcome.accepted and [r.worst for r in outcome.results] == [0.0, 0.0]
    assert any("output binding" in u for u in outcome.unchecked)
