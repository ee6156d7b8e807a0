"""Real images built by the SLSA GitHub container generator (v1.4.0 to v2.1.0), verified on the
real registry from their attestation alone, with slsa-verifier's semantics.

The attestations are the generator's own, byte for byte (tests/data/supplychain, from
slsa-verifier's test data): v1.4.0–v1.9.0 were logged as Rekor ``intoto`` 0.0.1 entries,
later ones as ``dsse`` 0.0.1. Each image carries no ``.sig``: the policy admits it on its
attestation, whose signer is checked like a signature authority.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from samplerguard.policy.spec import SamplerPolicySpec
from samplerguard.supplychain import ImageVerifier, RegistryClient, TrustedRoots, load_trusted_root
from samplerguard.supplychain.cosign import tag_for
from tests.support.publish import push_blob, push_manifest
from tests.support.supplychain import LocalRegistry

pytestmark = pytest.mark.registry

DATA = Path(__file__).parents[2] / "data" / "supplychain"
RELEASES = sorted(p.name for p in (DATA / "slsa-container-generator").iterdir() if p.is_dir())
INTOTO_001 = ["v1.4.0", "v1.5.0", "v1.6.0", "v1.7.0", "v1.8.0", "v1.9.0"]
TAG_PUSHES = ["v1.9.0", "v1.10.0", "v2.0.0"]  # of tag v13.0.30, from main
GENERATOR = (
    "https://github.com/slsa-framework/slsa-github-generator/.github/workflows/"
    "generator_container_slsa3.yml"
)
GHA = "https://token.actions.githubusercontent.com"


def _layout(release: str) -> tuple[str, dict[str, Any], Path]:
    folder = DATA / "slsa-container-generator" / release
    layout = json.loads((folder / "layout.json").read_text())
    return layout["image"], layout, folder / "blobs"


def _push_attestation(
    client: RegistryClient, repo: str, release: str, *, image: str | None = None
) -> str:
    """Push the release's attestation manifest beside ``image`` (default: the image it was
    made for); returns the image digest it is attached to."""
    digest, layout, blobs = _layout(release)
    raw = (blobs / layout["attestations"][7:]).read_bytes()
    manifest = json.loads(raw)
    for desc in [manifest["config"], *manifest["layers"]]:
        push_blob(client, repo, (blobs / desc["digest"][7:]).read_bytes())
    target = image or digest
    push_manifest(client, repo, raw, manifest["mediaType"], tag=tag_for(target, "att"))
    return target


def _policy(**rule: Any) -> SamplerPolicySpec:
    return SamplerPolicySpec.model_validate(
        {
            "images": [
                {
                    "glob": "127.0.0.1:*/slsa/**",
                    "authorities": [
                        {
                            "name": "generator",
                            "keyless": {
                                "identities": [
                                    {
                                        "issuer": GHA,
                                        # As cosign's --certificate-identity-regexp: a substring.
                                        "subjectRegExp": r"/slsa-github-generator/\.github/"
                                        r"workflows/generator_container_slsa3\.yml@refs/tags/v",
                                    }
                                ],
                                "trustedRoot": "production",
                            },
                            "attestations": ["slsa"],
                        }
                    ],
                }
            ],
            "attestations": [
                {
                    "name": "slsa",
                    "predicateType": "https://slsa.dev/provenance/v0.2",
                    "sourceUris": ["github.com/slsa-framework/example-package"],
                    **rule,
                }
            ],
        }
    )


@pytest.fixture(scope="module")
def roots() -> TrustedRoots:
    return TrustedRoots(
        named={"production": load_trusted_root(DATA / "trusted_root.production.json")}
    )


@pytest.fixture
def client(registry: LocalRegistry) -> Iterator[RegistryClient]:
    with registry.client() as c:
        yield c


@pytest.fixture
def published(client: RegistryClient, registry: LocalRegistry) -> Callable[..., tuple[str, str]]:
    count = iter(range(1 << 20))

    def make(release: str, **kwargs: Any) -> tuple[str, str]:
        repo = f"{registry.host}/slsa/example-package-{release}-{next(count)}"
        digest = _push_attestation(client, repo, release, **kwargs)
        return f"{repo}@{digest}", digest

    return make


def _verify(client: RegistryClient, roots: TrustedRoots, ref: str, spec: SamplerPolicySpec) -> Any:
    return ImageVerifier(client, trusted_roots=roots).verify(ref, spec, policy_name="slsa")


@pytest.mark.parametrize("release", RELEASES)
def test_generator_image_is_admitted_on_its_attestation(
    release: str, client: RegistryClient, roots: TrustedRoots, published: Callable[..., Any]
) -> None:
    # No builderIds: slsa-verifier's trusted builders, at a release tag.
    ref, _ = published(release)
    verdict = _verify(client, roots, ref, _policy())
    assert verdict.passed, verdict.summary()
    rule = next(c for c in verdict.checks if c.name.startswith("signatures["))
    assert "generator: ok, attestation rule 'slsa'" in rule.detail
    assert "no signatures found" not in rule.detail


@pytest.mark.parametrize("release", INTOTO_001)
def test_intoto_001_entry_is_bound_to_its_envelope(
    release: str, client: RegistryClient, roots: TrustedRoots, published: Callable[..., Any]
) -> None:
    """The same attestation, moved beside another image, is for another image."""
    other = "sha256:" + "ab" * 32
    ref, _ = published(release, image=other)
    verdict = _verify(client, roots, ref, _policy())
    assert not verdict.passed
    assert f"is for another image (subject digest mismatch: got ['{_layout(release)[0]}']" in (
        verdict.summary()
    )


def test_builder_id_forms(
    client: RegistryClient, roots: TrustedRoots, published: Callable[..., Any]
) -> None:
    ref, _ = published("v1.4.0")
    for builder in (GENERATOR, f"{GENERATOR}@v1.4.0", f"{GENERATOR}@refs/tags/v1.4.0"):
        verdict = _verify(client, roots, ref, _policy(builderIds=[builder]))
        assert verdict.passed, (builder, verdict.summary())
    for builder in (f"{GENERATOR}@v1.5.0", f"{GENERATOR}@refs/heads/main", GENERATOR + "x"):
        verdict = _verify(client, roots, ref, _policy(builderIds=[builder]))
        assert not verdict.passed
        assert "builder id mismatch (got " in verdict.summary(), builder


@pytest.mark.parametrize("release", TAG_PUSHES)
def test_semver_tag_and_the_branch_of_a_tag_push(
    release: str, client: RegistryClient, roots: TrustedRoots, published: Callable[..., Any]
) -> None:
    ref, _ = published(release)
    for rule in (
        {"sourceVersionedTags": ["v13"]},
        {"sourceVersionedTags": ["v13.0"]},
        {"sourceVersionedTags": ["v13.0.30"]},
        {"sourceTags": ["v13.0.30"]},
        {"sourceBranches": ["main"]},  # the push event's base_ref
    ):
        verdict = _verify(client, roots, ref, _policy(**rule))
        assert verdict.passed, (rule, verdict.summary())
    refused: tuple[tuple[dict[str, Any], str], ...] = (
        ({"sourceVersionedTags": ["v12"]}, "source versioned tag mismatch (got 'v13.0.30'"),
        ({"sourceVersionedTags": ["v13.1"]}, "source versioned tag mismatch (got 'v13.0.30'"),
        ({"sourceTags": ["v13.0.3"]}, "source tag mismatch (got 'v13.0.30'"),
        ({"sourceBranches": ["release"]}, "source branch mismatch (got 'main' from the push"),
        ({"workflowInputs": {"a": "b"}}, "workflow inputs need a workflow_dispatch build"),
    )
    for bad, message in refused:
        verdict = _verify(client, roots, ref, _policy(**bad))
        assert not verdict.passed
        assert message in verdict.summary(), bad


def test_must_fail_inputs(
    client: RegistryClient, roots: TrustedRoots, published: Callable[..., Any]
) -> None:
    ref, _ = published("v1.4.0")
    cases = [
        (_policy(sourceUris=["github.com/slsa-framework/other"]), "source URI mismatch"),
        (_policy(sourceBranches=["dev"]), "source branch mismatch (got 'main' from github_ref"),
        (_policy(sourceTags=["v1"]), "source tag mismatch (got None"),
        (_policy(builderIds=["https://github.com/acme/builder"]), "builder id mismatch"),
        (
            _policy(conditions=[{"expression": "predicate.buildType.endsWith('generic@v1')"}]),
            "does not hold (got false, expected true)",
        ),
    ]
    for spec, message in cases:
        verdict = _verify(client, roots, ref, spec)
        assert not verdict.passed
        assert message in verdict.summary(), message
    spec = _policy(
        conditions=[
            {
                "expression": "predicate.buildType == "
                "'https://github.com/slsa-framework/slsa-github-generator/container@v1'"
            }
        ]
    )
    assert _verify(client, roots, ref, spec).passed


def test_tampered_statement_fails(
    client: RegistryClient, registry: LocalRegistry, roots: TrustedRoots
) -> None:
    digest, layout, blobs = _layout("v1.4.0")
    repo = f"{registry.host}/slsa/tampered"
    manifest = json.loads((blobs / layout["attestations"][7:]).read_bytes())
    envelope = json.loads((blobs / manifest["layers"][0]["digest"][7:]).read_bytes())
    # The statement now claims another source; the DSSE signature and the logged hash break.
    statement = base64.b64decode(envelope["payload"])
    forged = statement.replace(
        b"example-package@refs/heads/main", b"example-package@refs/heads/mein"
    )
    assert forged != statement
    envelope["payload"] = base64.b64encode(forged).decode()
    blob = json.dumps(envelope).encode()
    desc = push_blob(client, repo, blob)
    push_blob(client, repo, (blobs / manifest["config"]["digest"][7:]).read_bytes())
    manifest["layers"][0]["digest"], manifest["layers"][0]["size"] = desc.digest, desc.size
    raw = json.dumps(manifest).encode()
    push_manifest(client, repo, raw, manifest["mediaType"], tag=tag_for(digest, "att"))
    verdict = _verify(client, roots, f"{repo}@{digest}", _policy())
    assert not verdict.passed
    assert "is signed by no authority: generator: signature does not verify" in verdict.summary()


def test_another_trusted_root_refuses_them(
    client: RegistryClient, published: Callable[..., Any]
) -> None:
    staging = TrustedRoots(
        named={"production": load_trusted_root(DATA / "trusted_root.staging.json")}
    )
    ref, _ = published("v1.4.0")
    verdict = _verify(client, staging, ref, _policy())
    assert not verdict.passed
    assert "Rekor SET does not verify against the trusted root" in verdict.summary()
