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

sigstore-python verifies DSSE bundles only with ``dsse`` and Rekor v2 entries, and every bundle
only with an inclusion proof and a certificate. Real bundles exceed that: npm's and GitHub's
early attestations log ``intoto`` 0.0.2 entries, v0.1 bundles carry only the inclusion
promise, and npm's publish attestations are signed with a managed key. Those are verified
here, step by step as for cosign's annotations (:mod:`~samplerguard.supplychain.keyless`):

1. the inclusion promise (SET) with the trusted root's Rekor keys; an inclusion proof, when
   present, is verified too (Merkle path and signed checkpoint);
2. keyless: the certificate chain at the log's integration time, SCT, profile and identity;
   managed key: the policy's key;
3. the DSSE signature over the PAE;
4. the log entry is about this payload, signature and signer.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.policy.spec import KeylessIdentity
from samplerguard.supplychain._sigstore_internals import verify_rekor_entry
from samplerguard.supplychain.dsse import Envelope, Statement, decode_b64
from samplerguard.supplychain.keyless import (
    CertificateIdentity,
    certificate_identity,
    check_entry_binds,
    verify_inclusion_promise,
    verify_keyless,
)
from samplerguard.supplychain.keys import PublicKey

__all__ = [
    "COSIGN_SIGN_PREDICATE",
    "verify_artifact_bundle",
    "verify_dsse_bundle",
    "verify_key_bundle",
]

COSIGN_SIGN_PREDICATE = "https://sigstore.dev/cosign/sign/v1"
MAX_BUNDLE_BYTES = 1 << 20
_BUNDLE_V01 = "application/vnd.dev.sigstore.bundle+json;version=0.1"
_MEDIA_TYPES = frozenset(
    {
        _BUNDLE_V01,
        "application/vnd.dev.sigstore.bundle+json;version=0.2",
        "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle.v0.3+json",
    }
)


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

    parts = _Parts.parse(raw)
    if parts.needs_own_path and parts.envelope is None and parts.certificate_pem is not None:
        # A v0.1 bundle with the inclusion promise only: the promise dates the signature.
        parts.verify_log(trusted_root)
        return verify_keyless(
            certificate_pem=parts.certificate_pem,
            chain_pem=parts.chain_pem,
            rekor_bundle=parts.rekor_bundle,
            signature=parts.signature,
            signed_bytes=artifact,
            payload=artifact,
            identities=identities,
            trusted_root=trusted_root,
        )
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
    """Verify a keyless DSSE bundle about ``digest`` (``<algorithm>:<hex>``, e.g. an image's
    ``sha256:…``); returns the in-toto statement and the signer's identity. Raises
    :class:`VerificationError` when the bundle does not verify or none of the statement's
    subjects carries ``digest``."""
    from sigstore.errors import Error as SigstoreError

    parts = _Parts.parse(raw)
    if parts.certificate_pem is None:
        raise VerificationError(
            "Sigstore bundle is signed with a managed key, not a certificate (expected a "
            "keyless signer)"
        )
    if parts.needs_own_path:
        parts.verify_log(trusted_root)
        identity = verify_keyless(
            certificate_pem=parts.certificate_pem,
            chain_pem=parts.chain_pem,
            rekor_bundle=parts.rekor_bundle,
            signature=parts.signature,
            signed_bytes=parts.dsse.pae,
            payload=parts.dsse.payload,
            identities=identities,
            trusted_root=trusted_root,
        )
        return _bound(parts.dsse, digest), identity
    bundle = _load(raw)
    policy = _IdentityPolicy(identities)
    try:
        payload_type, payload = _verifier(trusted_root).verify_dsse(bundle, policy)
    except SigstoreError as exc:
        raise VerificationError(f"Sigstore bundle does not verify: {exc}") from None
    assert policy.seen is not None
    return _bound(Envelope(str(payload_type), bytes(payload), ()), digest), policy.seen


def verify_key_bundle(raw: bytes, key: PublicKey, trusted_root: Any, *, digest: str) -> Statement:
    """Verify a managed-key DSSE bundle (``verificationMaterial.publicKey``) about ``digest``
    with ``key``; returns the in-toto statement."""
    parts = _Parts.parse(raw)
    if parts.certificate_pem is not None:
        raise VerificationError(
            "Sigstore bundle is signed with a certificate (expected a managed key)"
        )
    body = parts.verify_log(trusted_root)
    if not key.verify(parts.signature, parts.dsse.pae):
        raise VerificationError(f"DSSE signature does not verify with key ({key.algorithm})")
    check_entry_binds(body, key, parts.signature, parts.dsse.payload)
    return _bound(parts.dsse, digest)


def _bound(envelope: Envelope, digest: str) -> Statement:
    statement = envelope.statement()
    if not statement.names_digest(digest):
        raise VerificationError(
            f"Sigstore bundle ({statement.predicate_type}) is for another artifact (subject "
            f"digest mismatch: got {statement.subject_digests()[:4]}, expected {digest})"
        )
    return statement


def _b64(value: object, what: str) -> bytes:
    return decode_b64(value, what, where="Sigstore bundle")


def _pem(der: bytes, what: str) -> bytes:
    try:
        return x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)
    except ValueError:
        raise MalformedInputError(f"Sigstore bundle {what} is not a certificate") from None


