"""Ingestion: the Unix-socket server the hook streams trajectories to.

One thread per connection, one connection per trajectory (the wire format is in
:mod:`samplerguard.hook.wire`). The sidecar does not trust the digests the hook computed: it
rebuilds the tree from the tensor bytes it received and stores: it digests the raw frame bytes
itself (no tensors are built on this path) and appends the leaves with the same
:class:`~samplerguard.commitment.trajectory.LeafLog` the hook's builder uses, so every stored
opening is exactly what the signed root commits. At ``FINISH`` it compares its root with the
client's, when the client sends one (a mismatch means a corrupted stream: refused; the bundled
hook does not hash and sends none), signs the commitment with its own key, commits the
trajectory to the store and answers with the DSSE envelope.

Connections beyond ``max_connections`` wait in the listen backlog: backpressure reaches the
hook's worker thread as a slow ``connect``/``sendall``, never as lost data.
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import itertools
import logging
import os
import re
import socket
import socketserver
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samplerguard.commitment.digest import HashItem, record_digests, tensor_header
from samplerguard.commitment.request import check_request_params, request_digest
from samplerguard.commitment.state import state_digest
from samplerguard.commitment.statement import Commitment, commit
from samplerguard.commitment.trajectory import LeafLog
from samplerguard.errors import MalformedInputError, SamplerGuardError, TemporaryError
from samplerguard.hook.wire import (
    FRAME_ABORT,
    FRAME_FINAL,
    FRAME_FINISH,
    FRAME_HELLO,
    FRAME_REPLY,
    FRAME_SEED,
    FRAME_START,
    FRAME_STEP,
    FRAME_STEPS,
    MAX_STEPS_PER_FRAME,
    Frame,
    FrameReader,
    ReceiveBuffers,
    TensorSpec,
    WireClosedError,
    listing_specs,
    send_frame,
    tensor_specs,
    tune_socket,
)
from samplerguard.sidecar.enforce import Admission, RequestRefusedError
from samplerguard.sidecar.ledger import LEDGER_NAME, RequestIdLedger
from samplerguard.sidecar.seeds import SeedIssuer
from samplerguard.sidecar.store import OpeningStore, TrajectoryWriter

__all__ = ["Gate", "IngestServer", "StartRequest"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartRequest:
    request_id: str
    tenant: str
    rng_mode: str
    recipe: dict[str, Any]
    solver_code: str | None
    seed_escrow: dict[str, Any] | None
    #: the pid of the process on the other end of the socket (``SO_PEERCRED``), 0/None when
    #: it lives in a process namespace this sidecar cannot see
    peer_pid: int | None = None
    solver_files: dict[str, Any] | None = None
    #: the gateway's request ticket (a DSSE envelope) as the hook sent it, unchecked
    ticket: dict[str, Any] | None = None


@dataclass(frozen=True)
class Decision:
    admission: Admission
    predicate: dict[str, Any] = field(default_factory=dict)


#: (ticket envelope or None, tenant, request id) -> whether a valid ticket vouches for the
#: request id, or raises the refusal
TicketCheck = Callable[[object, str, str], bool]


class Gate:
    """Admission and signing, provided by the service: policy, integrity, key."""

    def __init__(
        self,
        *,
        key: Any,
        public_pem: str,
        admit: Callable[[StartRequest], Decision],
        committed: Callable[[StartRequest, Commitment, Decision], None] | None = None,
        refused: Callable[[StartRequest | None, str], None] | None = None,
        seeds: SeedIssuer | None = None,
        ticket: TicketCheck | None = None,
    ) -> None:
        #: the sidecar-held DRBG: when set, the sidecar issues every DRBG request's seed
        self.seeds = seeds
        #: checks a request's ticket against the policy before its seed is issued: raises
        #: when the policy refuses the request (see ``Sidecar.check_ticket``)
        self.ticket = ticket
        self.key = key
        self.public_pem = public_pem
        self.admit = admit
        self.committed = committed
        self.refused = refused
        self.ready = True


_STEP_NAMES = re.compile(r"^(latent|state/[^/].*|noise/(0|[1-9][0-9]{0,3}))$")
_START_NAMES = re.compile(r"^(latent|state/[^/].*|cond/[^/].*)$")
_FINAL_NAMES = re.compile(r"^latent$")


def _str(doc: dict[str, Any], key: str, limit: int = 256) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise MalformedInputError(f"START field {key!r} is missing or malformed")
    return value


@dataclass(frozen=True, slots=True)
class _StepLayout:
    """A step record's checked tensor list and what follows from it, worked out once per
    distinct listing (every step of a trajectory lists the same tensors)."""

    specs: list[TensorSpec]
    #: the bytes the record's tensors take
    nbytes: int
    #: ``noise/0`` … in order
    noise: tuple[str, ...]
    #: the ``state/…`` tensor names
    state: tuple[str, ...]
    #: every tensor's name, in body order
    names: tuple[str, ...]
    #: what :func:`record_digests` hashes, in body order
    hashing: tuple[HashItem, ...]


def _hashing(specs: list[TensorSpec]) -> tuple[HashItem, ...]:
    return tuple((tensor_header(s.dtype, s.shape), s.offset, s.nbytes) for s in specs)


def _step_layout(specs: list[TensorSpec], nbytes: int, what: str) -> _StepLayout:
    names = tuple(spec.name for spec in specs)
    if "latent" not in names:
        raise MalformedInputError(f"{what} carries no latent")
    noise = tuple(f"noise/{k}" for k in range(sum(n.startswith("noise/") for n in names)))
    if not all(n in names for n in noise):
        raise MalformedInputError(f"{what} numbers its noise tensors with gaps")
    state = tuple(n for n in names if n.startswith("state/"))
    return _StepLayout(specs, nbytes, noise, state, names, _hashing(specs))


class _Layouts:
    """Checked frame layouts, remembered per connection: every step of a trajectory lists the
    same tensors, so the checks (:func:`tensor_specs`, the allowed names) run once, and later
    frames only compare their tensor list with the remembered one."""

    def __init__(self) -> None:
        self._last: tuple[int, Any, int, list[TensorSpec]] | None = None
        self._record: tuple[Any, _StepLayout] | None = None
        self._step: tuple[list[TensorSpec], _StepLayout] | None = None

    def specs(self, frame: Frame, names: re.Pattern[str], what: str) -> list[TensorSpec]:
        listed = frame.header.get("tensors")
        last = self._last
        if (
            last is not None
            and last[0] == frame.kind
            and last[2] == len(frame.body)
            and last[1] == listed
        ):
            return last[3]
        specs = tensor_specs(frame)
        for spec in specs:
            if not names.match(spec.name):
                raise MalformedInputError(f"{what} carries an unexpected tensor {spec.name[:60]!r}")
        self._last = (frame.kind, listed, len(frame.body), specs)
        return specs

    def step(self, frame: Frame, what: str) -> _StepLayout:
        """A ``STEP`` frame's layout."""
        specs = self.specs(frame, _STEP_NAMES, what)
        last = self._step
        if last is not None and last[0] is specs:
            return last[1]
        layout = _step_layout(specs, len(frame.body), what)
        self._step = (specs, layout)
        return layout

    def record(self, listing: Any, available: int, what: str) -> _StepLayout:
        """One record of a ``STEPS`` frame: its layout (offsets relative to the record),
        checked once per distinct listing."""
        last = self._record
        if last is not None and last[0] == listing:
            layout = last[1]
        else:
            specs, nbytes = listing_specs(listing, available)
            for spec in specs:
                if not _STEP_NAMES.match(spec.name):
                    raise MalformedInputError(
                        f"{what} carries an unexpected tensor {spec.name[:60]!r}"
                    )
            layout = _step_layout(specs, nbytes, what)
            self._record = (listing, layout)
        if layout.nbytes > available:
            raise MalformedInputError(f"{what}: the frame body is truncated")
        return layout


