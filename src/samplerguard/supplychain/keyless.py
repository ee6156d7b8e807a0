"""Keyless (Fulcio + Rekor) verification of cosign's legacy annotations, offline.

For a layer carrying ``dev.sigstore.cosign/certificate`` and ``dev.sigstore.cosign/bundle``:

1. verify the Rekor inclusion promise (SET) with the trusted root's Rekor key;
2. take the log's integration time as the signing time;
3. build the certificate chain to a Fulcio CA of the trusted root, valid at that time
   (an expired or not-yet-valid certificate fails here);
4. verify the certificate's SCT when the trusted root has CT logs;
5. check the Sigstore X.509 profile: digitalSignature key usage, codeSigning EKU;
6. match the identity (SAN) and OIDC issuer against the authority's identities;
7. verify the signature with the certificate's key;
8. check the log entry is about *these* materials (signature, payload hash and
   certificate), so an entry for something else cannot vouch for them (CVE-2022-36056).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
)
from cryptography.x509.verification import VerificationError as X509VerificationError

from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.policy.spec import KeylessIdentity
from samplerguard.supplychain._sigstore_internals import (
    names_ct_logs,
    verify_certificate_sct,
    verify_rekor_set,
)
from samplerguard.supplychain.keys import PublicKey

__all__ = [
    "CertificateIdentity",
    "certificate_identity",
    "check_entry_binds",
    "verify_inclusion_promise",
    "verify_keyless",
]

_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")


class CertificateIdentity:
    """The identity a Fulcio certificate asserts."""

    def __init__(self, subjects: list[str], issuer: str) -> None:
        self.subjects = subjects
        self.issuer = issuer

    def __str__(self) -> str:
        return f"{' | '.join(self.subjects) or '(no SAN)'} (issuer {self.issuer or '?'})"

    def matches_any(self, identities: list[KeylessIdentity]) -> bool:
        return any(
            ident.matches(self.issuer, subject) for ident in identities for subject in self.subjects
        )


def certificate_identity(cert: x509.Certificate) -> CertificateIdentity:
    subjects: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        subjects += san.get_values_for_type(x509.RFC822Name)
        subjects += san.get_values_for_type(x509.UniformResourceIdentifier)
        for other in san.get_values_for_type(x509.OtherName):
            subjects.append(_der_utf8(other.value))
    except x509.ExtensionNotFound:
        pass
    issuer = ""
    for ext in cert.extensions:
        if ext.oid == _ISSUER_V2 and isinstance(ext.value, x509.UnrecognizedExtension):
            issuer = _der_utf8(ext.value.value)
            break
        if ext.oid == _ISSUER_V1 and isinstance(ext.value, x509.UnrecognizedExtension):
            issuer = ext.value.value.decode("utf-8", "replace")
    return CertificateIdentity(subjects, issuer)


def _der_utf8(raw: bytes) -> str:
    """Decode a DER UTF8String (tag 0x0c); fall back to the raw text."""
    if len(raw) >= 2 and raw[0] == 0x0C:
        length, offset = raw[1], 2
        if length & 0x80:
            n = length & 0x7F
            length, offset = int.from_bytes(raw[2 : 2 + n], "big"), 2 + n
        return raw[offset : offset + length].decode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


def _load_certs(pem: bytes, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise MalformedInputError(f"{what} is not PEM certificates") from None
    if not certs or len(certs) > 8:
        raise MalformedInputError(f"{what} must hold 1–8 certificates")
    return certs


def verify_inclusion_promise(rekor_bundle: dict[str, Any], trusted_root: Any) -> tuple[Any, int]:
    """Verify a Rekor inclusion promise (SET) in cosign's bundle shape (``SignedEntryTimestamp``
    and ``Payload`` with ``body``, ``integratedTime``, ``logIndex``, ``logID``) against the
    trusted root's Rekor keys; returns the entry body (parsed) and its integration time."""
    from sigstore.errors import Error as SigstoreError

    try:
        set_sig = base64.b64decode(rekor_bundle["SignedEntryTimestamp"], validate=True)
        entry = rekor_bundle["Payload"]
        body_b64 = entry["body"]
        integrated = entry["integratedTime"]
        log_index = entry["logIndex"]
        log_id = entry["logID"]
        if not (
            isinstance(body_b64, str)
            and isinstance(integrated, int)
            and isinstance(log_index, int)
            and isinstance(log_id, str)
        ):
            raise TypeError
        key_id = bytes.fromhex(log_id)
        body = json.loads(base64.b64decode(body_b64, validate=True))
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise MalformedInputError("Rekor bundle annotation is malformed") from None
    canonical = rfc8785.dumps(
        {"body": body_b64, "integratedTime": integrated, "logID": log_id, "logIndex": log_index}
    )
    try:
        verify_rekor_set(trusted_root, key_id, set_sig, canonical)
    except SigstoreError as exc:
        raise VerificationError(
            f"Rekor SET does not verify against the trusted root: {exc}"
        ) from None
    return body, integrated


