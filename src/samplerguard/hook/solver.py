"""Digest of the solver code a process actually runs: the diffusers scheduler modules loaded.

``solver_code_digest("EulerDiscreteScheduler")`` hashes the source file of every module in the
scheduler class's method resolution order that belongs to diffusers (the class's own module and
``scheduling_utils``, …), as loaded in *this* process (``sys.modules``), not as found on disk
by name. The digest is ``sha256:`` over the RFC 8785 JSON of ``{module name: sha256 of the
file}``. The hook reports it with every request; the sidecar compares it with the policy's
``goldenDigests.solverCode``.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from functools import lru_cache

from samplerguard.commitment import jcs
from samplerguard.errors import MalformedInputError

__all__ = ["solver_code_digest", "solver_modules"]


def solver_modules(scheduler_class: str) -> dict[str, str]:
    """``{module: "sha256:<file digest>"}`` for the diffusers modules behind a scheduler class."""
    import diffusers

    cls = getattr(diffusers, scheduler_class, None)
    if not inspect.isclass(cls):
        raise MalformedInputError(f"diffusers has no scheduler class {scheduler_class!r}")
    out: dict[str, str] = {}
    for klass in inspect.getmro(cls):
        name = klass.__module__
        if not name.startswith("diffusers.") or name in out:
            continue
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if not path:
            continue
        out[name] = _file_digest(path)
    return out


@lru_cache(maxsize=64)
def _file_digest(path: str) -> str:
    with open(path, "rb") as fh:
        return "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()


def solver_code_digest(scheduler_class: str) -> str:
    doc = solver_modules(scheduler_class)
    return "sha256:" + hashlib.sha256(jcs.dumps(doc)).hexdigest()
