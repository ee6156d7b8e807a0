"""``samplerguard digest``: the digests it prints are the ones the checks compute and compare."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from samplerguard.cli import main
from samplerguard.commitment.digest import module_digest

DIGITS = Path(__file__).parents[3] / "src/samplerguard/models/weights/digits-unet.safetensors"


def _digest(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, list[str]]:
    assert main(["digest", "--json", *argv]) == 0
    body: dict[str, list[str]] = json.loads(capsys.readouterr().out)["goldenDigests"]
    return body


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffusers import EulerDiscreteScheduler

    from tests.support.tiny_sd import build_tiny_sd

    out = tmp_path_factory.mktemp("pipe")
    build_tiny_sd(EulerDiscreteScheduler(use_karras_sigmas=True)).save_pretrained(out)
    return out


def test_checkpoint_digest_is_the_module_digest_and_inspect_agrees(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from samplerguard.models.digits import load_unet

    golden = _digest(capsys, str(DIGITS))
    assert golden == {"modelWeights": [module_digest(load_unet(DIGITS))]}
    assert main(["inspect", "--json", str(DIGITS)]) == 0
    assert json.loads(capsys.readouterr().out)["goldenDigests"] == golden
    # the policy that ships for this model pins the same digest
    assert golden["modelWeights"][0] in (DIGITS.parents[4] / "policies/demo-tiny.yaml").read_text()


def test_pipeline_digests_are_what_the_loaded_pipeline_declares(
    pipeline_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffusers import StableDiffusionPipeline

    from samplerguard.hook.recorder import scheduler_config
    from samplerguard.hook.solver import solver_code_digest
    from samplerguard.policy.schedule import scheduler_config_digest

    golden = _digest(capsys, str(pipeline_dir))
    pipe = StableDiffusionPipeline.from_pretrained(
        pipeline_dir,
        safety_checker=None,
        tokenizer=None,
        feature_extractor=None,
        image_encoder=None,
    )
    cls = type(pipe.scheduler).__name__
    assert golden["modelWeights"] == [module_digest(pipe.unet)]
    assert golden["textEncoder"] == [module_digest(pipe.text_encoder)]
    assert (
        scheduler_config_digest(cls, scheduler_config(pipe.scheduler)) in golden["schedulerConfig"]
    )
    assert golden["solverCode"] == [solver_code_digest(cls)]
    # a component folder gives the same digest as the pipeline folder
    assert _digest(capsys, str(pipeline_dir / "unet")) == {"modelWeights": golden["modelWeights"]}
    assert _digest(capsys, str(pipeline_dir / "text_encoder")) == {
        "textEncoder": golden["textEncoder"]
    }


def test_pipeline_digests_satisfy_the_sidecar_integrity_check(
    pipeline_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from samplerguard.policy.spec import GoldenDigests
    from samplerguard.sidecar.integrity import IntegrityMonitor

    golden = GoldenDigests.model_validate(_digest(capsys, str(pipeline_dir)))
    monitor = IntegrityMonitor(
        golden,
        model_files=(
            pipeline_dir / "unet/diffusion_pytorch_model.safetensors",
            pipeline_dir / "text_encoder/model.safetensors",
        ),
        scheduler_config=pipeline_dir / "scheduler/scheduler_config.json",
    )
    assert monitor.measure().problems == ()
    # and one changed weight is caught against those same pins
    from safetensors.torch import load_file, save_file

    path = pipeline_dir / "vae-copy.safetensors"
    tensors = load_file(pipeline_dir / "unet/diffusion_pytorch_model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1
    save_file(tensors, path)
    bad = IntegrityMonitor(golden, model_files=(path,))
    assert "digest mismatch" in bad.measure().problems[0]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing", "does not exist"),
        (lambda d: d / "model_index.json", "is not a .safetensors file"),
        (lambda d: d / "vae" / "config.json", "is not a .safetensors file"),
    ],
)
def test_unusable_paths_exit_2(
    pipeline_dir: Path, make: object, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make(pipeline_dir)  # type: ignore[operator]
    assert main(["digest", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_folder_without_weights_or_config_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0")
    assert main(["digest", str(tmp_path)]) == 2
    assert "pickled .bin weights" in capsys.readouterr().err
    (tmp_path / "pytorch_model.bin").unlink()
    assert main(["digest", str(tmp_path)]) == 2
    assert "is not a diffusers folder" in capsys.readouterr().err
