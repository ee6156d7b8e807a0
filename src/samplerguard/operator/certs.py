"""The webhook's serving certificate: a self-signed CA, a leaf it issues, rotation before expiry.

The state lives in one Secret (``kubernetes.io/tls``) the operator owns; Helm never templates
it, so ``helm upgrade`` cannot overwrite it. Keys::

    tls.crt / tls.key   the serving leaf (webhook and operator ingest), mounted by the webhook
    ca.crt / ca.key     the current CA
    ca-bundle.crt       what goes into every webhook's ``clientConfig.caBundle``: the current CA
                        and, while it is still valid, the previous one, so that rotating the
                        CA never breaks an apiserver that still holds the old bundle

Rotation (:func:`plan`): the leaf is re-issued when less than ``leaf_renew_before`` of its
life is left, or when its names changed; the CA when less than ``ca_renew_before`` is left.
Everything here is pure (no API calls) so it is tested with real certificates and a clock.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from samplerguard.errors import MalformedInputError

__all__ = ["CertPolicy", "CertState", "issue_ca", "issue_leaf", "plan"]

Clock = dt.datetime


@dataclass(frozen=True)
class CertPolicy:
    """Lifetimes and names. Defaults follow cert-manager's: a leaf of 90 days renewed 30 days
    ahead, a CA of 5 years renewed one year ahead."""

    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...] = ()
    leaf_days: float = 90
    leaf_renew_before_days: float = 30
    ca_days: int = 5 * 365
    ca_renew_before_days: int = 365
    common_name: str = "samplerguard-webhook"


@dataclass(frozen=True)
class CertState:
    """The Secret's data, PEM bytes by key. Empty = nothing there yet."""

    data: dict[str, bytes] = field(default_factory=dict)

    @property
    def ca_bundle(self) -> bytes:
        return self.data.get("ca-bundle.crt") or self.data.get("ca.crt", b"")

    def leaf(self) -> x509.Certificate | None:
        return _load(self.data.get("tls.crt"))

    def ca(self) -> x509.Certificate | None:
        return _load(self.data.get("ca.crt"))


def _load(pem: bytes | None) -> x509.Certificate | None:
    if not pem:
        return None
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise MalformedInputError(
            f"the TLS Secret holds an unparseable certificate: {exc}"
        ) from exc


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def issue_ca(policy: CertPolicy, now: Clock) -> tuple[bytes, bytes]:
    """A new self-signed CA: (cert PEM, key PEM)."""
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{policy.common_name}-ca")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=policy.ca_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _pem(cert), _pem_key(key)


def issue_leaf(
    policy: CertPolicy, ca_pem: bytes, ca_key_pem: bytes, now: Clock
) -> tuple[bytes, bytes]:
    """A serving leaf for ``policy``'s names, signed by the CA: (cert PEM, key PEM)."""
    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise MalformedInputError("the CA key in the TLS Secret is not an EC key")
    key = _key()
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in policy.dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in policy.ip_addresses]
    not_after = min(now + dt.timedelta(days=policy.leaf_days), ca.not_valid_after_utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, policy.common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _pem(cert), _pem_key(key)


def _names(cert: x509.Certificate) -> tuple[set[str], set[str]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set(), set()
    return set(san.get_values_for_type(x509.DNSName)), {
        str(a) for a in san.get_values_for_type(x509.IPAddress)
    }


@dataclass(frozen=True)
class Plan:
    """What :func:`plan` decided, and why (for the log and the Event)."""

    state: CertState
    changed: bool
    reasons: tuple[str, ...]


def plan(current: CertState, policy: CertPolicy, now: Clock) -> Plan:
    """Decide the next Secret content. Idempotent: a healthy state comes back unchanged."""
    data = dict(current.data)
    reasons: list[str] = []
    try:
        ca = current.ca()
        leaf = current.leaf()
    except MalformedInputError as exc:
        ca, leaf = None, None
        reasons.append(str(exc))
    old_ca_pem: bytes | None = None
    if ca is None or "ca.key" not in data:
        reasons.append("no CA yet")
        data["ca.crt"], data["ca.key"] = issue_ca(policy, now)
        leaf = None
    elif ca.not_valid_after_utc - now < dt.timedelta(days=policy.ca_renew_before_days):
        reasons.append(f"CA expires {ca.not_valid_after_utc:%Y-%m-%d}")
        old_ca_pem = data["ca.crt"]
        data["ca.crt"], data["ca.key"] = issue_ca(policy, now)
        leaf = None
    if leaf is not None:
        left = leaf.not_valid_after_utc - now
        dns, ips = _names(leaf)
        if left < dt.timedelta(days=policy.leaf_renew_before_days):
            reasons.append(f"serving certificate expires {leaf.not_valid_after_utc:%Y-%m-%d}")
            leaf = None
        elif dns != set(policy.dns_names) or ips != set(policy.ip_addresses):
            reasons.append("serving certificate names changed")
            leaf = None
        elif leaf.issuer != x509.load_pem_x509_certificate(data["ca.crt"]).subject:
            reasons.append("serving certificate not issued by the current CA")
            leaf = None
    if leaf is None or "tls.key" not in data:
        if "serving certificate" not in " ".join(reasons) and not reasons:
            reasons.append("no serving certificate yet")
        data["tls.crt"], data["tls.key"] = issue_leaf(policy, data["ca.crt"], data["ca.key"], now)
    # The bundle: the current CA, plus the previous one while it is still valid.
    bundle = [data["ca.crt"]]
    previous = old_ca_pem or _previous_ca(current, data["ca.crt"])
    if previous is not None:
        prev = x509.load_pem_x509_certificate(previous)
        if prev.not_valid_after_utc > now and previous != data["ca.crt"]:
            bundle.append(previous)
    data["ca-bundle.crt"] = b"".join(bundle)
    changed = data != current.data
    return Plan(CertState(data), changed, tuple(reasons) if changed else ())


def _previous_ca(current: CertState, ca_pem: bytes) -> bytes | None:
    """The second certificate of the existing bundle, if any (kept until it expires)."""
    bundle = current.data.get("ca-bundle.crt", b"")
    if not bundle:
        return None
    try:
        certs = x509.load_pem_x509_certificates(bundle)
    except ValueError:
        return None
    for cert in certs:
        pem = _pem(cert)
        if pem != ca_pem:
            return pem
    return None
