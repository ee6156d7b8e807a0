"""Openings: everything recomputing step i → i+1 needs, as one safetensors file.

Tensors (names): ``latent_in``, ``latent_out``, ``state_in/<path>``, ``state_out/<path>``,
``noise/<k>``, ``cond/<name>``. The JSON in ``__metadata__["samplerguard.opening"]`` carries the
request id, step, tree size, root, the opened leaves with their inclusion proofs, and the
sampler-state skeletons. Nothing in an opening is trusted until the re-check has tied it to a
signed root: the parser only guarantees well-formedness and bounded size.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Annotated, Any, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from samplerguard.commitment.state import SamplerState
from samplerguard.commitment.trajectory import TrajectoryRecord, leaf_index_of_step
from samplerguard.errors import MalformedInputError, VerificationError

__all__ = ["MAX_OPENING_BYTES", "METADATA_KEY", "LeafProof", "Opening", "open_step"]

METADATA_KEY = "samplerguard.opening"
MAX_OPENING_BYTES = 256 << 20
MAX_HEADER_BYTES = 1 << 20
_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"}


class LeafProof(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    index: Annotated[int, Field(ge=0, le=4100)]
    data: Annotated[str, Field(max_length=1 << 16)]  # base64 of the canonical JSON leaf
    proof: Annotated[list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]], Field(max_length=64)]

    def leaf_bytes(self) -> bytes:
        try:
            return base64.b64decode(self.data, validate=True)
        except ValueError:
            raise MalformedInputError(f"leaf {self.index} data is not base64") from None

    def proof_bytes(self) -> list[bytes]:
        return [bytes.fromhex(p) for p in self.proof]


class OpeningMeta(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: int = 1
    request_id: Annotated[str, Field(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
    step: Annotated[int, Field(ge=0, le=4095)]
    tree_size: Annotated[int, Field(ge=5, le=4100)]
    root: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    leaves: Annotated[list[LeafProof], Field(min_length=3, max_length=4)]
    state_in: dict[str, Any]
    state_out: dict[str, Any]
    noise_count: Annotated[int, Field(ge=0, le=16)]
    conditioning: Annotated[list[Annotated[str, Field(max_length=64)]], Field(max_length=16)]


class Opening:
    """A parsed opening. Construct with :meth:`from_bytes` or :func:`open_step`."""

    def __init__(self, meta: OpeningMeta, tensors: dict[str, torch.Tensor]) -> None:
        self.meta = meta
        self.tensors = tensors
        for name in ("latent_in", "latent_out"):
            if name not in tensors:
                raise MalformedInputError(f"opening lacks tensor {name!r}")
        for k in range(meta.noise_count):
            if f"noise/{k}" not in tensors:
                raise MalformedInputError(f"opening lacks tensor 'noise/{k}'")
        for c in meta.conditioning:
            if f"cond/{c}" not in tensors:
                raise MalformedInputError(f"opening lacks conditioning tensor {c!r}")
        self.state_in = SamplerState.from_parts(meta.state_in, _prefixed(tensors, "state_in/"))
        self.state_out = SamplerState.from_parts(meta.state_out, _prefixed(tensors, "state_out/"))

    @property
    def step(self) -> int:
        return self.meta.step

    @property
    def latent_in(self) -> torch.Tensor:
        return self.tensors["latent_in"]

    @property
    def latent_out(self) -> torch.Tensor:
        return self.tensors["latent_out"]

    @property
    def noise(self) -> list[torch.Tensor]:
        return [self.tensors[f"noise/{k}"] for k in range(self.meta.noise_count)]

    @property
    def conditioning(self) -> dict[str, torch.Tensor]:
        return {c: self.tensors[f"cond/{c}"] for c in self.meta.conditioning}

    def leaf(self, index: int) -> LeafProof:
        for leaf in self.meta.leaves:
            if leaf.index == index:
                return leaf
        raise VerificationError(
            f"opening does not carry leaf {index}, which step {self.step} needs",
            check="leaf",
            expected=str(index),
        )

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        meta = self.meta.model_dump_json()
        tensors = {k: v.contiguous() for k, v in self.tensors.items()}
        return bytes(save(tensors, metadata={METADATA_KEY: meta}))

    @classmethod
    def from_bytes(cls, data: bytes) -> Opening:
        """Parse an opening. Truncated, oversized or corrupted input raises
        :class:`MalformedInputError` naming what is wrong."""
        meta, tensors = parse_signed_tensors(data, OpeningMeta, METADATA_KEY, "opening")
        return cls(meta, tensors)


Meta = TypeVar("Meta", bound=BaseModel)


def parse_signed_tensors(
    data: bytes, model: type[Meta], key: str, what: str
) -> tuple[Meta, dict[str, torch.Tensor]]:
    """A bounded safetensors file whose ``__metadata__[key]`` is JSON of ``model``: the framing
    is checked before safetensors sees the bytes; anything wrong is a
    :class:`MalformedInputError` naming ``what`` and the problem."""
    meta_json = _check_header(data, key, what)
    try:
        meta = model.model_validate_json(meta_json)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MalformedInputError(
            f"{what} metadata is invalid at {where}: {first['msg']}"
        ) from None
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise MalformedInputError(f"{what} tensors are corrupted: {exc}") from None
    return meta, tensors


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def _check_header(data: bytes, key: str = METADATA_KEY, what: str = "opening") -> str:
    """Validate the safetensors framing ourselves before handing bytes to the parser."""
    if len(data) > MAX_OPENING_BYTES:
        raise MalformedInputError(f"{what} is {len(data)} bytes, over the {MAX_OPENING_BYTES} cap")
    if len(data) < 8:
        raise MalformedInputError(f"{what} is truncated: no safetensors header")
    (n,) = struct.unpack("<Q", data[:8])
    if n > MAX_HEADER_BYTES or 8 + n > len(data):
        raise MalformedInputError(
            f"{what} is truncated or corrupted: header claims {n} bytes, file has {len(data) - 8}"
        )
    try:
        header = json.loads(data[8 : 8 + n])
    except (ValueError, UnicodeDecodeError):
        raise MalformedInputError(f"{what} header is not JSON (corrupted)") from None
    if not isinstance(header, dict):
        raise MalformedInputError(f"{what} header is not a JSON object")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if (
            not isinstance(info, dict)
            or info.get("dtype") not in _DTYPES
            or not isinstance(info.get("data_offsets"), list)
            or len(info["data_offsets"]) != 2
        ):
            raise MalformedInputError(f"{what} tensor {name[:40]!r} has a malformed entry")
        end = max(end, int(info["data_offsets"][1]))
    if 8 + n + end != len(data):
        raise MalformedInputError(
            f"{what} is truncated or padded: tensors need {end} bytes, "
            f"file carries {len(data) - 8 - n}"
        )
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not isinstance(meta.get(key), str):
        raise MalformedInputError(f"{what} has no {key!r} metadata")
    text: str = meta[key]
    return text


def open_step(record: TrajectoryRecord, request_id: str, step: int) -> Opening:
    """Build the opening of ``step`` from a finished trajectory record."""
    if not 0 <= step < record.n_steps:
        raise MalformedInputError(f"step {step} is outside a trajectory of {record.n_steps} steps")
    before, after = record.before(step), record.steps[step]
    indices = sorted({0, 1, leaf_index_of_step(step) - 1, leaf_index_of_step(step)})
    leaves = [
        LeafProof(
            index=i,
            data=base64.b64encode(record.leaves[i]).decode(),
            proof=[p.hex() for p in record.proof(i)],
        )
        for i in indices
    ]
    tensors: dict[str, torch.Tensor] = {"latent_in": before.latent, "latent_out": after.latent}
    tensors.update({f"state_in/{k}": v for k, v in before.state.tensors().items()})
    tensors.update({f"state_out/{k}": v for k, v in after.state.tensors().items()})
    tensors.update({f"noise/{k}": n for k, n in enumerate(after.noise)})
    tensors.update({f"cond/{k}": v for k, v in record.conditioning.items()})
    meta = OpeningMeta(
        request_id=request_id,
        step=step,
        tree_size=record.tree_size,
        root=record.root.hex(),
        leaves=leaves,
        state_in=before.state.skeleton(),
        state_out=after.state.skeleton(),
        noise_count=len(after.noise),
        conditioning=sorted(record.conditioning),
    )
    return Opening(meta, {k: v.detach().cpu().clone() for k, v in tensors.items()})
