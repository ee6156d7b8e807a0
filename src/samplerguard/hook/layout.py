"""The directory the webhook's init container copies into app containers.

The app container's ``PYTHONPATH`` is prepended with that directory, so Python's ``site`` finds
``sitecustomize.py`` at its top and imports it at start-up; that file installs the hook. The
tree is therefore:

* ``sitecustomize.py``: :mod:`samplerguard.hook.bootstrap`'s, at the top, where ``site``
  looks for it (inside the package it would never run);
* ``samplerguard/``: the package's Python sources (no compiled extensions, which belong to the
  sidecar image's interpreter, and no caches);
* ``rfc8785/``: the one pure-Python dependency of the hook's path that an app image with torch
  and diffusers does not already carry.

The sidecar image builds it with ``python -m samplerguard.hook.layout /opt/samplerguard/python``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["lay_out", "main"]

#: Modules copied beside the package: the hook's pure-Python dependencies outside the app image.
EXTRA_MODULES = ("rfc8785",)

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.pyd")


def _package_dir(name: str) -> Path:
    module = __import__(name)
    path = Path(module.__file__ or "")
    if path.name != "__init__.py":
        raise RuntimeError(f"{name} is not a package directory ({path})")
    return path.parent


def lay_out(dest: Path) -> list[Path]:
    """Write the hook tree into ``dest`` (created; must be empty). Returns its top entries."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty; the hook tree goes into an empty directory")
    package = _package_dir("samplerguard")
    bootstrap = package / "hook" / "bootstrap" / "sitecustomize.py"
    if not bootstrap.is_file():
        raise FileNotFoundError(f"the hook's bootstrap is missing: {bootstrap}")
    written = [dest / "sitecustomize.py", dest / "samplerguard"]
    shutil.copyfile(bootstrap, written[0])
    shutil.copytree(package, written[1], ignore=_IGNORE)
    for name in EXTRA_MODULES:
        target = dest / name
        shutil.copytree(_package_dir(name), target, ignore=_IGNORE)
        written.append(target)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m samplerguard.hook.layout", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("dest", type=Path, help="an empty or absent directory")
    args = parser.parse_args(argv)
    for path in lay_out(args.dest):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
