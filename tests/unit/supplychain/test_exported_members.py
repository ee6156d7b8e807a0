"""The façade is a promise (httpx pins its own the same way)."""

from __future__ import annotations

import samplerguard.supplychain as sc


def test_exported_members() -> None:
    assert sorted(sc.__all__) == [
        "CheckResult",
        "Credentials",
        "Descriptor",
        "DockerConfig",
        "ImageReference",
        "ImageVerdict",
        "ImageVerifier",
        "Manifest",
        "ManifestNotFoundError",
        "RegistryAuthError",
        "RegistryClient",
        "RegistryUnavailableError",
        "TrustedRoots",
        "glob_candidates",
        "load_trusted_root",
        "parse_reference",
        "verify_artifact_bundle",
        "verify_dsse_bundle",
        "verify_key_bundle",
    ]
    for name in sc.__all__:
        assert getattr(sc, name) is not None


def test_verdict_reasons_name_image_policy_check() -> None:
    verdict = sc.ImageVerdict(
        image="ghcr.io/acme/x:1",
        digest="sha256:" + "a" * 64,
        policy="prod",
        passed=False,
        checks=(
            sc.CheckResult("resolve", True, "ok"),
            sc.CheckResult(
                "attestation/slsa", False, "builder id mismatch (got 'a', expected 'b')"
            ),
        ),
    )
    assert verdict.reasons == [
        "image ghcr.io/acme/x:1 (sha256:" + "a" * 64 + ") denied by policy 'prod': "
        "attestation/slsa: builder id mismatch (got 'a', expected 'b')"
    ]
    assert verdict.pinned == "ghcr.io/acme/x@sha256:" + "a" * 64
