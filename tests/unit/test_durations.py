"""Durations have one format: policies, flags, SAMPLERGUARD_* variables and the chart."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from samplerguard.cli import build_parser, main
from samplerguard.cli._options import EnvError, duration, env_name, seconds, subparsers
from samplerguard.durations import format_duration, parse_duration
from samplerguard.sidecar.config import SidecarConfig

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0.0),
        ("30s", 30.0),
        ("5m", 300.0),
        ("72h", 259200.0),
        ("1h30m", 5400.0),
        ("90d", 7776000.0),
        ("500ms", 0.5),
        ("1.5s", 1.5),
    ],
)
def test_parse_duration(text: str, value: float) -> None:
    assert parse_duration(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "10", "10x", "-5m", "5 m", "m", "1h-30m", "1" * 40 + "s"])
def test_parse_duration_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match=r"is not a duration; write it as Go does, e\.g\. 30s"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0s"),
        (0.5, "500ms"),
        (1.5, "1s500ms"),
        (300.0, "5m"),
        (5400.0, "1h30m"),
        (86400.0 * 90, "90d"),
        (90061.0, "1d1h1m1s"),
    ],
)
def test_format_duration_round_trips(value: float, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text) == pytest.approx(value)


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_format_duration_refuses_what_is_not_a_duration(value: float) -> None:
    with pytest.raises(ValueError, match="is not a duration in seconds"):
        format_duration(value)


def test_options_read_durations_and_bare_seconds() -> None:
    assert seconds("10m") == 600.0
    assert seconds(" 8 ") == 8.0  # a bare number: seconds, as these options took before
    assert seconds("2.5") == 2.5
    with pytest.raises(argparse.ArgumentTypeError, match="'10x' is not a duration"):
        duration("10x")
    with pytest.raises(ValueError, match="is not a duration"):
        seconds("1e9")


def _duration_options() -> list[tuple[str, argparse.Action]]:
    return [
        (command, action)
        for command, parser in sorted(subparsers(build_parser()).items())
        for action in parser._actions
        if action.type is duration
    ]


def test_every_time_option_takes_a_duration_and_no_name_carries_a_unit() -> None:
    found = {(c, a.option_strings[-1]) for c, a in _duration_options()}
    assert {
        ("operator", "--audit-interval"),
        ("operator", "--cert-check"),
        ("operator", "--leaf-lifetime"),
        ("operator", "--leaf-renew-before"),
        ("webhook", "--deadline"),
        ("webhook", "--fresh-ttl"),
        ("webhook", "--last-known-good-ttl"),
        ("webhook", "--failure-ttl"),
        ("webhook", "--registry-timeout"),
        ("sidecar", "--integrity-interval"),
        ("sidecar", "--policy-refresh"),
        ("sidecar", "--retention"),
        ("verifier", "--interval"),
        ("verifier", "--timeout"),
        ("export-trajectory", "--timeout"),
        ("verify-image", "--timeout"),
    } <= found
    units = ("-seconds", "-secs", "-s", "-ms", "-days", "-minutes", "-hours")
    for command, parser in subparsers(build_parser()).items():
        for action in parser._actions:
            for flag in action.option_strings:
                assert not flag.endswith(units), (command, flag)
            if action.type is float and action.help:
                assert "second" not in action.help, (command, action.option_strings)


def test_help_shows_duration_defaults_as_they_are_typed(capsys: pytest.CaptureFixture[str]) -> None:
    for command, action in _duration_options():
        default = action.default
        if default is None:
            continue
        assert isinstance(default, str), (command, action.option_strings)
        parse_duration(default)
        assert action.metavar == "DURATION"
    with pytest.raises(SystemExit):
        main(["operator", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--audit-interval DURATION background audit period; 0 disables it (default: 10m)" in out
    with pytest.raises(SystemExit):
        main(["sidecar", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    defaults = SidecarConfig()
    assert f"(default: {format_duration(defaults.integrity_interval)})" in out
    assert "(default: 5m) [env SAMPLERGUARD_INTEGRITY_INTERVAL]" in out
    assert "(default: 1d) [env SAMPLERGUARD_RETENTION]" in out


@pytest.mark.parametrize(
    ("command", "dest"),
    [(c, a.dest) for c, a in _duration_options()],
    ids=[f"{c}{a.option_strings[-1]}" for c, a in _duration_options()],
)
def test_every_duration_variable_takes_the_format(
    command: str, dest: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from samplerguard.cli._options import apply_env

    parser = build_parser()
    sub = subparsers(parser)[command]
    action = next(a for a in sub._actions if a.dest == dest)
    name = env_name(action)
    assert name is not None
    monkeypatch.setenv(name, "1h30m")
    apply_env(parser, [command])
    assert sub.get_default(dest) == 5400.0
    monkeypatch.setenv(name, "90 minutes")
    with pytest.raises(EnvError, match=f"{name}='90 minutes': '90 minutes' is not a duration"):
        apply_env(build_parser(), [command])


def test_a_bad_duration_flag_is_one_usage_line() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "samplerguard", "verifier", "--interval", "5 minutes"],
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "argument --interval: '5 minutes' is not a duration; write it as Go does" in proc.stderr


def test_the_sidecar_reads_its_duration_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    from samplerguard.cli.sidecar import _config

    args = build_parser().parse_args(["sidecar"])
    monkeypatch.setenv("SAMPLERGUARD_INTEGRITY_INTERVAL", "10m")
    monkeypatch.setenv("SAMPLERGUARD_POLICY_REFRESH", "45")
    monkeypatch.setenv("SAMPLERGUARD_RETENTION", "72h")
    config = _config(args)
    assert isinstance(config, SidecarConfig)
    assert (config.integrity_interval, config.policy_refresh) == (600.0, 45.0)
    assert config.retention == 72 * 3600.0
    monkeypatch.setenv("SAMPLERGUARD_RETENTION", "3 days")
    with pytest.raises(ValueError, match="SAMPLERGUARD_RETENTION='3 days': '3 days' is not a dur"):
        _config(args)


def test_the_operator_refuses_a_certificate_without_a_lifetime(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["operator", "--leaf-lifetime", "0s"]) == 2
    assert "--leaf-lifetime must be longer than 0s" in capsys.readouterr().out
