"""Read NIST CAVP DRBG response files (``*.rsp``) and run their cases against our DRBGs.

The files are groups of cases under bracketed headers (``[SHA-256]``, ``[AES-256 use df]``,
``[EntropyInputLen = 256]`` …); each case is ``COUNT = n`` followed by ``Name = hex`` lines. A
case's flow is: instantiate; reseed if the case has ``EntropyInputReseed``; generate once per
``AdditionalInput`` (with ``EntropyInputPR`` when prediction resistance is on); the last output is
``ReturnedBits``.

A truncated or corrupted file raises :class:`~samplerguard.errors.MalformedInputError` naming the
line; a value whose length disagrees with its group header is refused the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from samplerguard.errors import MalformedInputError
from samplerguard.rng.drbg import CtrDrbg, Drbg, HmacDrbg

__all__ = ["CavpCase", "parse_rsp", "run_case", "supported"]

_MAX_FILE_BYTES = 64 << 20
_HEX = re.compile(r"^[0-9a-fA-F]*$")
_LEN_KEYS = {
    "EntropyInputLen": ("EntropyInput", "EntropyInputReseed", "EntropyInputPR"),
    "NonceLen": ("Nonce",),
    "PersonalizationStringLen": ("PersonalizationString",),
    "AdditionalInputLen": ("AdditionalInput", "AdditionalInputReseed"),
    "ReturnedBitsLen": ("ReturnedBits",),
}


@dataclass(frozen=True)
class CavpCase:
    """One case: its group (``SHA-256``, ``AES-256 use df`` …), header parameters and values."""

    algorithm: str
    params: dict[str, str]
    count: int
    line: int
    entropy_input: bytes
    nonce: bytes
    personalization: bytes
    returned_bits: bytes
    additional_inputs: list[bytes] = field(default_factory=list)
    entropy_pr: list[bytes] = field(default_factory=list)
    entropy_reseed: bytes | None = None
    additional_reseed: bytes = b""

    @property
    def prediction_resistance(self) -> bool:
        return self.params.get("PredictionResistance", "False") == "True"

    def __str__(self) -> str:
        return f"[{self.algorithm}] COUNT={self.count} (line {self.line})"


def _finish(
    algorithm: str, params: dict[str, str], count: int, line: int, values: dict[str, list[bytes]]
) -> CavpCase:
    where = f"case [{algorithm}] COUNT = {count} at line {line}"
    for required in ("EntropyInput", "Nonce", "PersonalizationString", "ReturnedBits"):
        if len(values.get(required, [])) != 1:
            raise MalformedInputError(
                f"{where} has {len(values.get(required, []))} {required} lines; expected 1 "
                "(truncated file?)"
            )
    additional = values.get("AdditionalInput", [])
    if not additional:
        raise MalformedInputError(f"{where} has no AdditionalInput lines (truncated file?)")
    # Every value must have the length its group header declares.
    for len_key, names in _LEN_KEYS.items():
        if len_key not in params:
            continue
        try:
            bits = int(params[len_key])
        except ValueError:
            raise MalformedInputError(f"[{len_key} = {params[len_key]}] is not a number") from None
        for name in names:
            for value in values.get(name, []):
                if len(value) * 8 != bits:
                    raise MalformedInputError(
                        f"{where}: {name} is {len(value) * 8} bits, the header says {bits}"
                    )
    reseed = values.get("EntropyInputReseed")
    return CavpCase(
        algorithm=algorithm,
        params=dict(params),
        count=count,
        line=line,
        entropy_input=values["EntropyInput"][0],
        nonce=values["Nonce"][0],
        personalization=values["PersonalizationString"][0],
        returned_bits=values["ReturnedBits"][0],
        additional_inputs=additional,
        entropy_pr=values.get("EntropyInputPR", []),
        entropy_reseed=reseed[0] if reseed else None,
        additional_reseed=values.get("AdditionalInputReseed", [b""])[0],
    )


def parse_rsp(path: Path) -> Iterator[CavpCase]:
    """Yield every case of a CAVP DRBG ``.rsp`` file, in file order."""
    try:
        size = path.stat().st_size
        if size > _MAX_FILE_BYTES:
            raise MalformedInputError(f"{path} is {size} bytes; the limit is {_MAX_FILE_BYTES}")
        text = path.read_text(encoding="ascii")
    except UnicodeDecodeError as exc:
        raise MalformedInputError(f"{path} is not an ASCII CAVP response file: {exc}") from None
    except OSError as exc:
        raise MalformedInputError(f"cannot read {path}: {exc.strerror}") from None

    algorithm: str | None = None
    params: dict[str, str] = {}
    in_header = False
    case: tuple[int, int, dict[str, list[bytes]]] | None = None
    cases = 0

    def flush() -> Iterator[CavpCase]:
        nonlocal case
        if case is not None:
            assert algorithm is not None
            count, line, values = case
            case = None
            yield _finish(algorithm, params, count, line, values)

    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            yield from flush()
            if not line.endswith("]"):
                raise MalformedInputError(f"{path}:{lineno}: unterminated header {line!r}")
            inner = line[1:-1]
            if "=" in inner:
                key, _, value = inner.partition("=")
                params[key.strip()] = value.strip()
            else:
                if not in_header:
                    params = {}
                algorithm = inner.strip()
            in_header = True
            continue
        in_header = False
        key, sep, value = line.partition("=")
        if not sep:
            raise MalformedInputError(f"{path}:{lineno}: expected 'Name = value', got {line!r}")
        key, value = key.strip(), value.strip()
        if key == "COUNT":
            yield from flush()
            if algorithm is None:
                raise MalformedInputError(f"{path}:{lineno}: a case before any [algorithm] header")
            try:
                count = int(value)
            except ValueError:
                raise MalformedInputError(
                    f"{path}:{lineno}: COUNT {value!r} is no number"
                ) from None
            case = (count, lineno, {})
            cases += 1
            continue
        if case is None:
            raise MalformedInputError(f"{path}:{lineno}: {key} outside a case")
        if not _HEX.match(value) or len(value) % 2:
            raise MalformedInputError(f"{path}:{lineno}: {key} is not an even-length hex string")
        case[2].setdefault(key, []).append(bytes.fromhex(value))
    yield from flush()
    if cases == 0:
        raise MalformedInputError(f"{path} holds no CAVP cases")


def supported(case: CavpCase) -> bool:
    """Whether our DRBGs implement the case's mechanism (SHA-256 HMAC, AES-256 CTR)."""
    return case.algorithm in ("SHA-256", "AES-256 use df", "AES-256 no df")


