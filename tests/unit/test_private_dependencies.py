"""The private parts of dependencies samplerguard relies on are still where it reaches for them.

Each dependency whose private behaviour matters has an upper bound in pyproject.toml; an upgrade
within that bound that moves any of these fails here, by name, rather than as an ImportError or
AttributeError in the middle of an image verification.
"""

from __future__ import annotations

import importlib
import inspect

import pytest


@pytest.mark.parametrize(
    ("module", "name", "params"),
    [
        # supplychain/_sigstore_internals.py
        ("sigstore._internal.trust", "KeyringPurpose", None),
        ("sigstore._utils", "KeyID", None),
        ("sigstore._internal.sct", "verify_sct", ["cert", "chain", "ct_keyring"]),
        ("sigstore.models", "TrustedRoot", None),
        ("sigstore.models", "TransparencyLogEntry", None),
        ("sigstore_models.rekor.v1", "TransparencyLogEntry", None),
        # the operator's peering identity
        ("kopf._core.engines.peering", "Identity", None),
    ],
)
def test_a_private_name_we_import_still_exists(
    module: str, name: str, params: list[str] | None
) -> None:
    found = getattr(importlib.import_module(module), name, None)
    assert found is not None, f"{module}.{name} is gone: adapt its one user and the bound"
    if params is not None:
        assert list(inspect.signature(found).parameters) == params


def test_the_private_members_the_sigstore_adapter_calls_still_exist() -> None:
    from sigstore._internal.trust import KeyringPurpose
    from sigstore.models import TransparencyLogEntry, TrustedRoot

    assert KeyringPurpose.VERIFY.name == "VERIFY"
    for member in ("rekor_keyring", "ct_keyring", "get_fulcio_certs", "_inner"):
        assert hasattr(TrustedRoot, member) or member in TrustedRoot.__init__.__code__.co_names, (
            f"sigstore.models.TrustedRoot.{member} is gone"
        )
    assert callable(TransparencyLogEntry._verify)


def test_the_adapter_works_against_a_real_trusted_root() -> None:
    """The production root names CT logs and Rekor keys: the adapter reads them, and a bogus
    SET under a real Rekor key id is refused by sigstore's own error, not an AttributeError."""
    from sigstore.errors import Error as SigstoreError
    from sigstore.models import ClientTrustConfig

    from samplerguard.supplychain._sigstore_internals import names_ct_logs, verify_rekor_set

    root = ClientTrustConfig.production(offline=True).trusted_root
    assert names_ct_logs(root)
    key_id = bytes(root._inner.tlogs[0].log_id.key_id)
    with pytest.raises(SigstoreError):
        verify_rekor_set(root, key_id, b"\x30\x00", b"data")


def test_torch_foreach_ops_the_gaussian_fill_uses_still_exist() -> None:
    torch = pytest.importorskip("torch")
    x = torch.ones(4)
    torch._foreach_log_([x])
    torch._foreach_tan_([x])
    assert x.tolist() == [0.0] * 4
