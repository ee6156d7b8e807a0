"""One option scheme for every command: ``--some-option`` falls back to
``SAMPLERGUARD_SOME_OPTION``.

:func:`document` appends the default and the variable to every option's help once the parser
is built. :func:`apply_env` turns the variables of the command about to run into defaults, with the
option's own type and choices, so a bad value is one line naming the variable (exit 2), never a
traceback; the variables of other commands are not read. :func:`duration` is the one parser of
durations for flags and variables: Go-style strings (``"72h"``, ``"1h30m"``, ``"500ms"``), as in
policies; a bare number still reads as seconds. Defaults are written in that format too, so
``--help`` shows them as they are typed.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence

from samplerguard.durations import parse_duration

__all__ = ["EnvError", "apply_env", "document", "duration", "env_name", "seconds"]

_SKIP = (argparse._HelpAction, argparse._VersionAction, argparse._CountAction)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class EnvError(ValueError):
    """A ``SAMPLERGUARD_*`` variable holds a value its option refuses."""


def seconds(text: str) -> float:
    """Seconds in a Go-style duration (``ns``…``h``, and ``d`` for days). A bare number is read
    as seconds, as these options took before they took durations. Anything else raises
    ``ValueError`` saying what is expected."""
    text = text.strip()
    if re.fullmatch(r"[0-9]{1,12}(\.[0-9]{1,9})?", text):
        return float(text)
    return parse_duration(text)


def duration(text: str) -> float:
    """:func:`seconds` as an argparse ``type``: a bad value is argparse's one-line usage
    error carrying the reason."""
    try:
        return seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def env_name(action: argparse.Action) -> str | None:
    longs = [s for s in action.option_strings if s.startswith("--")]
    if not longs or isinstance(action, _SKIP) or action.dest.startswith("_"):
        return None
    return "SAMPLERGUARD_" + longs[0][2:].upper().replace("-", "_")


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return list(parser._actions)


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def document(parser: argparse.ArgumentParser) -> None:
    """Add ``(default: …)`` and ``[env SAMPLERGUARD_…]`` to every option's help; duration
    options show ``DURATION`` as their value."""
    for action in _actions(parser):
        name = env_name(action)
        if name is None or action.help == argparse.SUPPRESS:
            continue
        if action.type is duration and action.metavar is None:
            action.metavar = "DURATION"
        text = re.sub(rf"\s*\[(env )?{name}\]", "", action.help or "")
        default = action.default
        if default not in (None, False, [], "") and "default" not in text:
            text += " (default: %(default)s)"
        if "SAMPLERGUARD_" not in text:
            text += f" [env {name}]"
        action.help = text.strip()
    for sub in subparsers(parser).values():
        document(sub)


def _convert(action: argparse.Action, name: str, raw: str) -> object:
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        value = raw.strip().lower()
        if value not in _TRUE | _FALSE:
            raise EnvError(f"{name}={raw!r}: expected true or false")
        return (value in _TRUE) == isinstance(action, argparse._StoreTrueAction)
    convert = action.type if callable(action.type) else str
    many = isinstance(action, argparse._AppendAction)
    items = [p for p in raw.split(",") if p] if many else [raw]
    out: list[object] = []
    for item in items:
        try:
            converted: object = convert(item)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            why = str(exc) or type(exc).__name__
            raise EnvError(f"{name}={raw!r}: {why}") from None
        if action.choices is not None and converted not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise EnvError(f"{name}={raw!r}: expected one of {choices}")
        out.append(converted)
    return out if many else out[0]


def apply_env(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Defaults from the environment for the top-level options, the command in ``argv`` and
    its subcommand (``drift fit``, ``ticket issue``): every option whose help names a variable
    reads it."""
    targets = [parser]
    rest = list(argv)
    while commands := subparsers(targets[-1]):
        at = next((i for i, a in enumerate(rest) if a in commands), None)
        if at is None:
            break
        targets.append(commands[rest[at]])
        rest = rest[at + 1 :]
    for target in targets:
        for action in _actions(target):
            name = env_name(action)
            raw = os.environ.get(name) if name else None
            if name is None or raw is None:
                continue
            value = _convert(action, name, raw)
            target.set_defaults(**{action.dest: value})
            if action.required:
                action.required = False  # the variable supplies it
