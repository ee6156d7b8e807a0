"""Certificate issuance and rotation, with real certificates and a moving clock."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from samplerguard.operator.certs import CertPolicy, CertState, plan

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
POLICY = CertPolicy(
    dns_names=("samplerguard-webhook.samplerguard.svc", "samplerguard-webhook"),
    ip_addresses=("127.0.0.1",),
)


def _verify_chain(leaf_pem: bytes, ca_pem: bytes) -> x509.Certificate:
    leaf = x509.load_pem_x509_certificate(leaf_pem)
    ca = x509.load_pem_x509_certificate(ca_pem)
    pub = ca.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    leaf.verify_directly_issued_by(ca)  # raises on a wrong issuer or signature
    return leaf


def test_first_plan_issues_ca_and_leaf_for_the_names() -> None:
    p = plan(CertState(), POLICY, NOW)
    assert p.changed and "no CA yet" in p.reasons
    data = p.state.data
    leaf = _verify_chain(data["tls.crt"], data["ca.crt"])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == set(POLICY.dns_names)
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert leaf.not_valid_after_utc - NOW == dt.timedelta(days=90)
    assert data["ca-bundle.crt"] == data["ca.crt"]
    ca = x509.load_pem_x509_certificate(data["ca.crt"])
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_healthy_state_is_left_alone() -> None:
    first = plan(CertState(), POLICY, NOW).state
    again = plan(first, POLICY, NOW + dt.timedelta(days=59))
    assert not again.changed and again.state.data == first.data


def test_leaf_is_rotated_before_expiry_under_the_same_ca() -> None:
    first = plan(CertState(), POLICY, NOW).state
    later = plan(first, POLICY, NOW + dt.timedelta(days=61))
    assert later.changed
    assert any("serving certificate expires" in r for r in later.reasons)
    assert later.state.data["ca.crt"] == first.data["ca.crt"]
    assert later.state.data["tls.crt"] != first.data["tls.crt"]
    _verify_chain(later.state.data["tls.crt"], first.data["ca.crt"])


def test_ca_rotation_keeps_the_old_ca_in_the_bundle() -> None:
    first = plan(CertState(), POLICY, NOW).state
    when = NOW + dt.timedelta(days=5 * 365 - 300)
    rotated = plan(first, POLICY, when)
    assert any("CA expires" in r for r in rotated.reasons)
    data = rotated.state.data
    assert data["ca.crt"] != first.data["ca.crt"]
    bundle = x509.load_pem_x509_certificates(data["ca-bundle.crt"])
    assert len(bundle) == 2  # new CA + old CA still valid: in-flight apiservers keep working
    _verify_chain(data["tls.crt"], data["ca.crt"])
    # Once the old CA has expired it leaves the bundle.
    gone = plan(rotated.state, POLICY, NOW + dt.timedelta(days=5 * 365 + 1))
    assert len(x509.load_pem_x509_certificates(gone.state.data["ca-bundle.crt"])) == 1


def test_changed_names_reissue_the_leaf() -> None:
    first = plan(CertState(), POLICY, NOW).state
    moved = CertPolicy(dns_names=("other.samplerguard.svc",))
    p = plan(first, moved, NOW)
    assert p.changed and "serving certificate names changed" in p.reasons


@pytest.mark.parametrize(
    "data",
    [
        {"ca.crt": b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n"},
        {"tls.crt": b"not pem at all"},
    ],
)
def test_corrupt_secret_is_replaced_not_crashed_on(data: dict[str, bytes]) -> None:
    p = plan(CertState(data), POLICY, NOW)
    assert p.changed
    _verify_chain(p.state.data["tls.crt"], p.state.data["ca.crt"])