def verify_keyless(
    *,
    certificate_pem: bytes | None,
    chain_pem: bytes | None,
    rekor_bundle: dict[str, Any] | None,
    signature: bytes,
    signed_bytes: bytes,
    payload: bytes,
    identities: list[KeylessIdentity],
    trusted_root: Any,
    envelope: bytes | None = None,
) -> CertificateIdentity:
    """Verify one keyless signature (see the module doc); returns the verified identity.

    ``signed_bytes`` is what the signature covers (the payload for simple signing, the PAE
    for DSSE); ``payload`` is what the log entry hashes; ``envelope`` is the DSSE envelope as
    stored, which an ``intoto`` 0.0.1 entry hashes instead of naming the signature. Raises
    :class:`VerificationError` with the step that failed.
    """
    from sigstore.errors import Error as SigstoreError

    if certificate_pem is None:
        raise VerificationError("keyless signature has no certificate")
    cert = _load_certs(certificate_pem, "certificate")[0]
    intermediates = _load_certs(chain_pem, "certificate chain") if chain_pem else []
    if rekor_bundle is None:
        raise VerificationError("keyless signature has no Rekor bundle (inclusion promise)")

    # (1): the inclusion promise, signed by a Rekor key of the trusted root.
    body, integrated = verify_inclusion_promise(rekor_bundle, trusted_root)

    # (2)+(3): the chain, at the time the log saw the signature.
    try:
        signed_at = datetime.fromtimestamp(integrated, UTC)
    except (OverflowError, OSError, ValueError):
        raise MalformedInputError(f"Rekor integratedTime {integrated} is out of range") from None
    ca_policy = ExtensionPolicy.webpki_defaults_ca().may_be_present(
        x509.ExtendedKeyUsage, Criticality.NON_CRITICAL, None
    )
    ee_policy = ExtensionPolicy.webpki_defaults_ee().may_be_present(
        x509.ExtendedKeyUsage, Criticality.NON_CRITICAL, None
    )
    try:
        verifier = (
            PolicyBuilder()
            .store(Store(trusted_root.get_fulcio_certs()))
            .time(signed_at)
            .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
            .build_client_verifier()
        )
        chain = verifier.verify(cert, intermediates).chain[1:]
    except (X509VerificationError, x509.UnsupportedGeneralNameType) as exc:
        raise VerificationError(
            f"certificate does not chain to a Fulcio root of the trusted root at "
            f"{signed_at.isoformat()} (not before {cert.not_valid_before_utc.isoformat()}, "
            f"not after {cert.not_valid_after_utc.isoformat()}): {exc}"
        ) from None

    # (4): the SCT, when the trusted root names CT logs.
    if names_ct_logs(trusted_root):
        try:
            verify_certificate_sct(trusted_root, cert, chain)
        except SigstoreError as exc:
            raise VerificationError(f"certificate SCT does not verify: {exc}") from None

    # (5): the Sigstore certificate profile.
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise VerificationError("certificate lacks key usage or extended key usage") from None
    if not usage.digital_signature or ExtendedKeyUsageOID.CODE_SIGNING not in eku:
        raise VerificationError("certificate is not for code signing")

    # (6): identity and issuer.
    identity = certificate_identity(cert)
    if not identity.matches_any(identities):
        raise VerificationError(
            f"certificate identity mismatch (got {identity}, expected "
            + " or ".join(_describe(i) for i in identities)
            + ")"
        )

    # (7): the signature itself.
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        raise VerificationError(f"certificate key type {type(key).__name__} is not supported")
    # SHA-256 whatever the curve: cosign loads certificate keys with crypto.SHA256, and
    # sigstore-python prehashes with SHA-256 (a real P-384 staging certificate proves it).
    if not PublicKey(key, "sha256").verify(signature, signed_bytes):
        raise VerificationError("signature does not verify with the certificate's key")

    # (8): the log entry must be about these materials.
    check_entry_binds(body, cert, signature, payload, envelope)
    return identity


