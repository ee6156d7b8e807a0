"""The sidecar's Ed25519 signing key: generated at first start, kept on its volume.

The key file is created with ``O_EXCL`` and mode 0600, so two sidecars starting on one volume
cannot both write a key, and a restart signs with the same key (commitments stay verifiable
against the published public key).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from samplerguard.errors import MalformedInputError

__all__ = ["create_key", "load_key", "load_or_create_key", "public_pem"]


def public_pem(key: Ed25519PrivateKey) -> str:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def load_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file at ``path``; :class:`MalformedInputError` when it
    cannot be read or is not one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MalformedInputError(f"cannot read {path}: {exc.strerror}") from None
    try:
        key = load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise MalformedInputError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise MalformedInputError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def create_key(path: Path) -> Ed25519PrivateKey:
    """A new key written to ``path`` (``O_EXCL``, mode 0600); ``FileExistsError`` when a file is
    already there: a key is never overwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def load_or_create_key(path: Path) -> tuple[Ed25519PrivateKey, bool]:
    """The key at ``path``, creating it if absent. Returns ``(key, created)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return create_key(path), True
    except FileExistsError:
        return load_key(path), False
