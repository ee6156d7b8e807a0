"""``samplerguard verify-image``: exit 0 pass, 1 fail, 2 unusable; prints what it checked."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from sc_scenario import Published

from samplerguard.cli import main
from samplerguard.policy.spec import SamplerPolicySpec
from samplerguard.supplychain.testing import PrivateSigstore

pytestmark = pytest.mark.registry


def write_policy(tmp_path: Path, spec: SamplerPolicySpec, name: str = "prod") -> Path:
    doc = {
        "apiVersion": "samplerguard.dev/v1alpha1",
        "kind": "ClusterSamplerPolicy",
        "metadata": {"name": name},
        "spec": spec.to_wire(),
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_pass_prints_every_check(
    tmp_path: Path,
    publish: Callable[..., Published],
    policy_for: Callable[..., SamplerPolicySpec],
    sigstore: PrivateSigstore,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pub = publish()
    spec = policy_for(pub, keyless=True, threshold=2)
    # The keyless authority names its trusted root by file path (local mode).
    root = tmp_path / "trusted_root.json"
    root.write_bytes(sigstore.trusted_root_json())
    wire = spec.to_wire()
    wire["images"][0]["authorities"][1]["keyless"]["trustedRoot"] = str(root)
    policy = write_policy(tmp_path, SamplerPolicySpec.model_validate(wire))
    assert main(["verify-image", pub.ref, "--policy", str(policy)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"PASS {pub.ref} @ {pub.digest} under policy 'ClusterSamplerPolicy/prod'")
    for line in ("[ok] image-rule", "[ok] resolve", "[ok] signatures", "[ok] attestation/slsa"):
        assert line in out


def test_fail_exits_1_with_reasons(
    tmp_path: Path,
    publish: Callable[..., Published],
    policy_for: Callable[..., SamplerPolicySpec],
    capsys: pytest.CaptureFixture[str],
) -> None:
    signed = publish()
    unsigned = publish(sign=False, keyless=False, attest=False)
    policy = write_policy(tmp_path, policy_for(signed))
    assert main(["verify-image", unsigned.ref, "--policy", str(policy), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc[0]["passed"] is False and doc[0]["digest"] == unsigned.digest
    failed = [c["name"] for c in doc[0]["checks"] if not c["passed"]]
    assert failed == ["signatures[127.0.0.1:*/acme/**]", "attestation/slsa"]


def test_ungoverned_image_fails(
    tmp_path: Path,
    publish: Callable[..., Published],
    policy_for: Callable[..., SamplerPolicySpec],
    capsys: pytest.CaptureFixture[str],
) -> None:
    pub = publish()
    policy = write_policy(tmp_path, policy_for(pub))
    assert main(["verify-image", "ghcr.io/other/image:1", "--policy", str(policy)]) == 1
    assert "no policy" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("image", "policy_text", "message"),
    [
        ("127.0.0.1:5000/BAD/ref", None, "invalid repository"),
        (None, "kind: Deployment\n", "is not a samplerguard policy"),
        (None, "{{{{", "is not YAML"),
        (None, "", "holds no policy"),
    ],
)
def test_unusable_input_exits_2(
    tmp_path: Path,
    image: str | None,
    policy_text: str | None,
    message: str,
    publish: Callable[..., Published],
    policy_for: Callable[..., SamplerPolicySpec],
    capsys: pytest.CaptureFixture[str],
) -> None:
    pub = publish(sign=False, keyless=False, attest=False)
    policy = write_policy(tmp_path, policy_for(pub))
    if policy_text is not None:
        policy.write_text(policy_text)
    assert main(["verify-image", image or pub.ref, "--policy", str(policy)]) == 2
    assert message in capsys.readouterr().err


def test_unreachable_registry_exits_2(
    tmp_path: Path,
    publish: Callable[..., Published],
    policy_for: Callable[..., SamplerPolicySpec],
    capsys: pytest.CaptureFixture[str],
) -> None:
    pub = publish(sign=False, keyless=False, attest=False)
    policy = write_policy(tmp_path, policy_for(pub))
    dead = "127.0.0.1:9/acme/sampler:1.0"
    assert main(["verify-image", dead, "--policy", str(policy), "--timeout", "0.3"]) == 2
    assert "unreachable" in capsys.readouterr().err


def test_private_registry_with_docker_config(
    tmp_path: Path,
    policy_for: Callable[..., SamplerPolicySpec],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from samplerguard.supplychain.publish import Signer, push_image, sign_image
    from samplerguard.supplychain.testing import LocalRegistry, registry_binary

    if registry_binary() is None:
        pytest.skip("docker-registry is not installed")
    with LocalRegistry(auth="basic") as reg, reg.client() as client:
        ref = f"{reg.host}/acme/private:1.0"
        digest = push_image(client, ref)
        signer = Signer.generate()
        sign_image(client, ref, digest, signer)
        policy = write_policy(
            tmp_path, policy_for(Published(ref, digest, signer, signer), attest=False)
        )
        config = tmp_path / "config.json"
        config.write_bytes(reg.dockerconfigjson())
        assert (
            main(["verify-image", ref, "--policy", str(policy), "--docker-config", str(config)])
            == 0
        )
        assert capsys.readouterr().out.startswith(f"PASS {ref}")
        # Without credentials the registry refuses: a rejection, and the secret is not shown.
        empty = tmp_path / "empty.json"
        empty.write_text('{"auths": {}}')
        assert (
            main(["verify-image", ref, "--policy", str(policy), "--docker-config", str(empty)]) == 1
        )
        out = capsys.readouterr().out
        assert "requires credentials" in out and reg.password not in out
