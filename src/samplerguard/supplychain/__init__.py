"""Supply-chain verification for sampler images: an OCI registry client, cosign signatures
(key-based and keyless), Sigstore bundles, in-toto/DSSE attestations, SLSA provenance and
the binding of ML artefacts (golden digests).

The façade::

    client = RegistryClient(credentials=DockerConfig.from_dockerconfigjson(raw))
    verifier = ImageVerifier(client, trusted_roots=TrustedRoots.from_files(default=path))
    verdict = verifier.verify("reg/acme/sampler:1.0", policy.spec, policy_name="prod")
    verdict.passed, verdict.digest, verdict.checks, verdict.reasons

Rejections come back as a verdict with ``passed=False``; an unreachable registry raises
:class:`~samplerguard.errors.TemporaryError`; a bad reference raises
:class:`~samplerguard.errors.MalformedInputError`.
"""

from samplerguard.supplychain.auth import Credentials, DockerConfig
from samplerguard.supplychain.reference import ImageReference, parse_reference
from samplerguard.supplychain.registry import (
    Descriptor,
    Manifest,
    ManifestNotFoundError,
    RegistryAuthError,
    RegistryClient,
    RegistryUnavailableError,
)
from samplerguard.supplychain.sigstore_bundles import (
    verify_artifact_bundle,
    verify_dsse_bundle,
    verify_key_bundle,
)
from samplerguard.supplychain.trust import TrustedRoots, load_trusted_root
from samplerguard.supplychain.verdict import CheckResult, ImageVerdict
from samplerguard.supplychain.verifier import ImageVerifier, glob_candidates

__all__ = [
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