def _digests(body: bytearray | memoryview, specs: list[TensorSpec]) -> dict[str, str]:
    """The canonical digest of every tensor in a frame body, from the raw bytes received (no
    tensors are built: one SHA-256 pass per tensor, with the GIL released)."""
    digests = record_digests(body, [(0, _hashing(specs))])
    return {spec.name: d for spec, d in zip(specs, digests, strict=True)}


def _index(header: dict[str, Any]) -> int:
    index = header.get("index")
    if type(index) is not int:
        raise MalformedInputError("STEP carries no integer index")
    return index


def _skeleton(header: dict[str, Any], what: str) -> dict[str, Any]:
    skeleton = header.get("state")
    if not isinstance(skeleton, dict):
        raise MalformedInputError(f"{what} carries no sampler state skeleton")
    return skeleton


def _state_digest(skeleton: dict[str, Any], digests: dict[str, str]) -> str:
    """The state digest from the skeleton and the frame's ``state/…`` tensor digests."""
    return state_digest(skeleton, {k[6:]: v for k, v in digests.items() if k.startswith("state/")})


def _state_keys(prefix: str, names: Iterable[str]) -> dict[str, str]:
    """Where a record's state tensors are stored, by state path."""
    return {n[6:]: f"{prefix}{n}" for n in names if n.startswith("state/")}


#: bytes of received frames a connection's digester may hold unhashed (backpressure beyond)
DIGEST_BACKLOG = 16 << 20


