"""Runtime integrity: hash what actually runs and compare it with the policy's golden digests.

Measured at start and every ``interval`` seconds:

* **model weights**: each safetensors file, digested exactly as
  :func:`samplerguard.commitment.digest.module_digest` digests the loaded module (SHA-256 over
  the RFC 8785 JSON of ``{tensor name: tensor digest}``), so the file's digest equals the
  ``model.digest`` a pipeline declares in its recipe;
* **scheduler config**: :func:`samplerguard.policy.schedule.scheduler_config_digest` of
  ``scheduler_config.json`` (its ``_class_name`` and config);
* **solver code**, per request: the diffusers scheduler modules loaded in the app process. The
  hook names their files and reports its digest
  (:func:`samplerguard.hook.solver.solver_code_digest`); the sidecar hashes the files itself
  through ``/proc/<pid>/root`` of the process on the other end of the Unix socket (its pid comes
  from ``SO_PEERCRED``), so a hook that misreports is caught. That needs the pod's process
  namespace shared (the webhook sets ``shareProcessNamespace``) and read access to the app's
  files (same user, or ``CAP_SYS_PTRACE``); without it the reported digest is used and the
  facts say ``solverCodeSource: reported``.

A mismatch with a non-empty golden list marks the sidecar *unhealthy*: new requests are
refused and an alert is raised until a later measurement is clean again. Each request gets a
*hash beacon*, one digest over all of these, which goes into the signed predicate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samplerguard.commitment import jcs
from samplerguard.commitment.digest import safetensors_digest
from samplerguard.errors import MalformedInputError
from samplerguard.policy.schedule import scheduler_config_digest as config_digest
from samplerguard.policy.spec import GoldenDigests

__all__ = [
    "IntegrityMonitor",
    "Measurement",
    "hash_beacon",
    "measure_solver",
    "scheduler_config_digest",
    "weights_file_digest",
]

log = logging.getLogger(__name__)


def weights_file_digest(path: Path) -> str:
    """The weights digest of a safetensors file (equal to ``module_digest`` of the module it
    loads into with ``strict=True``)."""
    return safetensors_digest(path)


def scheduler_config_digest(path: Path) -> str:
    """The digest a policy pins for a ``scheduler_config.json`` (class and config, see
    :func:`samplerguard.policy.schedule.scheduler_config_digest`)."""
    try:
        config = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise MalformedInputError(f"cannot read scheduler config {path}: {exc}") from None
    if not isinstance(config, dict):
        raise MalformedInputError(f"scheduler config {path} is not a JSON object")
    return config_digest(str(config.get("_class_name", "")), config)


MAX_SOLVER_FILE = 4 << 20
MAX_SOLVER_FILES = 64
_MODULE = re.compile(r"^diffusers(\.[A-Za-z_][A-Za-z0-9_]*){1,6}$")
_SOLVER_CACHE: dict[tuple[int, str, int, int, int, int], str] = {}


def measure_solver(
    pid: int | None, files: Mapping[str, Any] | None, *, proc: Path = Path("/proc")
) -> tuple[str | None, str]:
    """The solver-code digest computed from the app process's own files: ``(digest, "")``, or
    ``(None, why not)`` when they cannot be read from here. A malformed file list is refused.

    The digest is the one :func:`samplerguard.hook.solver.solver_code_digest` computes in the
    app: SHA-256 over the RFC 8785 JSON of ``{module: sha256 of its file}``. Files are read
    through ``/proc/<pid>/root``, so they are the files of the app's mount namespace, and their
    digests are cached by inode, size, modification and change time."""
    if files is None:
        return None, "the hook named no solver files"
    if not isinstance(files, Mapping) or not 0 < len(files) <= MAX_SOLVER_FILES:
        raise MalformedInputError("START field 'solverFiles' is not a small object")
    for name, path in files.items():
        if (
            not isinstance(name, str)
            or not _MODULE.match(name)
            or not isinstance(path, str)
            or not path.startswith("/")
            or not path.endswith(".py")
            or len(path) > 1024
            or "\0" in path
            or "/../" in path
        ):
            raise MalformedInputError(f"solver file entry {str(name)[:60]!r} is malformed")
    if not pid or pid < 0:
        return None, "the app's pid is not visible here (process namespace not shared)"
    doc: dict[str, str] = {}
    for name, path in files.items():
        target = proc / str(pid) / "root" / path.lstrip("/")
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            return None, f"cannot read the app's {path}: {exc.strerror}"
        try:
            st = os.fstat(fd)
            # the change time too: the app may write a file in place at the same size and set
            # its mtime back (utimensat), but every write or utime moves the ctime
            key = (pid, path, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            digest = _SOLVER_CACHE.get(key)
            if digest is None:
                if st.st_size > MAX_SOLVER_FILE:
                    raise MalformedInputError(f"solver file {path} is over {MAX_SOLVER_FILE} bytes")
                with os.fdopen(os.dup(fd), "rb") as fh:
                    digest = "sha256:" + hashlib.file_digest(fh, "sha256").hexdigest()
                if len(_SOLVER_CACHE) > 1024:
                    _SOLVER_CACHE.clear()
                _SOLVER_CACHE[key] = digest
        finally:
            os.close(fd)
        doc[name] = digest
    return "sha256:" + hashlib.sha256(jcs.dumps(doc)).hexdigest(), ""


def hash_beacon(facts: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(jcs.dumps(dict(facts))).hexdigest()


@dataclass(frozen=True)
class Measurement:
    model_weights: dict[str, str] = field(default_factory=dict)  # file name → digest
    scheduler_config: str | None = None
    problems: tuple[str, ...] = ()
    at: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def facts(self) -> dict[str, Any]:
        return {
            "modelWeights": sorted(set(self.model_weights.values())),
            "schedulerConfig": self.scheduler_config,
        }


class IntegrityMonitor:
    """Measures, compares, and keeps the latest verdict. Thread-safe."""

    def __init__(
        self,
        golden: GoldenDigests,
        *,
        model_files: tuple[Path, ...] = (),
        scheduler_config: Path | None = None,
        interval: float = 300.0,
        on_alert: Callable[[str], None] | None = None,
    ) -> None:
        self.golden = golden
        self.model_files = model_files
        self.scheduler_config = scheduler_config
        self.interval = interval
        self.on_alert = on_alert
        self._lock = threading.Lock()
        self._current = Measurement()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def current(self) -> Measurement:
        with self._lock:
            return self._current

    def set_golden(self, golden: GoldenDigests) -> None:
        with self._lock:
            self.golden = golden

    def measure(self) -> Measurement:
        import time

        with self._lock:
            golden = self.golden
        weights: dict[str, str] = {}
        problems: list[str] = []
        allowed_weights = set(golden.model_weights) | set(golden.text_encoder)
        for path in self.model_files:
            try:
                digest = weights_file_digest(path)
            except MalformedInputError as exc:
                problems.append(str(exc))
                continue
            weights[path.name] = digest
            if allowed_weights and digest not in allowed_weights:
                problems.append(
                    f"model weights {path.name}: digest mismatch (got {digest}, expected one "
                    f"of the policy's goldenDigests {sorted(allowed_weights)})"
                )
        sched: str | None = None
        if self.scheduler_config is not None:
            try:
                sched = scheduler_config_digest(self.scheduler_config)
            except MalformedInputError as exc:
                problems.append(str(exc))
            else:
                if golden.scheduler_config and sched not in golden.scheduler_config:
                    problems.append(
                        f"scheduler config: digest mismatch (got {sched}, expected one of "
                        f"{golden.scheduler_config})"
                    )
        m = Measurement(weights, sched, tuple(problems), time.time())
        with self._lock:
            was_ok = self._current.ok
            self._current = m
        if not m.ok:
            msg = "runtime integrity mismatch: " + "; ".join(m.problems)
            log.error("%s (new requests are refused)", msg)
            if self.on_alert is not None:
                self.on_alert(msg)
        elif not was_ok:
            log.warning("runtime integrity restored: new requests are accepted again")
        return m

    def check_request(
        self,
        recipe: Mapping[str, Any],
        solver_code: str | None,
        *,
        peer_pid: int | None = None,
        solver_files: Mapping[str, Any] | None = None,
    ) -> tuple[str, dict[str, Any], list[str]]:
        """The hash beacon and the integrity facts for one request, and what is wrong."""
        m = self.current
        with self._lock:
            golden = self.golden
        problems = list(m.problems)
        measured, why_not = measure_solver(peer_pid, solver_files)
        source = "measured" if measured else "reported"
        if measured is None:
            log.debug("solver code taken as reported: %s", why_not)
        elif measured != solver_code:
            problems.append(
                f"solver code: the hook reported {solver_code}, but the app's files hash to "
                f"{measured}"
            )
            solver_code = measured
        if golden.solver_code and solver_code not in golden.solver_code:
            problems.append(
                f"solver code: digest mismatch (got {solver_code}, expected one of "
                f"{golden.solver_code})"
            )
        declared = recipe.get("model", {}).get("digest") if isinstance(recipe, Mapping) else None
        if golden.model_weights and declared not in golden.model_weights:
            problems.append(
                f"declared model digest {declared} is not among the policy's goldenDigests"
            )
        on_disk = set(m.model_weights.values())
        if on_disk and declared not in on_disk:
            problems.append(
                f"declared model digest {declared} is not the digest of the weights on disk "
                f"({sorted(on_disk)})"
            )
        facts = {
            **m.facts(),
            "solverCode": solver_code,
            "solverCodeSource": source,
            "declaredModel": declared,
        }
        return hash_beacon(facts), facts, problems

    # -- the periodic re-measurement -----------------------------------------------------------

    def start(self) -> None:
        self.measure()
        self._thread = threading.Thread(target=self._loop, name="sg-integrity", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.measure()
            except Exception:  # a measurement bug must not kill the monitor
                log.exception("integrity measurement failed")

    def stop(self) -> None:
        self._stop.set()
