"""Sigstore bundles (v0.1, v0.2, v0.3) verified with sigstore-python's :class:`Verifier`,
offline, against a configurable trusted root.

Two shapes occur: a *message signature* over an artefact (``verify_artifact_bundle``, e.g.
a model file or a wheel) and a *DSSE envelope* around an in-toto statement
(``verify_dsse_bundle``: attestations, and cosign's image signatures in the bundle format,
whose statement has predicate type :data:`COSIGN_SIGN_PREDICATE` and the image digest as
subject). Identities are the policy's :class:`KeylessIdentity` list (exact or regex).

Both bind what they verify to what it is about: the artefact's bytes, or the digest that
one of the statement's subjects must carry. A DSSE bundle that verifies but is about another
artefact is refused here, so no caller can forget the subject check.
"""

from __future__ import annotations

import threading
from typing import Any

from cryptography import x509

from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.policy.spec import KeylessIdentity
from samplerguard.supplychain.dsse import Envelope, Statement
from samplerguard.supplychain.keyless import CertificateIdentity, certificate_identity

__all__ = ["COSIGN_SIGN_PREDICATE", "verify_artifact_bundle", "verify_dsse_bundle"]

COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
MAX_BUNDLE_BYTES = 1 << 20


class _IdentityPolicy:
    """A sigstore ``VerificationPolicy`` over the policy's identities (any of them)."""

    def __init__(self, identities: list[KeylessIdentity]) -> None:
        self.identities = identities
        self.seen: CertificateIdentity | None = None

    def verify(self, cert: x509.Certificate) -> None:
        from sigstore.errors import VerificationError as SigstoreVerificationError

        self.seen = certificate_identity(cert)
        if not self.seen.matches_any(self.identities):
            raise SigstoreVerificationError(
                f"certificate identity mismatch (got {self.seen}, expected "
                + " or ".join(_describe(i) for i in self.identities)
                + ")"
            )


def _describe(ident: KeylessIdentity) -> str:
    subject = ident.subject if ident.subject is not None else f"~/{ident.subject_reg_exp}/"
    issuer = ident.issuer if ident.issuer is not None else f"~/{ident.issuer_reg_exp}/"
    return f"{subject} (issuer {issuer})"


def _load(raw: bytes) -> Any:
    from sigstore.models import Bundle

    if len(raw) > MAX_BUNDLE_BYTES:
        raise MalformedInputError(f"bundle is {len(raw)} bytes (at most {MAX_BUNDLE_BYTES})")
    try:
        return Bundle.from_json(raw)
    except Exception as exc:  # sigstore raises InvalidBundle, ValueError, KeyError, …
        raise MalformedInputError(f"not a Sigstore bundle: {exc}") from None


_VERIFIERS: dict[int, tuple[Any, Any]] = {}
_VERIFIERS_LOCK = threading.Lock()


def _verifier(trusted_root: Any) -> Any:
    """One sigstore Verifier per trusted root (building one parses the root's certificates)."""
    from sigstore.verify import Verifier

    with _VERIFIERS_LOCK:
        cached = _VERIFIERS.get(id(trusted_root))
        if cached is not None and cached[0] is trusted_root:
            return cached[1]
    try:
        verifier = Verifier(trusted_root=trusted_root)
    except Exception as exc:
        raise MalformedInputError(f"trusted root unusable for bundles: {exc}") from None
    with _VERIFIERS_LOCK:
        if len(_VERIFIERS) > 64:
            _VERIFIERS.clear()
        # Holding the root keeps its id from being reused while the entry lives.
        _VERIFIERS[id(trusted_root)] = (trusted_root, verifier)
    return verifier


def verify_artifact_bundle(
    raw: bytes, artifact: bytes, identities: list[KeylessIdentity], trusted_root: Any
) -> CertificateIdentity:
    """Verify a message-signature bundle over ``artifact``; returns the signer's identity."""
    from sigstore.errors import Error as SigstoreError

    bundle = _load(raw)
    policy = _IdentityPolicy(identities)
    try:
        _verifier(trusted_root).verify_artifact(artifact, bundle, policy)
    except SigstoreError as exc:
        raise VerificationError(f"Sigstore bundle does not verify: {exc}") from None
    assert policy.seen is not None
    return policy.seen


def verify_dsse_bundle(
    raw: bytes,
    identities: list[KeylessIdentity],
    trusted_root: Any,
    *,
    digest: str,
) -> tuple[Statement, CertificateIdentity]:
    """Verify a DSSE bundle about ``digest`` (``sha256:<hex>``); returns the in-toto statement
    and the signer's identity. Raises :class:`VerificationError` when the bundle does not
    verify or none of the statement's subjects carries ``digest``."""
    from sigstore.errors import Error as SigstoreError

    bundle = _load(raw)
    policy = _IdentityPolicy(identities)
    try:
        payload_type, payload = _verifier(trusted_root).verify_dsse(bundle, policy)
    except SigstoreError as exc:
        raise VerificationError(f"Sigstore bundle does not verify: {exc}") from None
    assert policy.seen is not None
    statement = Envelope(str(payload_type), bytes(payload), ()).statement()
    if not statement.names_digest(digest):
        raise VerificationError(
            f"Sigstore bundle ({statement.predicate_type}) is for another artifact (subject "
            f"digest mismatch: got {statement.subject_digests()[:4]}, expected {digest})"
        )
    return statement, policy.seen
