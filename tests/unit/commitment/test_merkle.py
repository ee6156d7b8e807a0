"""RFC 6962 hashing against the Certificate Transparency reference vectors, plus properties."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from samplerguard.commitment.merkle import (
    EMPTY_ROOT,
    inclusion_proof,
    leaf_hash,
    merkle_root,
    node_hash,
    verify_inclusion,
)
from samplerguard.errors import MalformedInputError

# Published by the RFC 6962 reference implementations (certificate-transparency-go,
# transparency-dev/merkle testonly): the leaf data and the root for each tree size 0..8.
CT_LEAVES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = {
    (0, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (5, 8): [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}


def test_empty_tree_is_sha256_of_nothing() -> None:
    assert merkle_root([]) == EMPTY_ROOT == hashlib.sha256(b"").digest()


def test_roots_match_the_ct_reference_for_every_size() -> None:
    for n in range(len(CT_LEAVES) + 1):
        assert merkle_root(CT_LEAVES[:n]).hex() == CT_ROOTS[n], f"size {n}"


def test_inclusion_proofs_match_the_ct_reference() -> None:
    root = bytes.fromhex(CT_ROOTS[8])
    for (index, size), want in CT_INCLUSION.items():
        proof = inclusion_proof(CT_LEAVES[:size], index)
        assert [p.hex() for p in proof] == want
        assert verify_inclusion(CT_LEAVES[index], index, size, proof, root)


def test_domain_separation_prefixes() -> None:
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32) == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )


def _reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 written recursively, as the RFC states it."""
    if not leaves:
        return EMPTY_ROOT
    if len(leaves) == 1:
        return leaf_hash(leaves[0])
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return node_hash(_reference_root(leaves[:k]), _reference_root(leaves[k:]))


# Distinct leaves: with two equal leaves, swapping their indices is (correctly) still valid.
leaf_lists = st.lists(st.binary(max_size=40), min_size=1, max_size=70, unique=True)


@given(leaf_lists)
def test_root_equals_the_recursive_definition(leaves: list[bytes]) -> None:
    assert merkle_root(leaves) == _reference_root(leaves)


@given(leaf_lists, st.data())
def test_every_proof_verifies_and_nothing_else_does(
    leaves: list[bytes], data: st.DataObject
) -> None:
    n = len(leaves)
    root = merkle_root(leaves)
    i = data.draw(st.integers(0, n - 1))
    proof = inclusion_proof(leaves, i)
    assert verify_inclusion(leaves[i], i, n, proof, root)
    # wrong data, index, size, root or proof: all refused
    assert not verify_inclusion(leaves[i] + b"!", i, n, proof, root)
    if n > 1:
        assert not verify_inclusion(leaves[i], (i + 1) % n, n, proof, root)
    assert not verify_inclusion(leaves[i], i, n, proof, hashlib.sha256(root).digest())
    if proof:
        j = data.draw(st.integers(0, len(proof) - 1))
        forged = [*proof]
        forged[j] = bytes(b ^ 1 for b in forged[j])
        assert not verify_inclusion(leaves[i], i, n, forged, root)
        assert not verify_inclusion(leaves[i], i, n, proof[:-1], root)
    assert not verify_inclusion(leaves[i], i, n, [*proof, b"\x00" * 32], root)


@given(
    st.binary(max_size=8),
    st.integers(-5, 100),
    st.integers(-5, 100),
    st.lists(st.binary(min_size=0, max_size=40), max_size=70),
)
def test_garbage_proofs_never_verify_and_never_raise(
    leaf: bytes, index: int, size: int, proof: list[bytes]
) -> None:
    assert verify_inclusion(leaf, index, size, proof, b"\x00" * 32) is False


def test_out_of_range_proof_request_is_an_error() -> None:
    with pytest.raises(MalformedInputError, match="outside a tree of size 3"):
        inclusion_proof([b"a", b"b", b"c"], 3)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((b"x", 0.0, 1, [], b"\0" * 32), "index must be an integer, got float"),
        ((b"x", True, 2, [b"\0" * 32], b"\0" * 32), "index must be an integer, got bool"),
        ((b"x", 0, "1", [], b"\0" * 32), "tree_size must be an integer, got str"),
        (("x", 0, 1, [], b"\0" * 32), "leaf data must be bytes, got str"),
        ((b"x", 0, 1, None, b"\0" * 32), "proof must be a sequence of hashes, got NoneType"),
        ((b"x", 0, 2, "ab" * 32, b"\0" * 32), "proof must be a sequence of hashes, got str"),
        ((b"x", 0, 2, [1], b"\0" * 32), "proof entry must be bytes, got int"),
        ((b"x", 0, 1, [], None), "root must be bytes, got NoneType"),
    ],
)
def test_wrongly_typed_arguments_raise_our_error_not_type_error(
    args: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(MalformedInputError, match=message):
        verify_inclusion(*args)


def test_an_index_outside_the_tree_is_our_error() -> None:
    with pytest.raises(MalformedInputError, match="outside a tree of size 2"):
        inclusion_proof([b"a", b"b"], 2)
    with pytest.raises(MalformedInputError, match="index must be an integer"):
        inclusion_proof([b"a", b"b"], 1.0)  # type: ignore[arg-type]
    assert not verify_inclusion(b"a", 5, 2, [], b"\0" * 32)  # well-typed, wrong: False
