"""Start and stop the real sidecar and verifier processes on loopback.

Used by ``samplerguard demo``, the integration tests and the benchmarks. Each service is a
``samplerguard sidecar|verifier`` subprocess with its own process group, started with
``--ready-file`` and port 0: it picks a free port and writes its address once it serves, so
nothing races for ports and readiness is a file, not a sleep. ``stop()`` sends SIGTERM, waits,
then SIGKILLs the group; every log goes to a file beside the state.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "ServiceError",
    "ServiceProcess",
    "make_token",
    "run_round",
    "start_sidecar",
    "start_verifier",
]


class ServiceError(RuntimeError):
    """A service did not come up (its log tail is in the message)."""


def make_token(path: Path) -> Path:
    """A fresh bearer token for local mode, readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(32))
    return path


@dataclass
class ServiceProcess:
    name: str
    proc: subprocess.Popen[bytes]
    ready_file: Path
    log_path: Path
    ready: dict[str, Any] = field(default_factory=dict)
    #: the bearer token its authenticated routes take (the verifier's own)
    token_file: Path | None = None

    @property
    def url(self) -> str:
        return str(self.ready["url"])

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServiceError(
                    f"{self.name} exited with {self.proc.returncode} before it was ready:\n"
                    + self.log_tail()
                )
            if self.ready_file.exists():
                try:
                    self.ready = json.loads(self.ready_file.read_text())
                    return
                except ValueError:
                    pass  # written atomically, but be lenient
            time.sleep(0.05)
        self.kill()
        raise ServiceError(f"{self.name} was not ready after {timeout:.0f}s:\n" + self.log_tail())

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``. Returns the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.proc.returncode if self.proc.returncode is not None else -9)

    def kill(self) -> None:
        """SIGKILL: the crash case (no cleanup runs)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def _spawn(
    name: str, args: Sequence[str], ready_file: Path, log_path: Path, env: dict[str, str] | None
) -> ServiceProcess:
    ready_file.unlink(missing_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    full_env.update(env or {})
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it; closed below
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "samplerguard", "-v", *args, "--ready-file", str(ready_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            start_new_session=True,
        )
    finally:
        log.close()
    return ServiceProcess(name, proc, ready_file, log_path)


def start_sidecar(
    run_dir: Path,
    *,
    token_file: Path,
    policy: Path | None = None,
    model_files: Sequence[Path] = (),
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 90.0,
    wait: bool = True,
) -> ServiceProcess:
    """A sidecar with its socket, key and openings under ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "sidecar",
        "--socket",
        str(run_dir / "sidecar.sock"),
        "--openings-dir",
        str(run_dir / "openings"),
        "--listen-tcp",
        "127.0.0.1:0",
        "--token-file",
        str(token_file),
        *([] if policy is None else ["--policy", str(policy)]),
        *(a for m in model_files for a in ("--model-file", str(m))),
        *extra_args,
    ]
    svc = _spawn("sidecar", args, run_dir / "sidecar.ready", run_dir / "sidecar.log", env)
    if wait:
        svc.wait_ready(timeout)
    return svc


def start_verifier(
    state_dir: Path,
    *,
    sidecars: Sequence[str],
    token_file: Path,
    policy: Path,
    audit_log: Path,
    reference_models: dict[str, Path] | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout: float = 90.0,
    loop: bool = False,
    wait: bool = True,
) -> ServiceProcess:
    """A verifier serving on a free port. Without ``loop`` it audits only when asked
    (:func:`run_round`), which keeps demos and tests deterministic."""
    args = [
        "verifier",
        "--policy",
        str(policy),
        "--token-file",
        str(token_file),
        "--state-dir",
        str(state_dir),
        "--audit-log",
        str(audit_log),
        "--listen",
        "127.0.0.1:0",
        *(a for url in sidecars for a in ("--sidecar", url)),
        *(
            a
            for p, path in (reference_models or {}).items()
            for a in ("--reference-model", f"{p}={path}")
        ),
        *([] if loop else ["--no-loop"]),
        *extra_args,
    ]
    svc = _spawn("verifier", args, state_dir / "verifier.ready", state_dir / "verifier.log", env)
    svc.token_file = token_file
    if wait:
        svc.wait_ready(timeout)
    return svc


def run_round(verifier: ServiceProcess, timeout: float = 120.0) -> dict[str, Any]:
    """Ask a verifier to audit now; returns its counts."""
    headers = {}
    if verifier.token_file is not None:
        headers["Authorization"] = f"Bearer {verifier.token_file.read_text().strip()}"
    resp = httpx.post(verifier.url + "/v1/rounds", headers=headers, timeout=timeout)
    resp.raise_for_status()
    doc: dict[str, Any] = resp.json()
    return doc
