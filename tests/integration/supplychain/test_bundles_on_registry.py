"""A real Sigstore DSSE bundle attached to an image on the real registry. distribution 2.8
has no referrers API, so it is found through the OCI 1.1 fallback tag ``sha256-<hex>``."""

from __future__ import annotations

from pathlib import Path

import pytest

from samplerguard.policy.spec import (
    AttestationRule,
    Authority,
    ImageRule,
    KeyAuthority,
    KeylessAuthority,
    KeylessIdentity,
    SamplerPolicySpec,
)
from samplerguard.supplychain import (
    ImageVerifier,
    RegistryClient,
    TrustedRoots,
    load_trusted_root,
)
from tests.support.publish import Signer, attach_bundle, push_image, sign_image
from tests.support.supplychain import LocalRegistry

pytestmark = pytest.mark.registry

# The in-toto statement of a.dsse.staging-rekor-v2.txt.sigstore.json is about this digest.
SUBJECT = "sha256:a0cfc71271d6e278e57cd332ff957c3f7043fdda354c4cbb190a30d56efa01bf"
BEACON = (
    "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/"
    ".github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main"
)
GHA = "https://token.actions.githubusercontent.com"


def _spec(release: Signer) -> SamplerPolicySpec:
    return SamplerPolicySpec(
        images=[
            ImageRule(
                glob="127.0.0.1:*/bundles/**",
                authorities=[
                    Authority(name="release", key=KeyAuthority(public_key=release.public_pem)),
                    Authority(
                        name="beacon",
                        keyless=KeylessAuthority(
                            identities=[KeylessIdentity(subject=BEACON, issuer=GHA)],
                            trusted_root="staging",
                        ),
                    ),
                ],
            )
        ],
        attestations=[
            AttestationRule(
                name="slsa",
                predicate_type="https://slsa.dev/provenance/v1",
                builder_ids=[
                    "https://github.com/sigstore-conformance/rekor2-dsse-hashedrekord-regen"
                ],
            )
        ],
    )


def test_bundle_found_through_the_fallback_tag(
    registry: LocalRegistry, client: RegistryClient, shared_testdata: Path
) -> None:
    sig = shared_testdata / "sigstore"
    raw = (sig / "a.dsse.staging-rekor-v2.txt.sigstore.json").read_bytes()
    roots = TrustedRoots(named={"staging": load_trusted_root(sig / "trusted_root.staging.json")})
    release = Signer.generate()
    name = f"{registry.host}/bundles/model"
    sign_image(client, name, SUBJECT, release)
    attach_bundle(client, name, SUBJECT, raw)
    verdict = ImageVerifier(client, trusted_roots=roots).verify(
        f"{name}@{SUBJECT}", _spec(release), policy_name="p"
    )
    assert verdict.passed, verdict.summary()
    slsa = next(c for c in verdict.checks if c.name == "attestation/slsa")
    assert "bundle referrer" in slsa.detail and BEACON in slsa.detail

    # The same bundle attached to a real image of the repository is for another image.
    other = push_image(client, f"{name}:1.0")
    sign_image(client, name, other, release)
    attach_bundle(client, name, other, raw)
    verdict = ImageVerifier(client, trusted_roots=roots).verify(
        f"{name}:1.0", _spec(release), policy_name="p"
    )
    assert not verdict.passed
    assert [c.name for c in verdict.failed] == ["attestation/slsa"]
    assert "is for another artifact" in verdict.failed[0].detail
