from __future__ import annotations

import hashlib

import torch

from samplerguard.commitment.digest import module_digest, tensor_digest, tensor_header


def test_digest_is_sha256_of_header_and_little_endian_bytes() -> None:
    t = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float32)
    want = hashlib.sha256(b"sg-tensor-v1|float32|2x2|" + t.numpy().astype("<f4").tobytes())
    assert tensor_digest(t) == "sha256:" + want.hexdigest()
    assert tensor_header("float32", (2, 2)) == b"sg-tensor-v1|float32|2x2|"


def test_dtype_and_shape_are_bound() -> None:
    t = torch.arange(6, dtype=torch.float32)
    assert tensor_digest(t) != tensor_digest(t.reshape(2, 3))
    assert tensor_digest(t) != tensor_digest(t.to(torch.float64))
    assert tensor_digest(t.to(torch.bfloat16)) != tensor_digest(t.to(torch.float16))


def test_layout_does_not_matter_only_values() -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    assert tensor_digest(t.t()) == tensor_digest(t.t().contiguous())


def test_scalars_and_empty_tensors() -> None:
    assert (
        tensor_digest(torch.tensor(1.5))
        == "sha256:"
        + hashlib.sha256(
            b"sg-tensor-v1|float32||" + torch.tensor(1.5).numpy().tobytes()
        ).hexdigest()
    )
    assert tensor_digest(torch.empty(0, 3)).startswith("sha256:")


def test_module_digest_changes_with_any_weight() -> None:
    m = torch.nn.Linear(3, 2)
    before = module_digest(m)
    with torch.no_grad():
        m.bias[0] += 1e-7
    assert module_digest(m) != before
