"""``samplerguard inspect`` on checkpoints and PNGs: exit 0 / 1 / 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from samplerguard.cli import main
from samplerguard.recipe import Provenance, Recipe, save_png, write_recipe


def test_checkpoint_with_recipe(
    checkpoint: Path, recipe: Recipe, capsys: pytest.CaptureFixture[str]
) -> None:
    write_recipe(checkpoint, recipe, checkpoint)
    assert main(["inspect", str(checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "recipe: sg-test — ddim/leading" in out and "verified" in out
    assert main(["inspect", "--json", str(checkpoint)]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["hashes"] == "verified" and body["recipe"]["modelId"] == "sg-test"


def test_tampered_checkpoint_is_rejected(
    checkpoint: Path, recipe: Recipe, capsys: pytest.CaptureFixture[str]
) -> None:
    write_recipe(checkpoint, recipe, checkpoint)
    data = bytearray(checkpoint.read_bytes())
    data[-1] ^= 1
    checkpoint.write_bytes(bytes(data))
    assert main(["inspect", str(checkpoint)]) == 1
    assert "weights hash mismatch" in capsys.readouterr().err
    assert main(["inspect", "--no-verify", str(checkpoint)]) == 0


def test_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prov = Provenance(
        model_id="m",
        sampler="ddim",
        schedule="leading",
        steps=5,
        cfg=2.0,
        seed_pseudonym="s-00112233",
    )
    path = save_png(Image.new("L", (8, 8)), prov, tmp_path)
    assert main(["inspect", str(path)]) == 0
    assert "seedPseudonym: s-00112233" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "shorter than the 8-byte"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 10, "corrupt PNG"),
        (b"\xff" * 64, "exceeds the"),
    ],
)
def test_unusable_input_exits_2(
    tmp_path: Path, blob: bytes, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "x.bin"
    p.write_bytes(blob)
    assert main(["inspect", str(p)]) == 2
    assert message in capsys.readouterr().err
    assert main(["inspect", str(tmp_path / "absent")]) == 2


def test_real_process(checkpoint: Path, recipe: Recipe) -> None:
    write_recipe(checkpoint, recipe, checkpoint)
    done = subprocess.run(
        [sys.executable, "-m", "samplerguard", "inspect", "--json", str(checkpoint)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["kind"] == "safetensors"