@dataclass(frozen=True)
class _Parts:
    """A bundle taken apart, in the shapes the step-by-step verification takes."""

    media_type: str
    #: None for a message signature
    envelope: Envelope | None
    signature: bytes = field(repr=False)
    certificate_pem: bytes | None
    chain_pem: bytes | None
    #: cosign's ``dev.sigstore.cosign/bundle`` shape of the log entry and its promise; None
    #: when the entry has no promise (a Rekor v2 entry, dated by a timestamp authority)
    promised: dict[str, Any] | None
    kind: str
    #: the log entry as the bundle holds it, when it carries an inclusion proof
    entry: dict[str, Any] | None

    @property
    def needs_own_path(self) -> bool:
        """Whether sigstore-python refuses this bundle while its format is valid."""
        return self.kind == "intoto" or (self.media_type == _BUNDLE_V01 and self.entry is None)

    @classmethod
    def parse(cls, raw: bytes) -> _Parts:
        if len(raw) > MAX_BUNDLE_BYTES:
            raise MalformedInputError(f"bundle is {len(raw)} bytes (at most {MAX_BUNDLE_BYTES})")
        try:
            doc = json.loads(raw)
            media_type = doc["mediaType"]
            material = doc["verificationMaterial"]
            entries = material["tlogEntries"]
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            raise MalformedInputError(
                "not a Sigstore bundle (no media type, verification material or log entry)"
            ) from None
        if media_type not in _MEDIA_TYPES:
            raise MalformedInputError(
                f"not a Sigstore bundle: unsupported media type {str(media_type)[:80]!r}"
            )
        if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
            raise MalformedInputError("Sigstore bundle must hold exactly one log entry")
        envelope: Envelope | None = None
        if isinstance(doc.get("dsseEnvelope"), dict):
            envelope_doc = doc["dsseEnvelope"]
            envelope = Envelope.from_dict(
                {
                    "payloadType": envelope_doc.get("payloadType"),
                    "payload": envelope_doc.get("payload"),
                    "signatures": envelope_doc.get("signatures"),
                }
            )
            if len(envelope.signatures) != 1:
                raise MalformedInputError("Sigstore bundle DSSE envelope must hold one signature")
            signature = envelope.signatures[0][1]
        elif isinstance(doc.get("messageSignature"), dict):
            signature = _b64(doc["messageSignature"].get("signature"), "message signature")
        else:
            raise MalformedInputError("Sigstore bundle has neither a DSSE envelope nor a signature")
        cert_pem = chain_pem = None
        if isinstance(material.get("certificate"), dict):
            cert_pem = _pem(_b64(material["certificate"].get("rawBytes"), "certificate"), "leaf")
        elif isinstance(material.get("x509CertificateChain"), dict):
            certs = material["x509CertificateChain"].get("certificates")
            if not isinstance(certs, list) or not certs or len(certs) > 8:
                raise MalformedInputError("Sigstore bundle certificate chain must hold 1-8")
            pems = [
                _pem(_b64(c.get("rawBytes") if isinstance(c, dict) else None, "chain"), "chain")
                for c in certs
            ]
            cert_pem, chain_pem = pems[0], b"".join(pems[1:]) or None
        elif not isinstance(material.get("publicKey"), dict):
            raise MalformedInputError("Sigstore bundle has no certificate and no public key")
        entry = entries[0]
        kind = (
            entry.get("kindVersion", {}).get("kind")
            if isinstance(entry.get("kindVersion"), dict)
            else None
        )
        try:
            promise = entry["inclusionPromise"]["signedEntryTimestamp"]
            rekor_bundle: dict[str, Any] | None = {
                "SignedEntryTimestamp": promise,
                "Payload": {
                    "body": entry["canonicalizedBody"],
                    "integratedTime": int(entry["integratedTime"]),
                    "logIndex": int(entry["logIndex"]),
                    "logID": _b64(entry["logId"]["keyId"], "log id").hex(),
                },
            }
        except (KeyError, TypeError, ValueError):
            rekor_bundle = None
        proof = entry.get("inclusionProof")
        has_proof = isinstance(proof, dict) and isinstance(proof.get("checkpoint"), dict)
        return cls(
            media_type,
            envelope,
            signature,
            cert_pem,
            chain_pem,
            rekor_bundle,
            str(kind),
            entry if has_proof else None,
        )

    @property
    def dsse(self) -> Envelope:
        if self.envelope is None:
            raise VerificationError(
                "Sigstore bundle holds a message signature, not a DSSE envelope (expected an "
                "attestation)"
            )
        return self.envelope

    @property
    def rekor_bundle(self) -> dict[str, Any]:
        if self.promised is None:
            raise MalformedInputError(
                "Sigstore bundle log entry lacks its body, integrated time or inclusion promise "
                "(the promise is what dates the signature when no timestamp authority did)"
            )
        return self.promised

    def verify_log(self, trusted_root: Any) -> Any:
        """(1): the inclusion promise, and the inclusion proof when there is one; returns the
        entry body."""
        body, _ = verify_inclusion_promise(self.rekor_bundle, trusted_root)
        if self.entry is not None:
            from sigstore.errors import Error as SigstoreError

            try:
                verify_rekor_entry(trusted_root, self.entry)
            except SigstoreError as exc:
                raise VerificationError(f"Rekor inclusion proof does not verify: {exc}") from None
            except ValueError as exc:
                raise MalformedInputError(f"Rekor inclusion proof is malformed: {exc}") from None
        return body