class _Digester:
    """Hashes one trajectory's STEP and FINAL frames and appends their leaves, on a thread of
    its own: SHA-256 releases the GIL, so the digests of frame k are computed on one core while
    the connection thread receives, checks and stores frame k+1 on another. Frames are hashed
    and their leaves appended in arrival order. The frame bodies stay valid while queued: the
    :class:`FrameReader` never overwrites bytes it handed out. At most ``DIGEST_BACKLOG`` bytes
    wait; the connection thread (and so the hook's socket) waits beyond that. The first error
    stops the work and is raised on the connection thread at the next frame or at FINISH."""

    def __init__(self) -> None:
        self.error: BaseException | None = None
        self._jobs: deque[tuple[Callable[..., None], tuple[Any, ...], int]] = deque()
        self._held = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="sg-ingest-digest", daemon=True)
        self._thread.start()

    def submit(self, nbytes: int, fn: Callable[..., None], *args: Any) -> None:
        with self._cond:
            while self._held > 0 and self._held + nbytes > DIGEST_BACKLOG and not self.error:
                self._cond.wait()
            if self.error is not None:
                raise self.error
            self._jobs.append((fn, args, nbytes))
            self._held += nbytes
            self._cond.notify_all()

    def drain(self) -> None:
        """Wait until every submitted frame is hashed; raise the first error."""
        with self._cond:
            while self._jobs and self.error is None:
                self._cond.wait()
            if self.error is not None:
                raise self.error

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._jobs.clear()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                fn, args, nbytes = self._jobs[0]
            try:
                fn(*args)
            except BaseException as exc:  # surfaced on the connection thread
                with self._cond:
                    self.error = exc
                    self._jobs.clear()
                    self._cond.notify_all()
                return
            with self._cond:
                if self._jobs:
                    self._jobs.popleft()
                self._held -= nbytes
                self._cond.notify_all()


#: a trajectory's digests move to a thread of their own once it has sent this many bytes: a
#: small model's whole trajectory stays below (a thread's start and hand-offs cost more than its
#: hashing), a 64 KiB latent's crosses it after four steps (on the 2-core VM 256 KiB gave
#: 9.0k-9.9k step records/s against 8.1k-9.5k with 4 MiB, four interleaved runs each)
DIGEST_THREAD_AFTER = 256 << 10


class _InlineDigester:
    """The digester's work on the connection thread, as each frame arrives, until the
    trajectory has sent ``DIGEST_THREAD_AFTER`` bytes; then a :class:`_Digester` thread takes
    over (every earlier job is done by then, so the order holds), if a core is spare for it.
    A small model's trajectory (a few KiB a step) never pays for a thread's start and
    hand-offs; a large one hashes on a core of its own. Where every core already runs a
    connection, the hashing stays inline: a second thread per stream then only adds hand-offs
    (on the 2-core VM a 64 KiB record cost the sidecar 105 us inline and 131-140 us with the
    digester thread). ``SAMPLERGUARD_INGEST_DIGEST_THREAD=0`` keeps all of it inline."""

    def __init__(self, threshold: int | None, spare_core: Callable[[], bool]) -> None:
        self._threshold = threshold
        self._spare_core = spare_core
        self._seen = 0
        self._thread: _Digester | None = None

    def submit(self, nbytes: int, fn: Callable[..., None], *args: Any) -> None:
        if self._thread is not None:
            self._thread.submit(nbytes, fn, *args)
            return
        self._seen += nbytes
        if self._threshold is not None and self._seen > self._threshold:
            if self._spare_core():
                self._thread = _Digester()
                self._thread.submit(nbytes, fn, *args)
                return
            self._threshold = None  # decided once: this trajectory hashes inline
        fn(*args)

    def drain(self) -> None:
        if self._thread is not None:
            self._thread.drain()

    def close(self) -> None:
        if self._thread is not None:
            self._thread.close()


def _digester(spare_core: Callable[[], bool]) -> _InlineDigester:
    threaded = os.environ.get("SAMPLERGUARD_INGEST_DIGEST_THREAD", "1") != "0"
    return _InlineDigester(DIGEST_THREAD_AFTER if threaded else None, spare_core)


def _ticket(header: dict[str, Any]) -> dict[str, Any] | None:
    """The request ticket a SEED or START carries (None: none); its shape and signature are
    checked against the policy by the gate."""
    ticket = header.get("ticket")
    if ticket is None or isinstance(ticket, dict):
        return ticket
    raise MalformedInputError("the request ticket is not a JSON object (a DSSE envelope)")


def _request_params(
    params: object, recipe: dict[str, Any], start: StartRequest
) -> dict[str, Any] | None:
    """The consumer's request parameters from START: they must hash to the digest the recipe
    commits and name this request, or the request is refused before anything is stored."""
    committed = recipe.get("request")
    if params is None and committed is None:
        return None
    if params is None or committed is None:
        raise MalformedInputError(
            "START carries request parameters without the recipe's request digest, or the "
            "digest without the parameters"
        )
    checked = check_request_params(params)
    if request_digest(checked) != committed:
        raise MalformedInputError("START's request parameters do not hash to the recipe's digest")
    if checked["requestId"] != start.request_id or checked["tenant"] != start.tenant:
        raise MalformedInputError("START's request parameters name another request or tenant")
    return checked


