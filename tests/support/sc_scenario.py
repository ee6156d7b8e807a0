"""The scenario the supply-chain integration tests share: constants, the published image and
the policy that names its signers (imported by conftest.py and the tests)."""

from __future__ import annotations

from dataclasses import dataclass

from samplerguard.policy.spec import (
    AttestationRule,
    Authority,
    GoldenDigests,
    ImageRule,
    KeyAuthority,
    KeylessAuthority,
    KeylessIdentity,
    SamplerPolicySpec,
)
from tests.support.publish import Signer

BUILDER = "https://github.com/acme/sampler/.github/workflows/release.yml@refs/heads/main"
REPO = "https://github.com/acme/sampler"
WEIGHTS = "sha256:" + "ab" * 32
SCHEDULER = "sha256:" + "cd" * 32
CI_ID = "https://github.com/acme/sampler/.github/workflows/release.yml@refs/heads/main"
CI_ISSUER = "https://token.actions.githubusercontent.com"


@dataclass
class Published:
    ref: str
    digest: str
    release: Signer
    ci: Signer


def policy_for(
    pub: Published,
    *,
    threshold: int = 1,
    keyless: bool = False,
    attest: bool = True,
    golden: GoldenDigests | None = None,
    identity: KeylessIdentity | None = None,
) -> SamplerPolicySpec:
    authorities = [Authority(name="release", key=KeyAuthority(public_key=pub.release.public_pem))]
    if keyless:
        authorities.append(
            Authority(
                name="ci",
                keyless=KeylessAuthority(
                    identities=[identity or KeylessIdentity(subject=CI_ID, issuer=CI_ISSUER)],
                    trusted_root="private",
                ),
            )
        )
    return SamplerPolicySpec(
        images=[
            ImageRule(glob="127.0.0.1:*/acme/**", authorities=authorities, threshold=threshold)
        ],
        attestations=[
            AttestationRule(
                name="slsa",
                builder_ids=[BUILDER],
                source_uris=["github.com/acme/sampler"],
                source_refs=["refs/heads/main"],
            )
        ]
        if attest
        else [],
        golden_digests=golden or GoldenDigests(),
    )
