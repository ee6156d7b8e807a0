"""Digest of the solver code a process actually runs: the diffusers scheduler modules loaded.

``solver_code_digest("EulerDiscreteScheduler")`` hashes the source file of every module in the
scheduler class's method resolution order that belongs to diffusers (the class's own module and
``scheduling_utils``, …), as loaded in *this* process (``sys.modules``), not as found on disk
by name. The digest is ``sha256:`` over the RFC 8785 JSON of ``{module name: sha256 of the
file}``. The hook sends the digest and the files' paths with every request. The sidecar hashes
those files itself, through ``/proc/<pid>/root`` of the process on the other end of the socket
(:func:`samplerguard.sidecar.integrity.measure_solver`), and compares its own digest with the
hook's and with the policy's ``goldenDigests.solverCode``.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
from functools import lru_cache

from samplerguard.commitment import jcs
from samplerguard.errors import MalformedInputError

__all__ = ["solver_code_digest", "solver_files", "solver_modules"]


def solver_files(scheduler_class: str) -> dict[str, str]:
    """``{module: absolute path}`` of the diffusers modules behind a scheduler class, as loaded
    in this process."""
    import diffusers

    cls = getattr(diffusers, scheduler_class, None)
    if not inspect.isclass(cls):
        raise MalformedInputError(f"diffusers has no scheduler class {scheduler_class!r}")
    out: dict[str, str] = {}
    for klass in inspect.getmro(cls):
        name = klass.__module__
        if not name.startswith("diffusers.") or name in out:
            continue
        path = getattr(sys.modules.get(name), "__file__", None)
        if path:
            out[name] = _realpath(path)
    return out


@lru_cache(maxsize=256)
def _realpath(path: str) -> str:
    """A loaded module's file, resolved once: every request names the same files, and
    resolving them took ~70 ``lstat`` calls on the hook's worker thread per request. The file
    the process runs is fixed once imported; the sidecar hashes it afresh from its side."""
    return os.path.realpath(path)


def solver_modules(scheduler_class: str) -> dict[str, str]:
    """``{module: "sha256:<file digest>"}`` for the diffusers modules behind a scheduler class."""
    return {name: _file_digest(path) for name, path in solver_files(scheduler_class).items()}


@lru_cache(maxsize=64)
def _file_digest(path: str) -> str:
    with open(path, "rb") as fh:
        return "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()


def solver_code_digest(scheduler_class: str) -> str:
    return _modules_digest(tuple(sorted(solver_modules(scheduler_class).items())))


@lru_cache(maxsize=64)
def _modules_digest(modules: tuple[tuple[str, str], ...]) -> str:
    return "sha256:" + hashlib.sha256(jcs.dumps(dict(modules))).hexdigest()
