"""``samplerguard verify-image``: exit 0 pass, 1 fail, 2 unusable; prints what it checked."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from samplerguard.cli import main
from samplerguard.policy.spec import SamplerPolicySpec
from tests.support.publish import Signer, push_image, sign_image
from tests.support.sc_scenario import Published
from tests.support.supplychain import LocalRegistry, PrivateSigstore, registry_binary

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
    assert doc["read"] == [f"policy {policy}"]
    verdict = doc["images"][0]["policies"][0]
    assert verdict["passed"] is False and verdict["digest"] == unsigned.digest
    failed = [c for c in verdict["checks"] if not c["passed"]]
    assert [c["name"] for c in failed] == ["signatures[127.0.0.1:*/acme/**]", "attestation/slsa"]
    # Every place that was searched is named.
    tag = unsigned.digest.replace(":", "-")
    assert (
        f"no signatures found; looked at the referrers API, its fallback tag {tag}, "
        f"tags {tag}.sig and {tag}.att" in failed[0]["detail"]
    )
    assert f"tags {tag}.sig and {tag}.att" in failed[1]["detail"]


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
    assert main(["verify-image", dead, "--policy", str(policy), "--timeout", "300ms"]) == 2
    assert "unreachable" in capsys.readouterr().err


@contextlib.contextmanager
def _private_signed_image(
    tmp_path: Path, policy_for: Callable[..., SamplerPolicySpec]
) -> Iterator[tuple[LocalRegistry, str, Path]]:
    """A registry behind basic auth holding one key-signed image, and its policy file."""
    if registry_binary() is None:
        pytest.skip("docker-registry is not installed")
    with LocalRegistry(auth="basic") as reg, reg.client() as client:
        ref = f"{reg.host}/acme/private:1.0"
        digest = push_image(client, ref)
        signer = Signer.generate()
        sign_image(client, ref, digest, signer)
        published = Published(ref, digest, signer, signer)
        yield reg, ref, write_policy(tmp_path, policy_for(published, attest=False))


def test_private_registry_with_docker_config(
    tmp_path: Path,
    policy_for: Callable[..., SamplerPolicySpec],
    capsys: pytest.CaptureFixture[str],
) -> None:
    with _private_signed_image(tmp_path, policy_for) as (reg, ref, policy):
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


def _pod(name: str, *images: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "team-a"},
        "spec": {"containers": [{"name": f"c{i}", "image": im} for i, im in enumerate(images)]},
    }


def test_policy_directory_workloads_keys_and_secrets(
    tmp_path: Path,
    publish: Callable[..., Published],
    policy_for: Callable[..., SamplerPolicySpec],
    capsys: pytest.CaptureFixture[str],
) -> None:
    signed = publish(keyless=False)
    unsigned = publish(sign=False, keyless=False, attest=False)
    policies = tmp_path / "policies"
    policies.mkdir()
    # The policy names its key by secretRef; the Secret comes with the manifests.
    wire = policy_for(signed).to_wire()
    wire["images"][0]["authorities"][0]["key"] = {
        "secretRef": {"name": "release", "namespace": "samplerguard"}
    }
    write_policy(policies, SamplerPolicySpec.model_validate(wire))
    (policies / "README.yaml").write_text("kind: ConfigMap\nmetadata: {name: notes}\n")
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "release", "namespace": "samplerguard"},
        "stringData": {"cosign.pub": signed.release.public_pem},
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "sampler"},
        "spec": {"template": {"metadata": {}, "spec": _pod("x", signed.ref)["spec"]}},
    }
    manifest = tmp_path / "workload.yaml"
    manifest.write_text(yaml.safe_dump_all([secret, deployment, _pod("p", signed.ref)]))
    args = ["verify-image", "--policy", str(policies), "-f", str(manifest), "--json"]
    assert main(args) == 0, capsys.readouterr()
    doc = json.loads(capsys.readouterr().out)
    assert [i["source"] for i in doc["images"]] == [
        f"{manifest}: Deployment/sampler containers[c0]",
        f"{manifest}: Pod/p containers[c0]",
    ]
    assert doc["skipped"] == [f"{policies / 'README.yaml'}: ConfigMap"]

    # One unsigned image in the pod: exit 1, and it says which container.
    manifest.write_text(yaml.safe_dump_all([secret, _pod("p", signed.ref, unsigned.ref)]))
    assert main(["verify-image", "--policy", str(policies), "-f", str(manifest)]) == 1
    out = capsys.readouterr().out
    assert f"PASS {signed.ref}" in out and f"FAIL {unsigned.ref}" in out
    # Without the Secret, the authority fails and names what it was given.
    manifest.write_text(yaml.safe_dump_all([_pod("p", signed.ref)]))
    assert main(["verify-image", "--policy", str(policies), "-f", str(manifest)]) == 1
    assert (
        "public key Secret samplerguard/release is not among the --manifest Secrets (given: none)"
        in capsys.readouterr().out
    )

    # --key alone, as cosign verify --key.
    key = tmp_path / "cosign.pub"
    key.write_text(signed.release.public_pem)
    assert main(["verify-image", signed.ref, "--key", str(key)]) == 0
    assert main(["verify-image", unsigned.ref, "--key", str(key)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "key-0: no signature to check" in out
    assert main(["verify-image", signed.ref, "--key", "k8s://ns/name"]) == 2
    assert "only PEM files are supported here" in capsys.readouterr().err


def test_credential_helper(
    tmp_path: Path,
    policy_for: Callable[..., SamplerPolicySpec],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with _private_signed_image(tmp_path, policy_for) as (reg, ref, policy):
        # A credential helper as docker runs it: `get`, the server on stdin, JSON out.
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        helper = bin_dir / "docker-credential-sgtest"
        answer = json.dumps(
            {"ServerURL": reg.host, "Username": reg.username, "Secret": reg.password}
        )
        helper.write_text(
            "#!/bin/sh\n"
            f'read server; [ "$1" = get ] && [ "$server" = "{reg.host}" ] || '
            "{ echo 'credentials not found in native keychain'; exit 1; }\n"
            f"echo '{answer}'\n"
        )
        helper.chmod(0o755)
        monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
        for config in ({"credHelpers": {reg.host: "sgtest"}}, {"credsStore": "sgtest"}):
            path = tmp_path / "config.json"
            path.write_text(json.dumps(config))
            args = ["verify-image", ref, "--policy", str(policy), "--docker-config", str(path)]
            assert main(args) == 0, capsys.readouterr()
            assert reg.password not in capsys.readouterr().out
        path.write_text(json.dumps({"credHelpers": {reg.host: "missing"}}))
        assert (
            main(["verify-image", ref, "--policy", str(policy), "--docker-config", str(path)]) == 2
        )
        assert "docker-credential-missing (for" in capsys.readouterr().err
