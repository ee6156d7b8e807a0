"""A sink that streams each trajectory to the sidecar over its Unix socket.

Everything here runs on the recorder's worker thread. Per trajectory, one connection:

* at the start: ``START`` with the request, the recipe, z_N, the sampler state and the
  conditioning; the sidecar answers at once (policy, integrity), so a refused request fails
  fast;
* the steps: each record holds the latent, the state and the step noise; they go out 8 to a
  ``STEPS`` frame (fewer once 8 MiB are held; a lone record as a ``STEP`` frame). Not answered:
  when the sidecar is slow the socket buffer fills and this thread blocks, which is the
  backpressure;
* at the end: ``FINAL`` and ``FINISH``; the sidecar hashes the bytes it received, builds the
  tree, signs the commitment with its own key and sends it back.

The hook does not hash: the sidecar is the party that commits, and hashing here would spend the
serving process's CPU (and its GIL) on work the sidecar does anyway. The sink checks what the
signed statement says against what it sent: the signature (pinned or announced key), the
request id, the tree size (steps sent + 4), the output digest and the recipe. A sidecar that
committed a different stream is caught when a step is opened, since openings are checked
against the signed root.

Any failure (sidecar gone, timeout, refusal) raises, and the recorder marks the request
unverified (:class:`~samplerguard.hook.recorder.RecordingError`).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import logging
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from samplerguard.commitment.dsse import keyid, load_public_key
from samplerguard.commitment.state import Borrowed, SamplerState
from samplerguard.commitment.statement import Commitment
from samplerguard.errors import MalformedInputError, SamplerGuardError, TemporaryError
from samplerguard.hook.recorder import Begin, StepRecord, TrajectoryRequest, check_borrowed
from samplerguard.hook.solver import solver_code_digest, solver_files
from samplerguard.hook.wire import (
    FRAME_ABORT,
    FRAME_FINAL,
    FRAME_FINISH,
    FRAME_HELLO,
    FRAME_REPLY,
    FRAME_SEED,
    FRAME_START,
    FRAME_STEP,
    MAX_STEPS_PER_FRAME,
    WireClosedError,
    encode_frame,
    encode_steps,
    read_frame,
    send_frame,
    send_parts,
    tune_socket,
)
from samplerguard.rng.noise import RequestNoise
from samplerguard.rng.seed import RequestSeed

log = logging.getLogger(__name__)

__all__ = ["SidecarRefusedError", "SidecarSink", "probe"]

ENV_SOCKET = "SAMPLERGUARD_SOCKET"
#: Optional PEM file pinning the sidecar's public key (else the key the sidecar announces).
ENV_PUBLIC_KEY = "SAMPLERGUARD_SIDECAR_PUBLIC_KEY"


class SidecarRefusedError(SamplerGuardError):
    """The sidecar refused the request (policy, integrity, store full); the reason is its own."""


class ConnectionLostError(TemporaryError):
    """The connection ended before the exchange was answered (closed or reset, not timed
    out): on a kept connection the sidecar closed, the exchange was not acted on and goes out
    again on a new connection."""


#: a STEPS frame is sent once its records hold this many bytes, whatever the batch size: large
#: latents (SDXL batches) stay far below the wire's per-frame cap
STEPS_FRAME_BYTES = 8 << 20
#: idle connections a sink keeps for its next exchanges (one per trajectory in flight is enough)
MAX_IDLE_CONNECTIONS = 4


@dataclass
class _Session:
    request: TrajectoryRequest
    recipe: dict[str, Any]
    sock: socket.socket | None = None
    sent_steps: int = 0
    #: the connection carried an earlier exchange (taken from the sink's idle connections)
    reused: bool = False
    public_key: Ed25519PublicKey | None = None
    verdict: dict[str, Any] = field(default_factory=dict)
    #: step records held for the next STEPS frame
    pending: list[tuple[dict[str, Any], list[tuple[str, torch.Tensor]]]] = field(
        default_factory=list
    )
    pending_bytes: int = 0
    #: the pipeline's tensors the held records borrowed (see ``SidecarSink.borrows``)
    borrowed: Borrowed = field(default_factory=list)


def _state_tensors(prefix: str, state: SamplerState) -> list[tuple[str, torch.Tensor]]:
    return [(f"{prefix}{k}", v) for k, v in state.tensors().items()]


class SidecarSink:
    """Implements the recorder's :class:`~samplerguard.hook.recorder.Sink` over the socket.

    ``io_timeout`` bounds every blocking send and receive: a sidecar that stops reading for that
    long fails the trajectory rather than hanging the worker forever.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        *,
        connect_timeout: float = 30.0,
        io_timeout: float = 60.0,
        public_key: Ed25519PublicKey | None = None,
        batch: int = 32,
        idle_connections: int = MAX_IDLE_CONNECTIONS,
        borrow: bool = True,
    ) -> None:
        """``batch``: step records per ``STEPS`` frame (1 sends one ``STEP`` frame per step).
        ``idle_connections``: connections kept open for the next exchanges (0: a connection
        per trajectory and per seed). ``borrow``: take the pipeline's host tensors without
        copying them (see ``borrows``)."""
        if not 1 <= batch <= MAX_STEPS_PER_FRAME:
            raise ValueError(f"batch must be 1..{MAX_STEPS_PER_FRAME}")
        if not 0 <= idle_connections <= 64:
            raise ValueError("idle_connections must be 0..64")
        self.idle_connections = idle_connections
        self.batch = batch
        #: The recorder hands this sink the pipeline's own host tensors instead of copies (a
        #: step's latent and sampler state: copying them was a third of the hook's time on
        #: the denoising thread). They are read straight into the socket, and after each send
        #: the sink checks their version counters: a pipeline that changed a recorded tensor in
        #: place before it was sent fails that trajectory (nothing wrong is ever committed), and
        #: the sink takes copies from then on.
        self.borrows = borrow
        self.socket_path = os.fspath(socket_path)
        self.connect_timeout = connect_timeout
        self.io_timeout = io_timeout
        self.pinned_key = public_key
        #: the last START reply's public key, as PEM and parsed
        self._last_announced: tuple[str, Ed25519PublicKey] | None = None
        self._lock = threading.Lock()
        self.aborted: dict[str, str] = {}
        self.verdicts: dict[str, dict[str, Any]] = {}
        self._escrows: dict[str, dict[str, Any]] = {}
        #: connections whose last exchange completed, kept for the next one: a trajectory then
        #: costs the sidecar no accept, thread start or first-frame timer (it closes them after
        #: its keep-alive timeout; a closed one is noticed before use)
        self._idle: list[socket.socket] = []
        #: the process the idle connections belong to: a forked child (a server's worker
        #: processes) inherits them, and must never write into its parent's streams
        self._idle_pid = os.getpid()
        self._closed = False
        # a sink dropped without close() still closes the connections it kept
        weakref.finalize(self, _close_all, self._idle)

    def request_noise(
        self,
        tenant: str,
        request_id: str,
        mode: str = "ctr-drbg",
        *,
        ticket: Mapping[str, Any] | None = None,
    ) -> RequestNoise:
        """The request's noise source, from the seed the sidecar issues (``SEED``). Call it
        before the generation draws anything; the sidecar escrows the seed to the verifier and
        binds the escrow into the request's commitment. Under a policy that requires request
        tickets, pass the gateway's ``ticket`` for this request. Raises
        :class:`SidecarRefusedError` when the sidecar issues no seeds or refuses the request."""
        header: dict[str, Any] = {"requestId": request_id, "tenant": tenant, "rngMode": mode}
        if ticket is not None:
            header["ticket"] = dict(ticket)
        sock, reused = self._take()
        try:
            try:
                send_frame(sock, FRAME_SEED, header)
                reply = self._reply(sock, f"the seed of request {request_id}")
            except (ConnectionLostError, ConnectionError):
                # not a timeout: a slow answer may still come, and the request may have been
                # acted on
                if not reused:
                    raise
                # the sidecar closed the idle connection as this request went out: once more
                # on a fresh one (asked again before its START, a request id gets the same seed)
                sock.close()
                sock, reused = self._connect(), False
                send_frame(sock, FRAME_SEED, header)
                reply = self._reply(sock, f"the seed of request {request_id}")
        except BaseException:
            sock.close()
            raise
        self._keep(sock)
        try:
            material = base64.b64decode(str(reply.get("seed")), validate=True)
            seed = RequestSeed(
                material,
                mode=str(reply.get("mode")),
                tenant_pseudonym=str(reply.get("tenantPseudonym")),
                request_id=request_id,
                seed_pseudonym=str(reply.get("seedPseudonym")),
            )
        except (ValueError, TypeError) as exc:
            raise MalformedInputError(f"the sidecar's seed reply is malformed: {exc}") from None
        return RequestNoise(seed)

    def attach_escrow(self, request_id: str, escrow_json: str) -> None:
        """Send a :class:`~samplerguard.rng.SeedEscrow` (its JSON) with the request's START; the
        sidecar keeps it beside the commitment for the verifier's seed check."""
        doc = json.loads(escrow_json)
        if not isinstance(doc, dict):
            raise MalformedInputError("a seed escrow is a JSON object")
        with self._lock:
            self._escrows[request_id] = doc

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> SidecarSink:
        """The sink the injected hook uses: ``SAMPLERGUARD_SOCKET`` (and an optional pinned key)."""
        env = dict(os.environ if env is None else env)
        path = env.get(ENV_SOCKET)
        if not path:
            raise MalformedInputError(f"{ENV_SOCKET} is not set: no sidecar to stream to")
        key = None
        if env.get(ENV_PUBLIC_KEY):
            with open(env[ENV_PUBLIC_KEY], "rb") as fh:
                key = load_public_key(fh.read())
        return cls(path, public_key=key)

    # -- connection ----------------------------------------------------------------------------

    def _take(self) -> tuple[socket.socket, bool]:
        """A connection for the next exchange: an idle one still open, else a new one; and
        whether it was reused."""
        with self._lock:
            self._leave_parents_connections()
            while self._idle:
                sock = self._idle.pop()
                if _open_and_quiet(sock):
                    return sock, True
                sock.close()
        return self._connect(), False

    def _leave_parents_connections(self) -> None:
        """In a forked child, drop the idle connections inherited from the parent (closing the
        child's copies only: the parent's stay open for the parent)."""
        if self._idle_pid != os.getpid():
            for sock in self._idle:
                sock.close()
            self._idle.clear()
            self._idle_pid = os.getpid()

    def _keep(self, sock: socket.socket) -> None:
        """Keep a connection whose exchange completed (up to ``idle_connections``)."""
        with self._lock:
            self._leave_parents_connections()
            if not self._closed and len(self._idle) < self.idle_connections:
                sock.settimeout(self.io_timeout)
                self._idle.append(sock)
                return
        sock.close()

    def close(self) -> None:
        """Close the idle connections; later exchanges open new ones."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()

    def _connect(self) -> socket.socket:
        """A connection to the sidecar. A full listen backlog (the sidecar busy with other
        streams) is waited out, with backoff, for up to ``connect_timeout``; a sidecar that is
        not there at all (no socket, nobody listening) fails at once."""
        deadline = time.monotonic() + self.connect_timeout
        pause = 0.005
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            tune_socket(sock)
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                sock.connect(self.socket_path)
            except OSError as exc:
                sock.close()
                busy = exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
                if busy and time.monotonic() + pause < deadline:
                    time.sleep(pause)
                    pause = min(pause * 2, 0.25)
                    continue
                raise TemporaryError(
                    f"cannot reach the sidecar at {self.socket_path}: {exc.strerror or exc}"
                    + (f" (busy for {self.connect_timeout:.0f}s)" if busy else "")
                ) from None
            sock.settimeout(self.io_timeout)
            return sock

    def _reply(self, sock: socket.socket, what: str) -> dict[str, Any]:
        try:
            frame = read_frame(sock, max_body=0)
        except WireClosedError:
            raise ConnectionLostError(
                f"the sidecar closed the connection before answering {what}"
            ) from None
        except TimeoutError:
            raise TemporaryError(
                f"the sidecar did not answer {what} within {self.io_timeout:.0f}s"
            ) from None
        if frame.kind != FRAME_REPLY:
            raise MalformedInputError(f"the sidecar answered {what} with frame kind {frame.kind}")
        if not frame.header.get("ok"):
            raise SidecarRefusedError(
                f"the sidecar refused {what}: {str(frame.header.get('error'))[:500]}"
            )
        return frame.header

    def _send(self, sess: _Session, kind: int, header: dict[str, Any], tensors: Any) -> None:
        self._send_parts(sess, encode_frame(kind, header, tensors))

    def _send_parts(self, sess: _Session, parts: list[bytes | memoryview]) -> None:
        assert sess.sock is not None
        try:
            send_parts(sess.sock, parts)
        except TimeoutError:
            raise TemporaryError(
                f"the sidecar did not take data for {self.io_timeout:.0f}s (overloaded or hung)"
            ) from None
        except OSError as exc:
            reason = self._pending_error(sess.sock)
            raise ConnectionLostError(
                f"lost the sidecar connection: {exc.strerror or type(exc).__name__}"
                + (f" (the sidecar said: {reason})" if reason else "")
            ) from None

    @staticmethod
    def _pending_error(sock: socket.socket) -> str | None:
        """The sidecar answers a refused stream with an error frame before closing; read it."""
        try:
            sock.settimeout(0.5)
            frame = read_frame(sock, max_body=0)
        except (OSError, MalformedInputError):
            return None
        return str(frame.header.get("error"))[:500] if frame.kind == FRAME_REPLY else None

    # -- the Sink protocol ---------------------------------------------------------------------

    def start(self, request: TrajectoryRequest, begin: Begin) -> _Session:
        sess = _Session(request=request, recipe=begin.recipe)
        sess.sock, sess.reused = self._take()
        try:
            try:
                self._send_start(sess, begin)
            except ConnectionLostError:
                if not sess.reused:
                    raise
                # the sidecar closed the idle connection as START went out (its keep-alive
                # ran out): nothing was started; once more on a fresh connection
                self._close(sess)
                sess.sock, sess.reused = self._connect(), False
                self._send_start(sess, begin)
        except BaseException:
            self._close(sess)
            raise
        return sess

    def _send_start(self, sess: _Session, begin: Begin) -> None:
        req = sess.request
        scheduler_class = str(begin.recipe.get("scheduler_class"))
        header = {
            "request": {
                "requestId": req.request_id,
                "tenant": req.tenant,
                "rngMode": req.rng_mode,
            },
            "recipe": begin.recipe,
            "requestParams": dict(req.params) if req.params is not None else None,
            "schedule": begin.schedule,
            "state": begin.state.skeleton(),
            "conditioning": sorted(begin.conditioning),
            "solverCode": solver_code_digest(scheduler_class),
            "solverFiles": solver_files(scheduler_class),
        }
        with self._lock:
            escrow = self._escrows.pop(req.request_id, None)
        if escrow is not None:
            header["seedEscrow"] = escrow
        if req.ticket is not None:
            header["ticket"] = dict(req.ticket)
        tensors = [("latent", begin.latent), *_state_tensors("state/", begin.state)]
        tensors += [(f"cond/{k}", v) for k, v in sorted(begin.conditioning.items())]
        self._send(sess, FRAME_START, header, tensors)
        assert sess.sock is not None
        reply = self._reply(sess.sock, f"request {req.request_id}")
        sess.verdict = reply
        pem = reply.get("publicKey")
        if not isinstance(pem, str):
            raise MalformedInputError("the sidecar's START reply carries no public key")
        announced = self._announced_key(pem)
        if self.pinned_key is not None and keyid(announced) != keyid(self.pinned_key):
            raise SidecarRefusedError(
                f"the sidecar announced key {keyid(announced)[:16]}…, the pinned key is "
                f"{keyid(self.pinned_key)[:16]}…"
            )
        sess.public_key = announced

    def _announced_key(self, pem: str) -> Ed25519PublicKey:
        """The sidecar's public key from a START reply: parsed once while the sidecar keeps
        announcing the same PEM (a restarted sidecar with a new key is parsed anew)."""
        cached = self._last_announced
        if cached is not None and cached[0] == pem:
            return cached[1]
        key = load_public_key(pem.encode())
        self._last_announced = (pem, key)
        return key

    def steps(self, handle: _Session, steps: Sequence[StepRecord]) -> None:
        """A hand-off's records, sent now: as one ``STEPS`` frame, or several where they are
        more than ``batch`` or hold ``STEPS_FRAME_BYTES``."""
        for step in steps:
            self.step(handle, step)
        if handle.pending:
            self._flush_steps(handle)

    def step(self, handle: _Session, step: StepRecord) -> None:
        """Queue the record; a full batch goes out as one ``STEPS`` frame (the sidecar reads,
        stores and hashes it with one header, one system call and one hand-off)."""
        skeleton, state = step.state.wire("state/")
        header = {"index": step.index, "timestep": step.timestep, "state": skeleton}
        tensors = [("latent", step.latent), *state]
        tensors += [(f"noise/{k}", n) for k, n in enumerate(step.noise)]
        handle.pending.append((header, tensors))
        handle.borrowed += step.borrowed
        handle.pending_bytes += sum(t.numel() * t.element_size() for _, t in tensors)
        if len(handle.pending) >= self.batch or handle.pending_bytes >= STEPS_FRAME_BYTES:
            self._flush_steps(handle)

    def _flush_steps(self, sess: _Session) -> None:
        borrowed = sess.borrowed
        self._send_parts(sess, self._pending_parts(sess))
        check_borrowed(self, borrowed, "sent")

    @staticmethod
    def _pending_parts(sess: _Session) -> list[bytes | memoryview]:
        """The held step records as one frame (none when nothing is held); the caller checks
        the tensors they borrowed once they are sent."""
        records, sess.pending, sess.pending_bytes = sess.pending, [], 0
        sess.borrowed = []
        sess.sent_steps += len(records)
        if len(records) == 1:
            return encode_frame(FRAME_STEP, *records[0])
        # the headers are step()'s own: index, timestep, SamplerState.wire()'s skeleton
        return encode_steps(records, skeletons=True) if records else []

    def finish(
        self, handle: _Session, final_latent: torch.Tensor, output_digest: str
    ) -> tuple[Commitment, None]:
        sess = handle
        try:
            if sess.public_key is None:
                raise MalformedInputError("the trajectory was not started")
            # the last steps and FINAL in one send; FINISH, which commits, only once the
            # tensors they borrowed are known unchanged
            borrowed = sess.borrowed
            finish = encode_frame(FRAME_FINISH, {"output": output_digest}, [])
            last = [
                *self._pending_parts(sess),
                *encode_frame(FRAME_FINAL, {}, [("latent", final_latent)]),
            ]
            if borrowed:
                self._send_parts(sess, last)
                check_borrowed(self, borrowed, "sent")
                self._send_parts(sess, finish)
            else:
                self._send_parts(sess, [*last, *finish])
            assert sess.sock is not None
            reply = self._reply(sess.sock, f"the commitment of {sess.request.request_id}")
            commitment = Commitment.verify(reply.get("commitment"), sess.public_key)
            self._check(sess, commitment, output_digest)
            with self._lock:
                self.verdicts[commitment.request_id] = {
                    "verdict": sess.verdict.get("verdict", "accept"),
                    "reasons": list(sess.verdict.get("reasons", [])),
                }
            assert sess.sock is not None
            sock, sess.sock = sess.sock, None
            self._keep(sock)  # the exchange completed: the connection may carry the next
            return commitment, None
        finally:
            self._close(sess)

    @staticmethod
    def _check(sess: _Session, commitment: Commitment, output_digest: str) -> None:
        """The signed statement must describe the stream this sink sent."""
        want = sess.request.request_id
        committed = {
            k: v for k, v in commitment.recipe.items() if k not in ("type", "conditioning")
        }
        problems = []
        if commitment.request_id != want:
            problems.append(f"request id {commitment.request_id!r}, not {want!r}")
        if commitment.tree_size != sess.sent_steps + 4:
            problems.append(f"{commitment.tree_size} leaves for {sess.sent_steps} steps sent")
        if commitment.output_digest != output_digest:
            problems.append("another output digest")
        if committed != sess.recipe:
            problems.append("another recipe")
        if problems:
            raise MalformedInputError(
                "the sidecar's signed commitment does not match the stream sent: "
                + "; ".join(problems)
            )

    def abort(self, handle: _Session | None, reason: str) -> None:
        if handle is None:
            return
        with self._lock:
            self.aborted[handle.request.request_id] = reason
        if handle.sock is not None:
            # a gone sidecar discards partial trajectories on its own
            with contextlib.suppress(OSError):
                send_frame(handle.sock, FRAME_ABORT, {"reason": reason[:500]})
        self._close(handle)

    @staticmethod
    def _close(sess: _Session) -> None:
        if sess.sock is not None:
            try:
                sess.sock.close()
            finally:
                sess.sock = None


def _close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()
    socks.clear()


def _open_and_quiet(sock: socket.socket) -> bool:
    """Whether an idle connection is still open with nothing unread: a sidecar never sends on
    an idle connection, so anything readable (end of stream, an error, stray bytes) rules it
    out. Asked without blocking."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLPRI)
    try:
        return not poller.poll(0)
    except OSError:
        return False


def probe(socket_path: str, timeout: float = 3.0) -> dict[str, Any]:
    """Ask the sidecar whether it is ready (``HELLO``); returns its answer or raises."""
    sink = SidecarSink(socket_path, connect_timeout=timeout, io_timeout=timeout)
    sock = sink._connect()
    try:
        send_frame(sock, FRAME_HELLO, {})
        return sink._reply(sock, "the readiness probe")
    finally:
        sock.close()