def _instantiate(case: CavpCase) -> Drbg:
    pr = case.prediction_resistance
    feed = iter(case.entropy_pr)

    def source(n: int) -> bytes:
        try:
            return next(feed)
        except StopIteration:
            raise MalformedInputError(f"{case}: not enough EntropyInputPR values") from None

    src = source if pr else None
    if case.algorithm == "SHA-256":
        return HmacDrbg(
            case.entropy_input,
            case.nonce,
            case.personalization,
            entropy_source=src,
            prediction_resistance=pr,
        )
    if case.algorithm in ("AES-256 use df", "AES-256 no df"):
        use_df = case.algorithm.endswith("use df")
        return CtrDrbg(
            case.entropy_input,
            case.nonce if use_df else b"",
            case.personalization,
            use_df=use_df,
            entropy_source=src,
            prediction_resistance=pr,
        )
    raise MalformedInputError(f"{case}: mechanism {case.algorithm!r} is not implemented")


def run_case(case: CavpCase) -> bytes:
    """Run the case's flow and return the last generate's output (to compare with
    ``case.returned_bits``)."""
    drbg = _instantiate(case)
    if case.entropy_reseed is not None:
        drbg.reseed(case.entropy_reseed, case.additional_reseed)
    out = b""
    for additional in case.additional_inputs:
        out = drbg.generate(
            len(case.returned_bits), additional, prediction_resistance=case.prediction_resistance
        )
    return out
