"""Read and write the recipe inside a safetensors checkpoint, and hash what it governs.

The safetensors layout is ``u64 little-endian header length N ‖ N bytes of JSON header ‖ data``.
The header maps tensor names to ``{dtype, shape, data_offsets}`` and may hold ``__metadata__``,
a string-to-string map. We parse it ourselves (no torch, no safetensors import), so the webhook
and the CLI can read recipes, and we check it as strictly as safetensors does: bounded header,
offsets inside the file, contiguous and non-overlapping, sizes matching dtype × shape.

Digests:

* **weights** (``sg-weights-v1``): SHA-256 over the canonical JSON list, sorted by name, of
  ``{"name", "dtype", "shape", "sha256"}`` per tensor, where ``sha256`` is over that tensor's
  bytes. It does not depend on the header's layout or on ``__metadata__``.
* **metadata**: SHA-256 over the canonical JSON of ``__metadata__`` without the recipe key.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.recipe.model import MAX_RECIPE_BYTES, RECIPE_KEY, Recipe, RecipeHashes

__all__ = [
    "MAX_HEADER_BYTES",
    "Checkpoint",
    "TensorInfo",
    "metadata_digest",
    "read_checkpoint",
    "read_recipe",
    "verify_hashes",
    "weights_digest",
    "write_recipe",
]

#: Headers above this are refused before they are read (safetensors itself allows 100 MB).
MAX_HEADER_BYTES = 16 << 20
_MAX_METADATA_VALUE = 4 * MAX_RECIPE_BYTES
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
_CHUNK = 1 << 20


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class Checkpoint:
    """A parsed safetensors header: tensors, metadata, where the data starts."""

    path: Path
    header_len: int
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def data_start(self) -> int:
        return 8 + self.header_len

    @property
    def parameters(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors)

    @property
    def recipe(self) -> Recipe | None:
        text = self.metadata.get(RECIPE_KEY)
        if text is None:
            return None
        return Recipe.from_json(text, source=f"the recipe in {self.path}")


def _fail(path: Path, what: str) -> MalformedInputError:
    return MalformedInputError(f"{path} is not a usable safetensors file: {what}")


def _parse_header(path: Path, fh: BinaryIO, size: int) -> Checkpoint:
    prefix = fh.read(8)
    if len(prefix) != 8:
        raise _fail(path, f"{size} bytes is shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", prefix)
    if n > MAX_HEADER_BYTES:
        raise _fail(path, f"header of {n} bytes exceeds the {MAX_HEADER_BYTES}-byte limit")
    if 8 + n > size:
        raise _fail(path, f"header claims {n} bytes but the file has {size - 8} after the prefix")
    raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(path, f"header is not UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _fail(path, "header is not a JSON object")
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _fail(path, "__metadata__ must map strings to strings")
    for key, value in metadata.items():
        if len(value) > _MAX_METADATA_VALUE:
            raise _fail(path, f"__metadata__[{key!r}] is {len(value)} characters (too large)")
    data_len = size - 8 - n
    tensors = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise _fail(path, f"tensor {name!r} needs exactly dtype, shape and data_offsets")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in _DTYPE_BYTES:
            raise _fail(path, f"tensor {name!r} has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise _fail(path, f"tensor {name!r} has a malformed shape")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise _fail(path, f"tensor {name!r} has data offsets outside the {data_len}-byte data")
        if offsets[1] - offsets[0] != math.prod(shape) * _DTYPE_BYTES[dtype]:
            raise _fail(path, f"tensor {name!r}: {dtype}{shape} does not fill its offsets")
        tensors.append(TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1]))
    # safetensors' rule: the tensors tile the data section exactly, without gaps or overlaps.
    cursor = 0
    for t in sorted(tensors, key=lambda t: (t.begin, t.end)):
        if t.begin != cursor:
            raise _fail(path, f"tensor {t.name!r} starts at {t.begin}, expected {cursor}")
        cursor = t.end
    if cursor != data_len:
        raise _fail(path, f"data section is {data_len} bytes but the tensors cover {cursor}")
    return Checkpoint(path, n, tuple(tensors), dict(metadata))


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Parse and check a safetensors header (the data is not read)."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            return _parse_header(p, fh, os.fstat(fh.fileno()).st_size)
    except OSError as exc:
        raise MalformedInputError(f"cannot read {p}: {exc.strerror}") from None


def read_recipe(path: str | os.PathLike[str]) -> Recipe:
    """The recipe embedded in a checkpoint; :class:`MalformedInputError` if there is none."""
    ckpt = read_checkpoint(path)
    recipe = ckpt.recipe
    if recipe is None:
        raise MalformedInputError(f"{ckpt.path} has no {RECIPE_KEY!r} entry in __metadata__")
    return recipe


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def weights_digest(ckpt: Checkpoint) -> str:
    """``sha256:…`` of the tensors (``sg-weights-v1``, see the module doc)."""
    entries = []
    with ckpt.path.open("rb") as fh:
        for t in sorted(ckpt.tensors, key=lambda t: t.name):
            fh.seek(ckpt.data_start + t.begin)
            h = hashlib.sha256()
            left = t.end - t.begin
            while left:
                chunk = fh.read(min(left, _CHUNK))
                if not chunk:
                    raise _fail(ckpt.path, "the file shrank while it was hashed")
                h.update(chunk)
                left -= len(chunk)
            entries.append(
                {"name": t.name, "dtype": t.dtype, "shape": list(t.shape), "sha256": h.hexdigest()}
            )
    return "sha256:" + hashlib.sha256(b"sg-weights-v1" + _canonical(entries)).hexdigest()


def metadata_digest(metadata: dict[str, str]) -> str:
    rest = {k: v for k, v in metadata.items() if k != RECIPE_KEY}
    return "sha256:" + hashlib.sha256(_canonical(rest)).hexdigest()


def verify_hashes(path: str | os.PathLike[str], recipe: Recipe | None = None) -> Recipe:
    """Check the checkpoint's weights and metadata against its recipe's hashes (or the given
    recipe's). Raises :class:`VerificationError` on a mismatch or a recipe without hashes."""
    ckpt = read_checkpoint(path)
    recipe = recipe or read_recipe(path)
    if recipe.hashes is None:
        raise VerificationError(f"recipe {recipe.model_id!r} pins no hashes; nothing to verify")
    got = weights_digest(ckpt)
    if got != recipe.hashes.weights:
        raise VerificationError(
            f"weights hash mismatch for {ckpt.path.name} "
            f"(got '{got}', expected '{recipe.hashes.weights}')"
        )
    if recipe.hashes.metadata is not None:
        got_meta = metadata_digest(ckpt.metadata)
        if got_meta != recipe.hashes.metadata:
            raise VerificationError(
                f"metadata hash mismatch for {ckpt.path.name} "
                f"(got '{got_meta}', expected '{recipe.hashes.metadata}')"
            )
    return recipe


def write_recipe(
    src: str | os.PathLike[str],
    recipe: Recipe,
    dst: str | os.PathLike[str],
    *,
    pin_hashes: bool = True,
) -> Recipe:
    """Copy checkpoint ``src`` to ``dst`` with ``recipe`` in its metadata (replacing any earlier
    one). With ``pin_hashes`` the recipe's hashes are set from ``src`` first. ``dst`` is written
    through a temporary file and renamed into place; ``src == dst`` is allowed. Returns the
    recipe as written."""
    ckpt = read_checkpoint(src)
    if pin_hashes:
        recipe = recipe.model_copy(
            update={
                "hashes": RecipeHashes(
                    weights=weights_digest(ckpt), metadata=metadata_digest(ckpt.metadata)
                )
            }
        )
    text = recipe.to_json()
    if len(text) > MAX_RECIPE_BYTES:
        raise MalformedInputError(f"the recipe is {len(text)} bytes; at most {MAX_RECIPE_BYTES}")
    header: dict[str, Any] = {"__metadata__": {**ckpt.metadata, RECIPE_KEY: text}}
    for t in sorted(ckpt.tensors, key=lambda t: t.begin):
        header[t.name] = {
            "dtype": t.dtype,
            "shape": list(t.shape),
            "data_offsets": [t.begin, t.end],
        }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # safetensors pads the header to 8 bytes with spaces
    out = Path(dst)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with ckpt.path.open("rb") as fin, tmp.open("wb") as fout:
            fout.write(struct.pack("<Q", len(raw)) + raw)
            fin.seek(ckpt.data_start)
            while chunk := fin.read(_CHUNK):
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise MalformedInputError(f"cannot write {out}: {exc.strerror}") from None
    return recipe
