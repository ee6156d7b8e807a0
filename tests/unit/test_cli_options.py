"""The command line's one option scheme: SAMPLERGUARD_<OPTION>, defaults in help, no tracebacks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from samplerguard.cli import build_parser, main
from samplerguard.cli._options import env_name, subparsers

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _typed_options() -> list[tuple[str, str]]:
    """(command, variable) for one option with a type or choices per command."""
    out = []
    for command, parser in sorted(subparsers(build_parser()).items()):
        for action in parser._actions:
            name = env_name(action)
            breakable = action.choices or action.type not in (None, str, Path)
            if name and breakable:
                out.append((command, name))
                break
    return out


def test_every_command_has_a_typed_option_to_break() -> None:
    commands = {c for c, _ in _typed_options()}
    assert {"operator", "webhook", "verifier", "sidecar", "report"} <= commands


@pytest.mark.parametrize(("command", "variable"), _typed_options())
def test_a_bad_variable_is_one_line_and_exit_2(command: str, variable: str) -> None:
    env = {**os.environ, "PYTHONPATH": SRC, variable: "not-a-valid-value"}
    proc = subprocess.run(
        [sys.executable, "-m", "samplerguard", command, "--help"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0] and "not-a-valid-value" in lines[0]


def test_a_variable_of_another_command_is_not_read(capsys: pytest.CaptureFixture[str]) -> None:
    os.environ["SAMPLERGUARD_AUDIT_INTERVAL"] = "10x"
    try:
        assert main(["crds"]) == 0
    finally:
        del os.environ["SAMPLERGUARD_AUDIT_INTERVAL"]
    assert "ClusterSamplerPolicy" in capsys.readouterr().out


def test_variables_become_defaults_with_the_options_type(monkeypatch: pytest.MonkeyPatch) -> None:
    from samplerguard.cli._options import apply_env

    monkeypatch.setenv("SAMPLERGUARD_AUDIT_INTERVAL", "10m")
    monkeypatch.setenv("SAMPLERGUARD_PLAIN_HTTP", "a:5000,b:5000")
    monkeypatch.setenv("SAMPLERGUARD_NO_AUDIT", "true")
    parser = build_parser()
    apply_env(parser, ["operator"])
    args = parser.parse_args(["operator"])
    assert args.audit_interval == 600.0
    assert args.registry_plain_http == ["a:5000", "b:5000"]
    # the former spelling still parses, into the same place
    args = build_parser().parse_args(["operator", "--registry-plain-http", "c:1"])
    assert args.registry_plain_http == ["c:1"]


def test_a_subcommand_s_options_read_their_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ticket issue`` and ``drift fit`` are a command's subcommands: the variables their help
    names are read as well."""
    key = tmp_path / "gw.key"
    assert main(["ticket", "keygen", "--key", str(key)]) == 0
    capsys.readouterr()
    monkeypatch.setenv("SAMPLERGUARD_TENANT", "acme")
    monkeypatch.setenv("SAMPLERGUARD_LIFETIME", "45")
    assert main(["ticket", "issue", "--key", str(key)]) == 0
    from samplerguard.commitment.ticket import read_ticket

    _, body = read_ticket(capsys.readouterr().out)
    assert body["tenant"] == "acme" and body["expiresAt"] - body["issuedAt"] == 45
    monkeypatch.setenv("SAMPLERGUARD_LIFETIME", "soon")
    assert main(["ticket", "issue", "--key", str(key)]) == 2
    assert "SAMPLERGUARD_LIFETIME='soon'" in capsys.readouterr().err


def test_help_shows_defaults_and_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["verifier", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 127.0.0.1:9472) [env SAMPLERGUARD_LISTEN]" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("samplerguard ")


def test_verifier_on_a_missing_device_is_a_clear_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    policy = Path(__file__).resolve().parents[2] / "policies/demo-tiny.yaml"
    code = main(["verifier", "--once", "--device", "cuda", "--policy", str(policy)])
    assert code == 2
    assert "no CUDA device is available" in caplog.text
