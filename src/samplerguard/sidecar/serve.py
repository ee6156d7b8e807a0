"""Run the sidecar until SIGTERM/SIGINT: ingestion thread, housekeeping, and uvicorn on TCP."""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from samplerguard.serving import Limits, QuietServer, uvicorn_settings
from samplerguard.sidecar.config import SidecarConfig

__all__ = ["LIMITS", "bind_tcp", "serve", "write_ready_file"]

log = logging.getLogger(__name__)

#: What clients of the verifier-facing API may hold (one verifier reads it, a few connections)
LIMITS = Limits(max_connections=64, idle_timeout=30.0, request_timeout=10.0)


def bind_tcp(host: str, port: int) -> socket.socket:
    """A listening socket; port 0 picks a free port (read it back with ``getsockname``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.set_inheritable(True)
    return sock


def write_ready_file(path: Path, doc: dict[str, Any]) -> None:
    """Atomically, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


#: glibc ``mallopt`` parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Let glibc keep freed memory for reuse instead of returning it to the kernel.

    Ingestion receives frames into fresh buffers of up to 4 MiB (bodies are views that must
    never be overwritten). By default glibc hands such buffers back to the kernel when freed and
    maps new ones, so every received byte lands in a freshly faulted-in page; first-touching a
    fresh page costs ~87 us per 64 KiB on the project's VM. With buffers up to 32 MiB served
    from the heap and up to 128 MiB of free heap kept, they are reused while resident: the
    sidecar's kernel CPU per 64 KiB record went from 42 to 22 us. Returns whether it applied
    (glibc only)."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        ok: bool = libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1
        return ok and bool(libc.mallopt(_M_TRIM_THRESHOLD, 128 << 20) == 1)
    except (OSError, AttributeError):
        return False


_PR_SET_DUMPABLE = 4


def not_dumpable() -> bool:
    """Mark the process non-dumpable. The injected pod shares its process namespace (the
    sidecar hashes the solver code the app loaded through ``/proc/<pid>/root``), so without
    this an app process running under the sidecar's uid could read the signing key through
    ``/proc/<sidecar>/root`` or ``/proc/<sidecar>/mem``; a non-dumpable process's ``/proc``
    entries need ``CAP_SYS_PTRACE``, which the app does not get. Returns whether it applied
    (Linux only)."""
    import ctypes

    try:
        return bool(ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def serve(cfg: SidecarConfig) -> int:
    import torch
    import uvicorn

    from samplerguard.sidecar.app import create_app
    from samplerguard.sidecar.service import Sidecar

    # the sidecar hashes and copies; it runs no model, and a thread pool only contends with
    # the app container for its CPU
    torch.set_num_threads(1)
    if not not_dumpable():
        log.warning("could not mark the process non-dumpable: /proc/<pid> stays readable")
    if not keep_freed_memory():
        log.info("malloc tuning unavailable (not glibc): ingest buffers are not kept for reuse")
    from samplerguard.commitment.digest import NATIVE

    if not NATIVE:
        log.warning(
            "samplerguard._digest is not built (no C compiler or OpenSSL headers at install): "
            "ingestion hashes through hashlib, about a tenth slower on small nodes"
        )
    sidecar = Sidecar(cfg)
    # Everything imported so far (torch, diffusers, the app) lives as long as the process: keep
    # it out of the collector's full passes, which otherwise walk those objects every time the
    # per-frame allocations of ingestion trigger one (7 % of a connection thread's CPU).
    gc.collect()
    gc.freeze()
    tcp = bind_tcp(*cfg.listen_tcp)
    host, port = tcp.getsockname()[:2]
    app = create_app(sidecar)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        sidecar.start()
        if cfg.ready_file is not None:
            write_ready_file(
                cfg.ready_file,
                {
                    "tcp": f"{host}:{port}",
                    "url": f"http://{host}:{port}",
                    "socket": str(cfg.socket),
                    "keyid": sidecar.keyid,
                    "pid": os.getpid(),
                },
            )
        try:
            yield
        finally:
            sidecar.stop()
            if cfg.ready_file is not None:
                cfg.ready_file.unlink(missing_ok=True)

    app.router.lifespan_context = lifespan
    server = QuietServer(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
            **uvicorn_settings(LIMITS)[0],
        )
    )
    log.info("sidecar API on http://%s:%d", host, port)
    server.run(sockets=[tcp])
    return 0
