"""The cluster quick-start policy admits what the auto-hook records from the bundled model, and
``adapt-policy`` moves an example policy to a registry and signing key."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from samplerguard.cli import main
from samplerguard.errors import PolicyError
from samplerguard.policy.adapt import adapt
from samplerguard.policy.spec import parse_policy

POLICIES = Path(__file__).resolve().parents[3] / "policies"


def _load(name: str) -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load((POLICIES / name).read_text())
    return body


def _public_pem() -> str:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler", "ddim"])
def test_the_auto_hooks_recipe_for_the_bundled_model_is_in_the_quickstart_policy(
    sampler: str,
) -> None:
    from samplerguard.hook.auto import request_for
    from samplerguard.models.digits import DigitsPipeline, load_unet, make_scheduler
    from samplerguard.sidecar.enforce import recipe_violations

    pipe = DigitsPipeline(load_unet().eval(), make_scheduler(sampler))
    request = request_for(pipe, {"num_inference_steps": 20, "guidance_scale": 3.0}, "ml")
    recipe = request.recipe(pipe.scheduler, (2, 1, 8, 8))
    quickstart = parse_policy(_load("quickstart.yaml")).spec
    # the webhook wires the pod for the policy's DRBG mode (SAMPLERGUARD_RNG_MODE), and the
    # auto-hook then declares the mode of the seed the sidecar issued
    assert quickstart.rng.mode == "ctr-drbg" and quickstart.rng.escrow
    assert recipe_violations(quickstart, recipe, quickstart.rng.mode) == []
    assert recipe_violations(quickstart, recipe, request.rng_mode)  # framework noise: refused
    assert recipe["model"]["digest"] in quickstart.golden_digests.model_weights
    # demo-tiny (local mode, DRBG noise) takes the bundled model's schedules as well
    demo = parse_policy(_load("demo-tiny.yaml")).spec
    assert [c for c, _ in recipe_violations(demo, recipe, request.rng_mode)] == ["rng"]


def test_adapt_moves_images_and_keys() -> None:
    pem = _public_pem()
    out = adapt(_load("quickstart.yaml"), registry="10.0.0.5:5000", public_key=pem)
    rule = out["spec"]["images"][0]
    assert rule["glob"] == "10.0.0.5:5000/samplerguard/**"
    assert rule["authorities"][0]["key"]["publicKey"] == pem
    policy = parse_policy(out)
    assert policy.spec.images[0].matches("10.0.0.5:5000/samplerguard/sidecar:0.1.0")
    # the rest is untouched, and the input too
    assert out["spec"]["recipe"] == _load("quickstart.yaml")["spec"]["recipe"]
    assert _load("quickstart.yaml")["spec"]["images"][0]["glob"] == "ghcr.io/samplerguard/**"
    short = copy.deepcopy(out)
    short["spec"]["images"][0]["glob"] = "team/app*"
    assert adapt(short, registry="r.example")["spec"]["images"][0]["glob"] == "r.example/team/app*"


def test_adapt_refuses_what_it_cannot_use() -> None:
    body = _load("quickstart.yaml")
    with pytest.raises(PolicyError, match="not a PEM public key"):
        adapt(body, public_key="not a key")
    with pytest.raises(PolicyError, match="is not a registry"):
        adapt(body, registry="r.example/path")
    keyless = copy.deepcopy(body)
    keyless["spec"]["images"][0]["authorities"] = [
        {"name": "ci", "keyless": {"identity": "ci@example.com", "issuer": "https://issuer"}}
    ]
    with pytest.raises(PolicyError, match="no key authority"):
        adapt(keyless, public_key=_public_pem())


def test_the_cli_prints_an_applicable_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "cosign.pub"
    key.write_text(_public_pem())
    policy = str(POLICIES / "quickstart.yaml")
    code = main(["adapt-policy", policy, "--registry", "r:5000", "--public-key", str(key)])
    assert code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert parse_policy(printed).spec.images[0].glob == "r:5000/samplerguard/**"
    assert main(["adapt-policy", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
