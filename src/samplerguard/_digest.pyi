"""Batched SHA-256 (OpenSSL) and bulk copies with the GIL released; see _native/digest.c."""

from collections.abc import Sequence

from typing_extensions import Buffer

def sha256_many(items: Sequence[tuple[Buffer, Buffer]], /) -> list[bytes]: ...
def copy_into(dst: Buffer, offset: int, src: Buffer, /) -> int: ...
def digest_records(
    body: Buffer, records: Sequence[tuple[int, tuple[tuple[bytes, int, int], ...]]], /
) -> list[str]: ...
