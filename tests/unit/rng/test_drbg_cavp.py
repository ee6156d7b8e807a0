"""Every SHA-256 and AES-256 case of NIST's CAVP DRBG response files, parsed from the files."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from samplerguard.errors import MalformedInputError
from tests.support.cavp import parse_rsp, run_case, supported

FILES = [
    ("no_reseed", "HMAC_DRBG.rsp"),
    ("pr_false", "HMAC_DRBG.rsp"),
    ("no_reseed", "CTR_DRBG.rsp"),
    ("pr_false", "CTR_DRBG.rsp"),
]


@pytest.mark.parametrize(("folder", "name"), FILES)
def test_every_supported_case_passes(shared_testdata: Path, folder: str, name: str) -> None:
    path = shared_testdata / "drbg" / folder / name
    ran: Counter[str] = Counter()
    skipped: set[str] = set()
    failures = []
    for case in parse_rsp(path):
        if not supported(case):
            skipped.add(case.algorithm)
            continue
        ran[case.algorithm] += 1
        if run_case(case) != case.returned_bits:
            failures.append(str(case))
    assert not failures, f"{len(failures)} cases fail, first: {failures[:3]}"
    # Every group our mechanisms cover was exercised, with a reseed where the file has one.
    expected = {"SHA-256"} if name.startswith("HMAC") else {"AES-256 use df", "AES-256 no df"}
    assert set(ran) == expected
    assert all(n >= 100 for n in ran.values()), ran
    # What we do not implement is other hashes / key sizes, never a SHA-256/AES-256 variant.
    assert not any(s in ("SHA-256",) or s.startswith("AES-256") for s in skipped)


def test_a_wrong_expected_value_would_fail(shared_testdata: Path) -> None:
    case = next(
        c
        for c in parse_rsp(shared_testdata / "drbg" / "pr_false" / "CTR_DRBG.rsp")
        if c.algorithm == "AES-256 use df"
    )
    flipped = bytes([case.returned_bits[0] ^ 1]) + case.returned_bits[1:]
    assert run_case(case) != flipped


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "x.rsp"
    p.write_text(text)
    return p


def _head(shared_testdata: Path, lines: int) -> str:
    text = (shared_testdata / "drbg" / "pr_false" / "HMAC_DRBG.rsp").read_text()
    return "\n".join(text.splitlines()[:lines]) + "\n"


def test_truncated_file_is_refused(shared_testdata: Path, tmp_path: Path) -> None:
    # Cut in the middle of the first case: ReturnedBits is missing.
    text = _head(shared_testdata, 22)
    with pytest.raises(MalformedInputError, match=r"ReturnedBits.*truncated"):
        list(parse_rsp(_write(tmp_path, text)))


def test_value_shorter_than_its_header_is_refused(shared_testdata: Path, tmp_path: Path) -> None:
    text = _head(shared_testdata, 26).replace("EntropyInput = 79349bbf", "EntropyInput = 7934")
    with pytest.raises(MalformedInputError, match="EntropyInput is 112 bits, the header says 128"):
        list(parse_rsp(_write(tmp_path, text)))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no CAVP cases"),
        ("[SHA-256]\nCOUNT = 0\nEntropyInput = abc\n", "even-length hex"),
        ("[SHA-256]\nCOUNT = 0\nEntropyInput = zz\n", "even-length hex"),
        ("COUNT = 0\n", "before any"),
        ("[SHA-256\n", "unterminated header"),
        ("[SHA-256]\nEntropyInput = 00\n", "outside a case"),
        ("[SHA-256]\nCOUNT = x\n", "no number"),
        ("[SHA-256]\ngarbage line\n", "expected 'Name = value'"),
    ],
)
def test_malformed_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(MalformedInputError, match=message):
        list(parse_rsp(_write(tmp_path, text)))


def test_binary_and_missing_files_are_refused(tmp_path: Path) -> None:
    p = tmp_path / "bin.rsp"
    p.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(MalformedInputError, match="not an ASCII"):
        list(parse_rsp(p))
    with pytest.raises(MalformedInputError, match="cannot read"):
        list(parse_rsp(tmp_path / "absent.rsp"))