@dataclass(frozen=True)
class _Tree:
    """The digest-only tree the sidecar signs (a commitment `Tree`)."""

    recipe: dict[str, Any]
    root: bytes
    tree_size: int
    output_digest: str


class _Trajectory:
    """Server side of one connection's trajectory."""

    def __init__(self, server: IngestServer, frame: Frame, peer_pid: int | None = None) -> None:
        self.server = server
        header = frame.header
        req = header.get("request")
        recipe = header.get("recipe")
        if not isinstance(req, dict) or not isinstance(recipe, dict):
            raise MalformedInputError("START lacks the request or the recipe")
        escrow = header.get("seedEscrow")
        request_id, tenant = _str(req, "requestId", 128), _str(req, "tenant", 128)
        self.request_id = request_id
        rng_mode = _str(req, "rngMode", 32)
        declared = recipe.get("rng", "framework")
        if declared != rng_mode:
            # the signed recipe's RNG mode is the one the verifier holds the request to
            raise MalformedInputError(
                f"START's rngMode {rng_mode!r} differs from the recipe's rng {str(declared)[:32]!r}"
            )
        seeds = server.gate.seeds
        if seeds is not None and escrow is not None:
            # this sidecar issues the seeds and makes their escrows: the app cannot supply one
            # of its own choosing, in any mode
            raise MalformedInputError(
                "START carries a seed escrow, but this sidecar issues the seeds and their "
                "escrows itself"
            )
        #: the ledger of issued seeds, when this request's seed came from it: the seed is
        #: accounted for once the trajectory commits, else it is recorded as abandoned
        self._seed_ledger = None
        if seeds is not None and rng_mode != "framework":
            escrow = seeds.take(tenant, request_id).escrow
            self._seed_ledger = seeds.ledger
        try:
            self._begin(server, frame, peer_pid, request_id, tenant, rng_mode, recipe, escrow)
        except BaseException:
            self._seed_lapsed("refused at START")
            raise

    def _begin(
        self,
        server: IngestServer,
        frame: Frame,
        peer_pid: int | None,
        request_id: str,
        tenant: str,
        rng_mode: str,
        recipe: dict[str, Any],
        escrow: Any,
    ) -> None:
        header = frame.header
        solver = header.get("solverCode")
        self.start = StartRequest(
            request_id=request_id,
            tenant=tenant,
            rng_mode=rng_mode,
            recipe=recipe,
            solver_code=solver if isinstance(solver, str) else None,
            seed_escrow=escrow if isinstance(escrow, dict) else None,
            peer_pid=peer_pid,
            solver_files=header.get("solverFiles"),
            ticket=_ticket(header),
        )
        self.params = _request_params(header.get("requestParams"), recipe, self.start)
        self.decision = server.gate.admit(self.start)
        self._layouts = _Layouts()
        specs = self._layouts.specs(frame, _START_NAMES, "START")
        digests = _digests(frame.body, specs)
        latent = digests.get("latent")
        if latent is None:
            raise MalformedInputError("START carries no initial latent")
        state = _state_digest(_skeleton(header, "START"), digests)
        cond = {k[5:]: v for k, v in digests.items() if k.startswith("cond/")}
        schedule = header.get("schedule")
        if not isinstance(schedule, str):
            raise MalformedInputError("START carries no schedule digest")
        self.leaves = LeafLog()
        self.recipe = self.leaves.begin(recipe, cond, latent, state, schedule)
        server.ledger.check(self.start.request_id)
        self.writer: TrajectoryWriter = server.store.open(self.start.request_id)
        try:
            self.writer.add("i/", specs, frame.body)
        except BaseException:
            self.writer.discard()
            raise
        self._digester = _digester(server.spare_core)
        self.index: dict[str, Any] = {
            "initial": {
                "latent": "i/latent",
                "state": header["state"],
                "stateTensors": _state_keys("i/", digests),
            },
            "conditioning": {c: f"i/cond/{c}" for c in cond},
            "steps": [],
        }

    def step(self, frame: Frame) -> None:
        """One ``STEP`` frame: one step record."""
        index = _index(frame.header)
        layout = self._layouts.step(frame, f"STEP {index}")
        self._store([(index, frame.header, layout, 0)], frame.body)

    def steps(self, frame: Frame) -> None:
        """One ``STEPS`` frame: a batch of step records, checked one by one, then stored and
        hashed as one."""
        records = frame.header.get("steps")
        if not isinstance(records, list) or not 0 < len(records) <= MAX_STEPS_PER_FRAME:
            raise MalformedInputError(f"STEPS lists no records, or more than {MAX_STEPS_PER_FRAME}")
        size = len(frame.body)
        offset = 0
        checked = []
        for rec in records:
            if not isinstance(rec, dict):
                raise MalformedInputError("a STEPS record is not a JSON object")
            index = _index(rec)
            layout = self._layouts.record(rec.get("tensors"), size - offset, f"STEP {index}")
            checked.append((index, rec, layout, offset))
            offset += layout.nbytes
        if offset != size:
            raise MalformedInputError(
                f"STEPS body carries {size - offset} bytes beyond the listed tensors"
            )
        self._store(checked, frame.body)

    def _store(
        self, records: list[tuple[int, dict[str, Any], _StepLayout, int]], body: Any
    ) -> None:
        """Check the records' fields, store the frame body (one staged write for all of its
        records), index the records and queue their hashing (one job)."""
        jobs = []
        entries = []
        steps = self.index["steps"]
        view = memoryview(body)
        for index, header, layout, offset in records:
            timestep = header.get("timestep")
            if not isinstance(timestep, int | float) or isinstance(timestep, bool):
                raise MalformedInputError(f"STEP {index} carries no numeric timestep")
            skeleton = _skeleton(header, f"STEP {index}")
            prefix = f"s{index}/"
            entries.append((prefix, layout.specs, offset))
            steps.append(
                {
                    "latent": f"{prefix}latent",
                    "state": skeleton,
                    "stateTensors": _state_keys(prefix, layout.state),
                    "noise": [f"{prefix}{n}" for n in layout.noise],
                }
            )
            jobs.append((index, timestep, skeleton, layout, view, offset))
        self._check_size(len(view))
        self.writer.add_records(entries, view)
        self._digester.submit(len(view), self._leaves, jobs)

    def _leaves(self, jobs: list[tuple[Any, ...]]) -> None:
        """On the digester: the digests of a batch of step records (one hashing call) and
        their leaves, in order."""
        # every job holds the same frame body, each record at its own offset
        flat = record_digests(jobs[0][4], [(job[5], job[3].hashing) for job in jobs])
        at = 0
        for index, timestep, skeleton, layout, _, _ in jobs:
            digests = dict(zip(layout.names, flat[at : at + len(layout.names)], strict=True))
            at += len(layout.names)
            state = _state_digest(skeleton, digests)
            self.leaves.step(
                index, timestep, digests["latent"], state, [digests[n] for n in layout.noise]
            )

    def abandon(self) -> None:
        """Drop the uncommitted trajectory: stop hashing, delete what was stored."""
        self._digester.close()
        self.writer.discard()
        self._seed_lapsed("not committed")

    def _seed_lapsed(self, reason: str) -> None:
        ledger, self._seed_ledger = self._seed_ledger, None
        if ledger is not None:
            ledger.abandoned(self.request_id, reason)

    def _check_size(self, more: int) -> None:
        cap = self.server.max_trajectory_bytes
        if self.writer.size + more > cap:
            raise MalformedInputError(f"trajectory exceeds the {cap}-byte cap")

    def final(self, frame: Frame) -> None:
        specs = self._layouts.specs(frame, _FINAL_NAMES, "FINAL")
        if [spec.name for spec in specs] != ["latent"]:
            raise MalformedInputError("FINAL carries no latent")
        self._check_size(len(frame.body))
        self.writer.add("f/", specs, frame.body)
        self._digester.submit(len(frame.body), self._final_leaf, specs, frame.body)

    def _final_leaf(self, specs: list[TensorSpec], body: bytearray | memoryview) -> None:
        self.leaves.final(_digests(body, specs)["latent"])

    def finish(self, frame: Frame) -> Commitment:
        output = frame.header.get("output")
        if not isinstance(output, str) or not output.startswith("sha256:"):
            raise MalformedInputError("FINISH carries no output digest")
        self._digester.drain()
        self._digester.close()
        root = self.leaves.finish(output)
        hook_root = frame.header.get("root")
        if hook_root is not None and hook_root != root.hex():
            raise MalformedInputError(
                f"the hook's root {str(hook_root)[:16]}… differs from the root of the bytes "
                f"received {root.hex()[:16]}… (corrupted stream)"
            )
        predicate = dict(self.decision.predicate)
        if self.decision.admission.verdict == "quarantine":
            predicate["quarantine"] = list(self.decision.admission.reasons)
        tree = _Tree(self.recipe, root, len(self.leaves.leaves), output)
        commitment = commit(
            tree,
            self.server.gate.key,
            request_id=self.start.request_id,
            tenant=self.start.tenant,
            extra=predicate,
        )
        self.index.update(
            id=self.start.request_id,
            committedAt=time.time(),
            root=root.hex(),
            leaves=[base64.b64encode(leaf).decode() for leaf in self.leaves.leaves],
            envelope=commitment.envelope,
            quarantine=list(self.decision.admission.reasons),
            seedEscrow=self.start.seed_escrow,
            request=self.params,
            ticket=self.start.ticket,
        )
        self.writer.commit(self.index, fsync=self.server.fsync)
        # claimed once committed, not at START: a refused or interrupted stream may be retried;
        # a crash between the two is covered by the ledger taking in the store at start
        self.server.ledger.remember(self.start.request_id)
        ledger, self._seed_ledger = self._seed_ledger, None
        if ledger is not None:
            ledger.taken(self.start.request_id)
        return commitment