def _describe(ident: KeylessIdentity) -> str:
    subject = ident.subject if ident.subject is not None else f"~/{ident.subject_reg_exp}/"
    issuer = ident.issuer if ident.issuer is not None else f"~/{ident.issuer_reg_exp}/"
    return f"{subject} (issuer {issuer})"


def _b64_text(value: object) -> bytes:
    if not isinstance(value, str):
        raise TypeError
    return base64.b64decode(value, validate=True)


def check_entry_binds(
    body: object,
    signer: x509.Certificate | PublicKey,
    signature: bytes,
    payload: bytes,
    envelope: bytes | None = None,
) -> None:
    """Check a Rekor entry body is about these materials: the payload (or envelope) hash, the
    signature and the signer (the certificate, or the public key of a managed-key signer)."""
    payload_hash = hashlib.sha256(payload).hexdigest()
    try:
        if not isinstance(body, dict):
            raise TypeError
        kind, spec = body.get("kind"), body.get("spec")
        if not isinstance(spec, dict):
            raise TypeError
        if kind == "intoto" and body.get("apiVersion") == "0.0.1":
            # 0.0.1 logs the envelope's hash, not its signatures: the signature is bound
            # because it was read from the very envelope whose bytes hash to the entry.
            content = spec["content"]
            logged_envelope = content["hash"]["value"]
            logged_hash = content.get("payloadHash", {}).get("value", payload_hash)
            logged_key = _b64_text(spec["publicKey"])
            if envelope is None:
                raise VerificationError(
                    "Rekor intoto 0.0.1 entry can only vouch for a DSSE envelope"
                )
            envelope_hash = hashlib.sha256(envelope).hexdigest()
            if logged_envelope != envelope_hash:
                raise VerificationError(
                    "Rekor entry is for another envelope (envelope hash mismatch: "
                    f"got {str(logged_envelope)[:64]}, expected {envelope_hash})"
                )
            sigs = [signature]
        elif kind == "hashedrekord":
            sig = spec["signature"]
            logged_sig = _b64_text(sig["content"])
            logged_key = _b64_text(sig["publicKey"]["content"])
            logged_hash = spec["data"]["hash"]["value"]
            sigs = [logged_sig]
        elif kind == "intoto":
            content = spec["content"]
            logged_hash = content["payloadHash"]["value"]
            logged_envelope_doc = content["envelope"]
            sigs = []
            for s in logged_envelope_doc["signatures"]:
                raw = _b64_text(s["sig"])
                with contextlib.suppress(binascii.Error, ValueError):
                    # v0.0.2 double-encodes the signature
                    raw = base64.b64decode(raw, validate=True)
                sigs.append(raw)
            logged_key = _b64_text(logged_envelope_doc["signatures"][0]["publicKey"])
        elif kind == "dsse":
            logged_hash = spec["payloadHash"]["value"]
            sigs = [_b64_text(s["signature"]) for s in spec["signatures"]]
            logged_key = _b64_text(spec["signatures"][0]["verifier"])
        else:
            raise VerificationError(f"Rekor entry kind {str(kind)[:40]!r} is not supported")
    except (KeyError, TypeError, IndexError, ValueError, AttributeError, binascii.Error):
        raise VerificationError(
            f"Rekor entry body is malformed (kind {str(body.get('kind'))[:40]!r}, "
            f"apiVersion {str(body.get('apiVersion'))[:20]!r})"
            if isinstance(body, dict)
            else "Rekor entry body is malformed"
        ) from None
    if logged_hash != payload_hash:
        raise VerificationError(
            "Rekor entry is for other content (payload hash mismatch: "
            f"got {str(logged_hash)[:64]}, expected {payload_hash})"
        )
    if signature not in sigs:
        raise VerificationError("Rekor entry is for another signature")
    if not _same_signer(logged_key, signer):
        what = "certificate" if isinstance(signer, x509.Certificate) else "public key"
        raise VerificationError(f"Rekor entry is for another {what}")


def _same_signer(logged_pem: bytes, signer: x509.Certificate | PublicKey) -> bool:
    try:
        if isinstance(signer, x509.Certificate):
            logged = x509.load_pem_x509_certificate(logged_pem)
            return logged.public_bytes(Encoding.DER) == signer.public_bytes(Encoding.DER)
        logged_key = load_pem_public_key(logged_pem)
    except (ValueError, TypeError):
        return False
    spki = (Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return logged_key.public_bytes(*spki) == signer.key.public_bytes(*spki)
