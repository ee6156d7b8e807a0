"""Batched SHA-256 (OpenSSL) with the GIL released once per batch; see _native/digest.c."""

from collections.abc import Sequence

from typing_extensions import Buffer

def sha256_many(items: Sequence[tuple[Buffer, Buffer]], /) -> list[bytes]: ...