_PEERCRED = struct.Struct("3i")


def _peer_pid(sock: socket.socket) -> int | None:
    """The pid of the connected process (Linux ``SO_PEERCRED``); 0 when it is in a process
    namespace this one cannot see."""
    opt = getattr(socket, "SO_PEERCRED", None)
    if opt is None:
        return None
    try:
        pid: int = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, opt, _PEERCRED.size))[0]
    except OSError:
        return None
    return pid


def _issue_seed(ingest: IngestServer, frame: Frame) -> dict[str, Any]:
    """Answer a ``SEED`` frame: the request's seed, derived and escrowed by this sidecar."""
    seeds = ingest.gate.seeds
    if seeds is None:
        raise MalformedInputError(
            "this sidecar holds no master secret: it issues no seeds (configure "
            "SAMPLERGUARD_MASTER_SECRET_FILE, or draw the noise in the app)"
        )
    header = frame.header
    request_id = _str(header, "requestId", 128)
    tenant = _str(header, "tenant", 128)
    ingest.ledger.check(request_id)
    ticketed = False
    if ingest.gate.ticket is not None:
        # before the seed exists: an unticketed request id never claims one
        ticketed = ingest.gate.ticket(_ticket(header), tenant, request_id)
    # a ticketed id's seed is derived, not drawn: the same on every replica and after a
    # restart, so one ticket is one draw however often it is presented
    issued = seeds.issue(tenant, request_id, _str(header, "rngMode", 32), derived=ticketed)
    seed = issued.seed
    return {
        "ok": True,
        "mode": seed.mode,
        "seed": base64.b64encode(seed._unsafe_material()).decode(),
        "tenantPseudonym": seed.tenant_pseudonym,
        "seedPseudonym": seed.seed_pseudonym,
        "escrowed": issued.escrow is not None,
    }


