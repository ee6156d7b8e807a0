"""RFC 6962 §2.1 Merkle tree hashing, with RFC 6962/9162 inclusion proofs.

These are public so auditors can recompute a root with nothing but ``hashlib``:

* leaf hash   = SHA-256(0x00 ‖ data)
* node hash   = SHA-256(0x01 ‖ left ‖ right)
* MTH({})     = SHA-256("")
* MTH(D[n])   = node(MTH(D[0:k]), MTH(D[k:n])) with k the largest power of two < n
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from samplerguard.errors import MalformedInputError

__all__ = [
    "EMPTY_ROOT",
    "inclusion_proof",
    "leaf_hash",
    "merkle_root",
    "merkle_root_from_hashes",
    "node_hash",
    "verify_inclusion",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()
_MAX_PROOF = 64  # a tree of 2**64 leaves needs 64 siblings; anything longer is forged
_BYTES = (bytes, bytearray, memoryview)


def _int(name: str, value: Any) -> int:
    # bool is an int, 3.0 is not a position: both are refused
    if type(value) is not int:
        raise MalformedInputError(f"{name} must be an integer, got {type(value).__name__}")
    return value


def _bytes(name: str, value: Any) -> bytes:
    if not isinstance(value, _BYTES):
        raise MalformedInputError(f"{name} must be bytes, got {type(value).__name__}")
    return bytes(value)


def _proof(proof: Any) -> list[bytes]:
    if isinstance(proof, (str, *_BYTES)) or not isinstance(proof, Sequence):
        raise MalformedInputError(f"proof must be a sequence of hashes, got {type(proof).__name__}")
    if len(proof) > _MAX_PROOF:
        return [b""] * (_MAX_PROOF + 1)  # refused by shape below, without copying a huge list
    return [_bytes("proof entry", p) for p in proof]


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n ≥ 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def merkle_root_from_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH over already-hashed leaves, iteratively (no recursion depth limits)."""
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    # Bottom-up pairing gives the same tree as the RFC's left-balanced split: at every level
    # pair adjacent nodes and carry an odd last node up unchanged.
    level = list(hashes)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The RFC 6962 Merkle Tree Hash of the leaf *data* ``leaves``."""
    return merkle_root_from_hashes([leaf_hash(d) for d in leaves])


def _path(hashes: Sequence[bytes], index: int) -> list[bytes]:
    n = len(hashes)
    if n <= 1:
        return []
    k = _split(n)
    if index < k:
        return [*_path(hashes[:k], index), merkle_root_from_hashes(hashes[k:])]
    return [*_path(hashes[k:], index - k), merkle_root_from_hashes(hashes[:k])]


def inclusion_proof(leaves: Sequence[bytes], index: int, *, hashed: bool = False) -> list[bytes]:
    """The audit path PATH(index, D[n]) of RFC 6962 §2.1.1, leaf-to-root order.

    ``leaves`` is leaf data, or leaf hashes when ``hashed`` is true.
    """
    if not 0 <= _int("index", index) < len(leaves):
        raise MalformedInputError(f"leaf index {index} is outside a tree of size {len(leaves)}")
    hashes = list(leaves) if hashed else [leaf_hash(d) for d in leaves]
    return _path(hashes, index)


def root_from_inclusion(
    leaf_hash_: bytes, index: int, tree_size: int, proof: Sequence[bytes]
) -> bytes | None:
    """RFC 9162 §2.1.3.2: the root implied by a proof, or None if the proof has the wrong shape.
    Arguments of the wrong type raise :class:`MalformedInputError`."""
    leaf_hash_ = _bytes("leaf hash", leaf_hash_)
    index, tree_size = _int("index", index), _int("tree_size", tree_size)
    proof = _proof(proof)
    if not 0 <= index < tree_size or len(proof) > _MAX_PROOF:
        return None
    if any(len(p) != 32 for p in proof):
        return None
    fn, sn = index, tree_size - 1
    r = leaf_hash_
    for p in proof:
        if sn == 0:
            return None
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        return None
    return r


def verify_inclusion(
    leaf_data: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """True iff ``leaf_data`` sits at ``index`` in the tree of ``tree_size`` with ``root``.
    Arguments of the wrong type (a float index, a str proof) raise
    :class:`MalformedInputError`; well-typed but wrong values give False."""
    root = _bytes("root", root)
    got = root_from_inclusion(leaf_hash(_bytes("leaf data", leaf_data)), index, tree_size, proof)
    return got is not None and len(root) == 32 and got == root
