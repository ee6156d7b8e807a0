"""The sigstore-python internals samplerguard relies on, all in this one module.

sigstore-python's public API verifies whole Sigstore bundles (``sigstore.verify.Verifier``). It
has no public call for the pieces that cosign's legacy signature layout needs checked one at a
time: a Rekor inclusion promise (SET) over cosign's ``rekor-bundle`` annotation, the inclusion
proof of a bare log entry, and a certificate's embedded SCTs. Those three checks, and the
question whether a trusted root names any CT log, reach into sigstore's private modules
(``sigstore._internal``, ``sigstore._utils``) and private members; nothing else in samplerguard
does. ``pyproject.toml`` bounds ``sigstore`` below its next major version, and
``tests/unit/test_private_dependencies.py`` fails loudly when an upgrade moves any of
what is used here. Errors are sigstore's own (``sigstore.errors.Error``): callers translate them.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509

__all__ = [
    "names_ct_logs",
    "verify_certificate_sct",
    "verify_rekor_entry",
    "verify_rekor_set",
]


def verify_rekor_set(trusted_root: Any, key_id: bytes, signature: bytes, data: bytes) -> None:
    """Verify a signature over ``data`` by the Rekor key ``key_id`` of the trusted root."""
    from sigstore._internal.trust import KeyringPurpose
    from sigstore._utils import KeyID

    keyring = trusted_root.rekor_keyring(KeyringPurpose.VERIFY)
    keyring.verify(key_id=KeyID(key_id), signature=signature, data=data)


def verify_rekor_entry(trusted_root: Any, entry: dict[str, Any]) -> None:
    """Verify a Rekor v1 ``TransparencyLogEntry`` (its inclusion proof and checkpoint, and its
    promise when it has one) against the trusted root's Rekor keys. A malformed entry raises
    :class:`ValueError`."""
    from sigstore._internal.trust import KeyringPurpose
    from sigstore.models import TransparencyLogEntry
    from sigstore_models.rekor.v1 import TransparencyLogEntry as _Entry

    parsed = TransparencyLogEntry(_Entry.from_dict(entry))
    parsed._verify(trusted_root.rekor_keyring(KeyringPurpose.VERIFY))


def names_ct_logs(trusted_root: Any) -> bool:
    """Whether the trusted root lists any certificate transparency log."""
    return bool(list(trusted_root._inner.ctlogs))


def verify_certificate_sct(
    trusted_root: Any, cert: x509.Certificate, chain: list[x509.Certificate]
) -> None:
    """Verify the certificate's embedded SCT against the trusted root's CT log keys."""
    from sigstore._internal.sct import verify_sct
    from sigstore._internal.trust import KeyringPurpose

    verify_sct(cert, chain, trusted_root.ct_keyring(KeyringPurpose.VERIFY))
