"""Verification errors carry their check: every raise site names one, callers read it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import samplerguard
from samplerguard.errors import CHECKS, VerificationError

_PACKAGE = Path(samplerguard.__file__).parent
#: The packages whose rejections reach reports and metrics through ``VerificationError.check``:
#: the checks, the verifier, and the reference programs the re-check runs.
_CHECKED = ("commitment", "verifier", "families", "models", "rng/escrow.py", "rng/noise.py")


def _raise_sites() -> list[tuple[str, int, ast.Call]]:
    sites = []
    for part in _CHECKED:
        root = _PACKAGE / part
        for path in [root] if root.is_file() else sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Name)
                    and node.func.id == "VerificationError"
                ):
                    sites.append((str(path.relative_to(_PACKAGE)), node.lineno, node))
    return sites


def test_the_scan_sees_the_raise_sites() -> None:
    """The scan below is not vacuous: the re-check alone raises dozens."""
    files = {name for name, _, _ in _raise_sites()}
    assert {"commitment/recheck.py", "commitment/transcript.py", "verifier/check.py"} <= files
    assert len(_raise_sites()) > 60


def test_every_verification_error_names_a_known_check() -> None:
    missing, unknown = [], []
    for name, line, call in _raise_sites():
        check = next((k.value for k in call.keywords if k.arg == "check"), None)
        if check is None:
            missing.append(f"{name}:{line}")
        elif isinstance(check, ast.Constant):
            if check.value not in CHECKS:
                unknown.append(f"{name}:{line}: {check.value!r}")
        elif ast.unparse(check) != "exc.check":  # a re-raise keeps the check it wraps
            unknown.append(f"{name}:{line}: {ast.unparse(check)}")
    assert not missing, f"VerificationError without check=: {missing}"
    assert not unknown, f"check outside samplerguard.errors.CHECKS: {unknown}"


def test_the_fields_are_kept_short_and_the_message_whole() -> None:
    exc = VerificationError("x" * 300, check="digest", found="f" * 500, expected="sha256:ab")
    assert str(exc) == "x" * 300
    assert exc.check == "digest" and exc.expected == "sha256:ab"
    assert exc.found is not None and len(exc.found) == 200
    plain = VerificationError("no check")
    assert (plain.check, plain.found, plain.expected) == (None, None, None)


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_every_check_is_a_metric_reason(check: str) -> None:
    """The verifier reports ``exc.check`` as the outcome's reason: none may fold into other."""
    from samplerguard.telemetry.attributes import VERIFICATION_REASONS, normalise

    assert normalise(check, VERIFICATION_REASONS) == check
