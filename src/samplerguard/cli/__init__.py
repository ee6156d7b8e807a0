"""The ``samplerguard`` command line.

Every subcommand lives in its own module in this package and exposes two names::

    def register(sub: argparse._SubParsersAction) -> None   # adds its parser
    def run(args: argparse.Namespace) -> int                # returns the exit code

``register`` must call ``parser.set_defaults(_run=run)``. Modules are discovered, so adding a
command never touches this file. Imports of heavy dependencies (torch) belong inside ``run``
so that ``samplerguard webhook --help`` works on an install without the ``ml`` extra.

Exit codes, everywhere: 0 success/accept, 1 reject/fail, 2 unusable input or usage error.

Every option ``--some-option`` falls back to the variable ``SAMPLERGUARD_SOME_OPTION``
(:mod:`samplerguard.cli._options`); ``--help`` shows both and the default.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from samplerguard.cli._options import EnvError, apply_env, document

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_REJECT = 1
EXIT_UNUSABLE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="samplerguard",
        description="Verifiable diffusion sampling: signed images, committed trajectories, "
        "spot-checked re-execution.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeatable)"
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="log lines as text or as one JSON object each",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    document(parser)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("samplerguard")
    except PackageNotFoundError:
        return "(not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        apply_env(parser, argv)
    except EnvError as exc:
        print(f"samplerguard: error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.log_format == "json":
        from samplerguard.telemetry.logs import JsonFormatter

        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return EXIT_UNUSABLE
    code: int = run(args)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