def _cut(sock: socket.socket) -> None:
    """End a connection (its first frame missed the deadline, or a new connection needs the
    slot it keeps idle): wakes its handler's blocked read."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _reply(sock: socket.socket, **fields: Any) -> None:
    send_frame(sock, FRAME_REPLY, fields)


class _Handler(socketserver.BaseRequestHandler):
    server: _UnixServer

    def handle(self) -> None:
        ingest = self.server.ingest
        sock: socket.socket = self.request
        tune_socket(sock)
        # Until START is validated the peer has proved nothing: its first frame must arrive
        # whole within start_timeout (a total deadline: the timer cuts a trickle) and within
        # max_start_bytes.
        sock.settimeout(ingest.start_timeout)
        deadline = threading.Timer(ingest.start_timeout, _cut, (sock,))
        deadline.daemon = True
        deadline.start()
        frames = FrameReader(
            sock, buffer_size=ingest.receive_buffer, buffers=ingest.receive_buffers
        )
        try:
            first = self._first_frame(sock, frames, kept=False)
        finally:
            deadline.cancel()
        if first is None:
            return
        peer = _peer_pid(sock)
        ingest._connection(1)
        try:
            self._serve(sock, frames, first, peer)
        finally:
            ingest._connection(-1)

    def _serve(
        self, sock: socket.socket, frames: FrameReader, first: Frame, peer: int | None
    ) -> None:
        ingest = self.server.ingest
        # A connection that committed a trajectory or took a seed has proved itself (a validated
        # START or seed request): it may carry the next exchange, as the hook keeps its
        # connection for the next trajectory. It waits up to keepalive_timeout for the next
        # first frame (and that frame must be whole by the start deadline after), then the
        # sidecar closes it and frees the slot; it gives the slot up at once to a new connection
        # that waits for one. A readiness probe proves nothing and is closed after its answer.
        while self._exchange(sock, frames, first, peer):
            if not ingest._enter_idle(sock):
                return  # a new connection is waiting for this slot
            sock.settimeout(ingest.keepalive_timeout)
            try:
                next_first = self._first_frame(sock, frames, kept=True)
            finally:
                still_ours = ingest._leave_idle(sock)
            if next_first is None or not still_ours:
                return
            first = next_first

    def _first_frame(self, sock: socket.socket, frames: FrameReader, *, kept: bool) -> Frame | None:
        """The first frame of an exchange, or None when the connection ends here: closed by
        the hook, failed, or refused with an answer. On a ``kept`` connection a timeout is the
        keep-alive running out, not a failure."""
        try:
            return frames.read(max_body=self.server.ingest.max_start_bytes)
        except WireClosedError:
            return None
        except TimeoutError:
            if not kept:
                log.warning("hook connection failed: TimeoutError")
            return None
        except OSError as exc:
            log.warning("hook connection failed: %s", type(exc).__name__)
            return None
        except (SamplerGuardError, ValueError) as exc:
            self._refuse(sock, None, exc)
            return None

    def _exchange(
        self, sock: socket.socket, frames: FrameReader, first: Frame, peer: int | None
    ) -> bool:
        """Serve one exchange that began with ``first``: a readiness probe, a seed, or a whole
        trajectory. True when a seed was issued or a trajectory committed: the connection may
        carry another exchange."""
        ingest = self.server.ingest
        tr: _Trajectory | None = None
        sock.settimeout(ingest.idle_timeout)
        try:
            if first.kind == FRAME_HELLO:
                _reply(
                    sock,
                    ok=ingest.gate.ready,
                    publicKey=ingest.gate.public_pem,
                    error=None if ingest.gate.ready else "runtime integrity mismatch",
                )
                return False
            if first.kind == FRAME_SEED:
                _reply(sock, **_issue_seed(ingest, first))
                return True
            if first.kind != FRAME_START:
                raise MalformedInputError(f"expected START, got frame kind {first.kind}")
            tr = _Trajectory(ingest, first, peer)
            _reply(
                sock,
                ok=True,
                verdict=tr.decision.admission.verdict,
                reasons=list(tr.decision.admission.reasons),
                publicKey=ingest.gate.public_pem,
            )
            while True:
                frame = frames.read()
                if frame.kind == FRAME_STEPS:
                    tr.steps(frame)
                elif frame.kind == FRAME_STEP:
                    tr.step(frame)
                elif frame.kind == FRAME_FINAL:
                    tr.final(frame)
                elif frame.kind == FRAME_FINISH:
                    commitment = tr.finish(frame)
                    done, tr = tr, None
                    ingest.count_committed()
                    if ingest.gate.committed is not None:
                        ingest.gate.committed(done.start, commitment, done.decision)
                    _reply(sock, ok=True, commitment=commitment.envelope, id=done.start.request_id)
                    return True
                elif frame.kind == FRAME_ABORT:
                    log.info(
                        "hook aborted %s: %s",
                        tr.start.request_id,
                        str(frame.header.get("reason"))[:200],
                    )
                    return False
                else:
                    raise MalformedInputError(f"unexpected frame kind {frame.kind}")
        except WireClosedError:
            if tr is not None:
                log.warning(
                    "hook connection for %s closed mid-trajectory; nothing committed",
                    tr.start.request_id,
                )
        except (TimeoutError, OSError) as exc:
            log.warning("hook connection failed: %s", type(exc).__name__)
        except (SamplerGuardError, ValueError) as exc:
            if tr is not None:
                tr.abandon()  # before the answer: a retry may reuse the request id
            self._refuse(sock, tr, exc)
        finally:
            if tr is not None:
                tr.abandon()
        return False

    def _refuse(
        self, sock: socket.socket, tr: _Trajectory | None, exc: SamplerGuardError | ValueError
    ) -> None:
        """Answer a refused exchange with its reason; the connection then closes."""
        ingest = self.server.ingest
        msg = str(exc)[:1000]
        log.warning("refused a trajectory: %s", msg)
        if ingest.gate.refused is not None:
            ingest.gate.refused(tr.start if tr is not None else None, msg)
        with contextlib.suppress(OSError):
            _reply(
                sock,
                ok=False,
                error=msg,
                retry=isinstance(exc, TemporaryError) and not isinstance(exc, RequestRefusedError),
            )


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False
    # hooks beyond max_connections wait here (the kernel caps it at net.core.somaxconn)
    request_queue_size = 1024
    ingest: IngestServer

    def process_request(self, request: Any, client_address: Any) -> None:
        # Block the accept loop while max_connections are busy: further hooks wait in the
        # backlog (backpressure) instead of being refused. A kept connection waiting for its
        # next exchange gives its slot up to a new one.
        ingest = self.ingest
        if not ingest._slots.acquire(blocking=False):
            ingest._waiting(1)
            try:
                ingest.reclaim_idle()
                # a connection that goes idle from now on gives its slot up instead of waiting
                ingest._slots.acquire()
            finally:
                ingest._waiting(-1)
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.ingest._slots.release()


#: bytes of idle receive buffers kept for reuse across connections (resident pages; a burst of
#: connections may hold more while it lasts)
RECEIVE_BUFFERS_KEPT = 32 << 20


class IngestServer:
    def __init__(
        self,
        path: Path,
        store: OpeningStore,
        gate: Gate,
        *,
        max_connections: int = 64,
        max_trajectory_bytes: int = 1 << 30,
        idle_timeout: float = 300.0,
        fsync: bool = False,
        mode: int = 0o660,
        receive_buffer: int = 4 << 20,
        start_timeout: float = 5.0,
        max_start_bytes: int = 64 << 20,
        keepalive_timeout: float = 30.0,
    ) -> None:
        self.path = path
        self.receive_buffer = receive_buffer
        self.receive_buffers = ReceiveBuffers(
            receive_buffer, keep=max(1, RECEIVE_BUFFERS_KEPT // receive_buffer)
        )
        self.start_timeout = start_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_start_bytes = max_start_bytes
        self.store = store
        self.ledger = RequestIdLedger(store.root / LEDGER_NAME)
        for entry in store.committed(after=0, limit=1 << 62):
            self.ledger.remember(entry.id)
        self.gate = gate
        self.max_trajectory_bytes = max_trajectory_bytes
        self.idle_timeout = idle_timeout
        self.fsync = fsync
        self._slots = threading.BoundedSemaphore(max_connections)
        self._count_lock = threading.Lock()
        self.committed = 0
        #: connections being served (not kept ones waiting for their next exchange), against
        #: the CPUs this process may run on
        self._active = 0
        #: kept connections waiting for their next exchange, longest-idle first, with the
        #: token of this wait (a connection waits again and again)
        self._idle: dict[socket.socket, int] = {}
        self._wait_tokens = itertools.count()
        #: (deadline, token, connection) of every wait, earliest first; one watchdog thread
        #: closes a connection whose wait, next first frame included, passed its deadline
        self._deadlines: list[tuple[float, int, socket.socket]] = []
        self._watch = threading.Condition(self._count_lock)
        self._closing = False
        self._watchdog = threading.Thread(
            target=self._expire_waits, name="sg-keepalive", daemon=True
        )
        #: kept connections closed while idle: their handler must not act on a frame it read
        self._reclaimed: set[socket.socket] = set()
        #: new connections waiting for a slot (the accept loop: at most one)
        self._slot_waiters = 0
        self._cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            path.unlink()  # a stale socket from a previous run
        self._server = _UnixServer(str(path), _Handler)
        self._server.ingest = self
        os.chmod(path, mode)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="sg-ingest", daemon=True
        )

    def count_committed(self) -> None:
        with self._count_lock:
            self.committed += 1

    def spare_core(self) -> bool:
        """Whether a CPU this process may run on is not taken by a connection (one busy
        trajectory per core): then a large trajectory's hashing gets a thread of its own."""
        with self._count_lock:
            return self._active < self._cores

    def _connection(self, delta: int) -> None:
        with self._count_lock:
            self._active += delta

    def _waiting(self, delta: int) -> None:
        with self._count_lock:
            self._slot_waiters += delta

    def _enter_idle(self, sock: socket.socket) -> bool:
        """A kept connection starts waiting for its next exchange: False when a new connection
        is waiting for a slot, which this one then gives up at once (its handler ends)."""
        with self._count_lock:
            if self._slot_waiters:
                return False
            token = next(self._wait_tokens)
            self._idle[sock] = token
            # the whole wait, the next first frame included, is bounded: a trickled frame
            # holds a slot, a thread and a buffer no longer than a silent connection
            deadline = time.monotonic() + self.keepalive_timeout + self.start_timeout
            heapq.heappush(self._deadlines, (deadline, token, sock))
            if self._deadlines[0][1] == token:
                self._watch.notify()
            self._active -= 1  # waiting takes no core
            return True

    def _expire_waits(self) -> None:
        """The watchdog: closes kept connections whose wait passed its deadline."""
        with self._watch:
            while not self._closing:
                if not self._deadlines:
                    self._watch.wait()
                    continue
                deadline, token, sock = self._deadlines[0]
                now = time.monotonic()
                if deadline > now:
                    self._watch.wait(deadline - now)
                    continue
                heapq.heappop(self._deadlines)
                if self._idle.get(sock) == token:  # still that wait
                    del self._idle[sock]
                    self._reclaimed.add(sock)
                    _cut(sock)

    def _leave_idle(self, sock: socket.socket) -> bool:
        """A kept connection's wait ended (a first frame read, or the read failed): False when
        the connection was reclaimed meanwhile, and whatever was read must be dropped: the
        hook sees its exchange unanswered on a reused connection and sends it again on a new
        one, which is right only if nothing of it was acted on."""
        with self._count_lock:
            self._idle.pop(sock, None)
            self._active += 1
            if sock in self._reclaimed:
                self._reclaimed.discard(sock)
                return False
            return True

    def reclaim_idle(self) -> bool:
        """Close the longest-idle kept connection, if any (a new connection needs its slot);
        its hook opens a new connection for its next exchange. True when one was closed."""
        with self._count_lock:
            if not self._idle:
                return False
            sock = next(iter(self._idle))
            del self._idle[sock]
            self._reclaimed.add(sock)
        _cut(sock)  # wakes its handler's read with end of stream; the slot is freed
        return True

    def start(self) -> None:
        self._watchdog.start()
        self._thread.start()

    def close(self) -> None:
        with self._watch:
            self._closing = True
            self._watch.notify()
        if self._thread.is_alive():  # shutdown() would wait forever for a loop never started
            self._server.shutdown()
        self._server.server_close()
        self.path.unlink(missing_ok=True)
        self.ledger.close()
