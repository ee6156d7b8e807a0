"""The in-process recorder: observes a denoising loop and hands it to a sink, off the loop thread.

The loop thread does the minimum: host copies of the latent and of the sampler state (pinned and
non-blocking from CUDA), a CUDA event when needed, and a non-blocking ``queue.put`` every few
steps. Everything else happens on the recorder's worker thread, in the sink: streaming to the
sidecar (which hashes, builds the tree and signs), or, with the in-process sink, hashing,
canonical JSON, the Merkle tree and signing. The hook never changes what the pipeline computes:
it reads tensors and returns them untouched.

Plain loop, three lines of the API::

    with recorder.trajectory(request) as tr:
        tr.begin(scheduler, latents, conditioning={"class_labels": labels})
        for i, t in enumerate(scheduler.timesteps):
            latents = my_step(latents, t)
            tr.step(i, t, latents, scheduler)
        tr.end(latents, output_bytes)
    commitment = tr.commitment
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from samplerguard.commitment.digest import bytes_digest
from samplerguard.commitment.draws import observe_noise
from samplerguard.commitment.fingerprint import build_fingerprint
from samplerguard.commitment.plan import SamplerPlan, sampler_plan
from samplerguard.commitment.request import check_request_params, request_digest
from samplerguard.commitment.state import (
    Borrowed,
    CopyMemo,
    SamplerState,
    ScheduleDigests,
    borrow_or_copy,
    capture_schedule,
    capture_state,
    changed_since,
    host_copy,
)
from samplerguard.commitment.statement import Commitment
from samplerguard.commitment.ticket import read_ticket
from samplerguard.commitment.trajectory import TrajectoryRecord
from samplerguard.errors import MalformedInputError, SamplerGuardError

__all__ = [
    "Begin",
    "Begun",
    "Recorder",
    "RecordingError",
    "Sink",
    "StepRecord",
    "Trajectory",
    "TrajectoryRequest",
    "check_borrowed",
    "scheduler_config",
]

log = logging.getLogger(__name__)


class RecordingError(SamplerGuardError):
    """The trajectory could not be recorded or committed; the request is *unverified*."""


@dataclass(frozen=True)
class TrajectoryRequest:
    """The public facts of one generation, as the serving app declares them."""

    request_id: str
    tenant: str
    pipeline: str  # "digits", "stable-diffusion", …
    model_name: str
    model_digest: str
    sampler: str
    guidance_scale: float
    steps: int
    rng_mode: str = "framework"
    extra: Mapping[str, Any] = field(default_factory=dict)
    #: The consumer's request parameters, exactly as it sent them (see
    #: :mod:`samplerguard.commitment.request`): their digest is committed, the sidecar keeps them
    #: for the verifier, and the consumer checks its response against them.
    params: Mapping[str, Any] | None = None
    #: The pipeline's ``output_type``: how the output bytes are derived from the final latent.
    output_type: str = "pt"
    #: The gateway's request ticket for this request (a DSSE envelope, see
    #: :mod:`samplerguard.commitment.ticket`): sent with START, where a policy requiring
    #: tickets checks it. It must name this request id and tenant.
    ticket: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        _check_request_fields(self)
        if self.ticket is not None:
            _, named = read_ticket(self.ticket)
            if (named["requestId"], named["tenant"]) != (self.request_id, self.tenant):
                raise MalformedInputError(
                    f"the request ticket is for request {named['requestId'][:64]!r} of tenant "
                    f"{named['tenant'][:64]!r}, not {self.request_id!r} of {self.tenant!r}"
                )
        if self.params is None:
            return
        params = check_request_params(self.params)
        mine = {
            "requestId": self.request_id,
            "tenant": self.tenant,
            "steps": self.steps,
            "guidanceScale": self.guidance_scale,
        }
        wrong = {k: params[k] for k, v in mine.items() if params[k] != v}
        if wrong:
            raise MalformedInputError(
                f"the request parameters {wrong} differ from the trajectory request's "
                f"{ {k: mine[k] for k in wrong} }: declare what the consumer asked for"
            )

    def recipe(
        self, scheduler: Any, latent_shape: tuple[int, ...], device: Any = None
    ) -> dict[str, Any]:
        bound = {} if self.params is None else {"request": request_digest(self.params)}
        return {
            **bound,
            "output_type": self.output_type,
            "pipeline": self.pipeline,
            "model": {"name": self.model_name, "digest": self.model_digest},
            "sampler": self.sampler,
            "scheduler_class": type(scheduler).__name__,
            "scheduler_config": scheduler_config(scheduler),
            "steps": self.steps,
            "guidance_scale": float(self.guidance_scale),
            "rng": self.rng_mode,
            "latent_shape": list(latent_shape),
            # The build fingerprint: what a verifier needs to know whether it reproduces this
            # configuration bit for bit (and to set what it can, such as the thread count).
            "runtime": build_fingerprint(device),
            **{k: _jsonable(v) for k, v in self.extra.items()},
        }


_RNG_MODES = ("framework", "ctr-drbg", "hmac-drbg")


def _check_request_fields(req: TrajectoryRequest) -> None:
    """Misuse fails here, at construction, with what to do, instead of being signed into a
    commitment that can only fail at verification."""
    from samplerguard.policy.spec import KNOWN_SAMPLERS, REFUSED_SCHEDULERS

    for name in ("request_id", "tenant", "pipeline", "model_name", "model_digest"):
        value = getattr(req, name)
        if not isinstance(value, str) or not value or len(value) > 256:
            raise MalformedInputError(f"TrajectoryRequest.{name} must be a non-empty string")
    if req.sampler in REFUSED_SCHEDULERS:
        raise MalformedInputError(
            f"sampler {req.sampler!r} cannot be verified: {REFUSED_SCHEDULERS[req.sampler]}"
        )
    if req.sampler not in KNOWN_SAMPLERS and req.sampler not in KNOWN_SAMPLERS.values():
        close = [s for s in KNOWN_SAMPLERS if s.startswith(req.sampler[:3].lower())][:5]
        raise MalformedInputError(
            f"unknown sampler {req.sampler!r}"
            + (f" (did you mean {', '.join(close)}?)" if close else "")
            + f"; the samplers are {sorted(KNOWN_SAMPLERS)}"
        )
    if isinstance(req.steps, bool) or not isinstance(req.steps, int) or not 1 <= req.steps <= 1000:
        raise MalformedInputError(f"TrajectoryRequest.steps must be 1..1000, got {req.steps!r}")
    if (
        isinstance(req.guidance_scale, bool)
        or not isinstance(req.guidance_scale, int | float)
        or not math.isfinite(req.guidance_scale)
        or not 0.0 <= req.guidance_scale <= 100.0
    ):
        raise MalformedInputError(
            f"TrajectoryRequest.guidance_scale must be a number in [0, 100], got "
            f"{req.guidance_scale!r}"
        )
    if req.rng_mode not in _RNG_MODES:
        raise MalformedInputError(
            f"TrajectoryRequest.rng_mode must be one of {list(_RNG_MODES)}, got {req.rng_mode!r}"
        )


def _tensor(value: object, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        hint = " (use torch.from_numpy)" if type(value).__module__ == "numpy" else ""
        raise MalformedInputError(
            f"{what} must be a torch.Tensor, got {type(value).__name__}{hint}"
        )
    return value


def scheduler_config(scheduler: Any) -> dict[str, Any]:
    """The scheduler's effective config as JSON. diffusers' private keys are dropped: in
    particular ``_use_default_values``, which would make ``from_config`` reset values that a
    pipeline changed after construction (Stable Diffusion rewrites DDIM's ``steps_offset``).

    The last config's JSON is kept, by the config's ``repr``: a server asks for the same
    scheduler's config every request, and its ``repr`` (which tells ``1`` from ``1.0`` and
    ``True``, and ``0.0`` from ``-0.0``) costs a fraction of converting it. A ``repr`` that
    abbreviates (a long array's ``...``) is never kept."""
    global _LAST_CONFIG
    raw = dict(scheduler.config)
    key = repr(raw)
    last = _LAST_CONFIG
    if last is not None and last[0] == key:
        return dict(last[1])
    out = {str(k): _jsonable(v) for k, v in raw.items() if not str(k).startswith("_")}
    if "..." not in key:
        _LAST_CONFIG = (key, out)
    return dict(out)


#: the ``repr`` of the last config :func:`scheduler_config` converted, and its JSON
_LAST_CONFIG: tuple[str, dict[str, Any]] | None = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": repr(value)}  # JSON has no inf/nan; build_scheduler decodes this
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


@dataclass(frozen=True)
class Begun:
    """The sampler as the pipeline set it up for the loop (see :meth:`Trajectory.begin`)."""

    #: recipe fields of the set-up: ``set_timesteps``, ``begin_index``, ``step_args``
    recipe: Mapping[str, Any]
    schedule: Mapping[str, torch.Tensor]
    state: SamplerState


@dataclass(frozen=True)
class Begin:
    """What the recorder knows before step 0: the public recipe, z_N, the sampler state, the
    schedule digest and the conditioning (host copies, synchronised)."""

    recipe: dict[str, Any]
    latent: torch.Tensor
    state: SamplerState
    schedule: str
    conditioning: dict[str, torch.Tensor]


@dataclass(frozen=True)
class StepRecord:
    """One step as the recorder hands it to the sink (host copies, synchronised).

    For a sink that ``borrows``, host tensors are not copied: ``latent`` and the state's
    tensors may be the pipeline's own, listed in ``borrowed`` with their version counters, and
    the sink must check with :func:`~samplerguard.commitment.state.changed_since` after it has
    read them that the pipeline did not change them in place meanwhile."""

    index: int
    timestep: int | float
    latent: torch.Tensor
    state: SamplerState
    noise: list[torch.Tensor]
    borrowed: Borrowed = field(default_factory=list)


def check_borrowed(sink: Any, borrowed: Borrowed, read: str) -> None:
    """After a sink has ``read`` the tensors a step borrowed (sent them, copied them): were any
    changed in place meanwhile? Then what it read may not be what the step produced: the
    trajectory fails, and the sink (its ``borrows`` cleared) gets copies from then on."""
    changed = changed_since(borrowed)
    borrowed.clear()
    if changed:
        sink.borrows = False
        log.warning(
            "the pipeline changed %d recorded tensors in place before they were %s; "
            "%s copies them from now on",
            changed,
            read,
            type(sink).__name__,
        )
        raise MalformedInputError(
            f"the pipeline changed {changed} recorded tensors in place before they were "
            f"{read}, so this trajectory cannot be committed (later ones are recorded from "
            f"copies; {type(sink).__name__}(borrow=False) copies from the start)"
        )


class Sink(Protocol):
    """Where trajectories go, called on the recorder's worker thread only.

    :class:`~samplerguard.hook.local.LocalSink` builds the tree and signs in this process;
    :class:`~samplerguard.hook.sidecar_sink.SidecarSink` streams the tensors to the sidecar,
    which hashes, builds the tree and signs (the serving process spends no CPU on hashing).

    A sink with a true ``borrows`` attribute takes host tensors without copies (see
    :class:`StepRecord`); any other gets copies it owns."""

    def start(self, request: TrajectoryRequest, begin: Begin) -> Any:
        """Open the trajectory; returns a per-trajectory handle."""

    def step(self, handle: Any, step: StepRecord) -> None:
        """Record one step. A sink may also take a hand-off's steps at once, with a
        ``steps(handle, records)`` method, which the recorder then calls instead."""

    def finish(
        self, handle: Any, final_latent: torch.Tensor, output_digest: str
    ) -> tuple[Commitment, TrajectoryRecord | None]:
        """Commit; returns the signed commitment and, where the sink built it, the record."""

    def abort(self, handle: Any, reason: str) -> None:
        """The trajectory failed; nothing may be committed for it."""


_STOP = object()

#: a step as the loop holds it for the worker: index, timestep (a host copy of a CUDA one),
#: latent, state, noise, borrowed tensors, the CUDA event to wait for
_Held = tuple[int, Any, torch.Tensor, SamplerState, list[torch.Tensor], Borrowed, Any]


#: at most this many steps go to the worker in one hand-off
BATCH = 32
#: a hand-off goes sooner once its steps hold this many bytes of tensors (large latents: the
#: worker then starts on them while the loop runs on, and fewer wait in memory)
HANDOFF_BYTES = 4 << 20
#: or once the oldest step it holds (or the trajectory's start) waited this long: a slow model
#: with small latents has its start admitted, and its steps sent, while the loop runs on
HANDOFF_SECONDS = 1.0


class Recorder:
    """Owns the worker thread and the hand-off queue, bounded in steps.

    ``max_pending`` bounds memory in steps. Backpressure never reaches the denoising loop:
    when the worker falls that far behind (a sidecar that stopped reading), the trajectory is
    marked unverified at once, its queued data is dropped and the loop goes on without copying
    anything more for it; the request then fails closed with that reason.

    Steps are handed over in batches of up to ``batch``, fewer once they hold ``handoff_bytes``
    of tensors or the oldest waited ``handoff_seconds``. Every hand-off wakes the worker, and
    the woken worker (and the sidecar it streams to) then runs its code cold: on a small model
    the number of hand-offs, not the bytes, is what the recording costs. The trajectory's start
    goes with its first hand-off (``early_start``: at once, so that the sidecar admits it while
    the loop runs); its end goes at once.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        max_pending: int = 256,
        batch: int = BATCH,
        handoff_bytes: int = HANDOFF_BYTES,
        handoff_seconds: float = HANDOFF_SECONDS,
        early_start: bool = False,
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be at least 1")
        if max_pending < 1 or handoff_bytes < 1:
            raise ValueError("max_pending and handoff_bytes must be at least 1")
        if not handoff_seconds > 0:
            raise ValueError("handoff_seconds must be positive")
        self.sink = sink
        self.batch = batch
        self.handoff_bytes = handoff_bytes
        self.handoff_seconds = handoff_seconds
        self.early_start = early_start
        self._closed = False
        self.max_pending = max_pending
        #: jobs with the steps they carry; what it holds is bounded by ``max_pending`` steps
        self._queue: queue.SimpleQueue[tuple[Any, int]] = queue.SimpleQueue()
        self._pending = 0  # steps handed over and not yet run
        self._lock = threading.Lock()
        #: the schedule digest, worked out once per distinct schedule (on the worker only)
        self.schedule_digests = ScheduleDigests()
        self._thread = threading.Thread(
            target=self._work, name="samplerguard-recorder", daemon=True
        )
        self._thread.start()

    def _work(self) -> None:
        while True:
            item, steps = self._queue.get()
            if item is _STOP:
                return
            try:
                item()
            except Exception:  # pragma: no cover - every job catches its own errors
                log.exception("recorder job failed")
            finally:
                if steps:
                    with self._lock:
                        self._pending -= steps

    def submit(self, job: Callable[[], None], *, steps: int = 0, bounded: bool = False) -> None:
        """Queue a job carrying ``steps`` step records for the worker. ``bounded``: raise
        :class:`queue.Full` instead when the worker already holds ``max_pending`` steps (the
        loop's hand-offs of steps; a trajectory's start and end are always taken)."""
        with self._lock:
            if bounded and self._pending + steps > self.max_pending:
                raise queue.Full
            self._pending += steps
        self._queue.put((job, steps))

    def close(self) -> None:
        self._closed = True
        self._queue.put((_STOP, 0))
        self._thread.join(timeout=30)
        close = getattr(self.sink, "close", None)
        if callable(close):
            close()  # a sink's idle connections

    @contextmanager
    def trajectory(self, request: TrajectoryRequest) -> Iterator[Trajectory]:
        if self._closed:
            raise RecordingError("this Recorder is closed: make a new one for more trajectories")
        if not isinstance(request, TrajectoryRequest):
            raise MalformedInputError(
                f"Recorder.trajectory takes a TrajectoryRequest, got {type(request).__name__}"
            )
        tr = Trajectory(self, request)
        with ExitStack() as stack:
            stack.enter_context(observe_noise(tr._saw_noise))
            try:
                yield tr
            except BaseException as exc:
                tr._abort(f"generation raised {type(exc).__name__}")
                raise
        tr._wait()


class Trajectory:
    """One generation being recorded. Methods are called on the denoising loop's thread."""

    def __init__(self, recorder: Recorder, request: TrajectoryRequest) -> None:
        self._recorder = recorder
        self.request = request
        self._noise: list[torch.Tensor] = []
        self._schedule: dict[str, torch.Tensor] = {}
        #: the last step's state copies, reused for tensors the scheduler carries unchanged
        self._copies: CopyMemo = {}
        self._pending_initial: tuple[Any, ...] | None = None
        self._conditioning: dict[str, torch.Tensor] | None = None
        self._started = False
        self._handle: Any = None
        self._error: str | None = None
        self._done = threading.Event()
        #: steps recorded on the loop, held for the next hand-off to the worker
        self._held: list[_Held] = []
        #: the trajectory's start, when it waits for the first hand-off
        self._start: Callable[[], None] | None = None
        self._held_since = 0.0  # monotonic time of the oldest thing held
        #: steps per hand-off, set at the first step (see Recorder)
        self._handoff: int | None = None
        self._lagged: str | None = None  # set on the loop thread when the worker fell behind
        self._began = False
        self._borrow = False
        self._cuda = False  # the latents live on a CUDA device: copies need an event
        self._ended = False
        self._next_step = 0
        self._commitment: Commitment | None = None
        self.record: TrajectoryRecord | None = None

    @property
    def commitment(self) -> Commitment | None:
        """The signed commitment, once the ``with recorder.trajectory(...)`` block has exited
        (it is made on the recorder's worker after :meth:`end`)."""
        if not self._done.is_set():
            raise RecordingError(
                "the commitment is ready when the `with recorder.trajectory(...)` block exits; "
                "read tr.commitment after it"
            )
        return self._commitment

    # -- loop-thread side ----------------------------------------------------------------------

    def _saw_noise(self, t: torch.Tensor) -> None:
        if self._began:
            self._noise.append(host_copy(t))

    @staticmethod
    def _event(*tensors: torch.Tensor) -> Any:
        if any(t.is_cuda for t in tensors):
            ev = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ev.record()
            return ev
        return None

    def begin(
        self,
        scheduler: Any,
        latents: torch.Tensor,
        conditioning: Mapping[str, torch.Tensor] | None = None,
        *,
        before: Begun | None = None,
    ) -> None:
        """Record z_N and the sampler before step 0. Call after ``set_timesteps``.

        ``before`` is the sampler as the pipeline set it up, captured when it did (the
        pipeline integration passes it: by the first step, ``scale_model_input`` has moved the
        live scheduler on)."""
        if self._began:
            raise MalformedInputError("trajectory already began")
        _tensor(latents, "begin(): latents")
        _check_genuine(scheduler, self.request.sampler)
        set_for = getattr(scheduler, "num_inference_steps", None)
        if before is None and set_for is not None and set_for != self.request.steps:
            raise MalformedInputError(
                f"the request declares {self.request.steps} steps, the scheduler is set for "
                f"{set_for}: declare what runs (or call set_timesteps({self.request.steps}))"
            )
        self._began = True
        self._cuda = latents.is_cuda
        recipe = self.request.recipe(scheduler, tuple(latents.shape), latents.device)
        if before is not None:
            recipe.update(before.recipe)
        plan = _plan(recipe, latents)
        # borrowing needs a sampler that never writes into a tensor it handed over
        self._borrow = (
            bool(getattr(self._recorder.sink, "borrows", False))
            and plan is not None
            and not plan.writes_in_place
        )
        if before is None:
            _reset_leftovers(scheduler, plan)
            self._schedule = capture_schedule(scheduler)
            state = capture_state(scheduler, self._schedule)
        else:
            self._schedule, state = dict(before.schedule), before.state
        latent = host_copy(latents)
        schedule = dict(self._schedule)
        self._pending_initial = (recipe, latent, state, schedule, self._event(latents))
        if conditioning is not None:
            self.set_conditioning(conditioning)

    def set_conditioning(self, conditioning: Mapping[str, torch.Tensor]) -> None:
        """Conditioning tensors (class labels, prompt embeddings). Must precede step 0."""
        if self._conditioning is not None:
            return
        self._conditioning = {k: host_copy(v) for k, v in conditioning.items()}
        self._flush_initial()

    def _flush_initial(self) -> None:
        if self._pending_initial is None:
            return
        recipe, latent, state, schedule, event = self._pending_initial
        cond = self._conditioning or {}
        self._pending_initial = None

        def job() -> None:
            if self._error:
                return
            _sync(event)
            try:
                digest = self._recorder.schedule_digests(schedule)
                begin = Begin(recipe, latent, state, digest, cond)
                self._handle = self._recorder.sink.start(self.request, begin)
                self._started = True
            except Exception as exc:
                self._fail(f"could not start the trajectory: {exc}")

        if self._recorder.early_start:
            self._hand_off(job)
        else:
            self._start = job  # goes with the first hand-off of steps
            self._held_since = time.monotonic()

    def step(self, index: int, timestep: Any, latents: torch.Tensor, scheduler: Any) -> None:
        """Record the latent after step ``index`` and the state the scheduler carries on."""
        if not self._began:
            raise MalformedInputError("step() before begin()")
        _tensor(latents, "step(): latents")
        if index != self._next_step:
            raise MalformedInputError(f"step {index} out of order (expected {self._next_step})")
        self._next_step += 1
        if self._lagged is not None:
            return  # already unverified: copy nothing more
        if self._pending_initial is not None:
            self.set_conditioning({})
        # with a sink that borrows: the pipeline's own host tensors, which the sink checks
        # unchanged once it has read them
        borrowed: Borrowed = []
        borrow = borrowed if self._borrow else None
        latent = borrow_or_copy(latents, borrowed) if self._borrow else host_copy(latents)
        state = capture_state(scheduler, self._schedule, self._copies, borrow=borrow)
        noise, self._noise = self._noise, []
        # A CUDA timestep is copied like the latent and read on the worker: ``.item()`` here
        # would synchronise the device every step and stall the loop's run-ahead. A host one is
        # borrowed like the latent where the sink borrows, and read on the worker too.
        t_in: Any = timestep
        cuda_timestep = False
        if isinstance(timestep, torch.Tensor):
            if timestep.is_cuda:
                t_in, cuda_timestep = host_copy(timestep), True
            elif self._borrow:
                t_in = borrow_or_copy(timestep, borrowed)
            else:
                t_in = timestep.item()
        event = (
            self._event(latents, *([timestep] if cuda_timestep else []))
            if self._cuda or cuda_timestep
            else None
        )

        if self._handoff is None:
            self._handoff = self._steps_per_handoff(latent, state, noise)
        if not self._held and self._start is None:
            self._held_since = time.monotonic()
        self._held.append((index, t_in, latent, state, noise, borrowed, event))
        if (
            len(self._held) >= self._handoff
            or time.monotonic() - self._held_since >= self._recorder.handoff_seconds
        ):
            self._hand_off(None)

    def _steps_per_handoff(
        self, latent: torch.Tensor, state: SamplerState, noise: list[torch.Tensor]
    ) -> int:
        """How many steps go to the worker at once, from the first step's bytes."""
        tensors = [latent, *state.tensors().values(), *noise]
        nbytes = sum(t.numel() * t.element_size() for t in tensors)
        return max(1, min(self._recorder.batch, self._recorder.handoff_bytes // max(1, nbytes)))

    def end(self, final_latents: torch.Tensor, output: bytes) -> None:
        """Record the final latent and the output bytes; the commitment follows on the worker."""
        if self._ended:
            raise MalformedInputError("trajectory already ended")
        self._ended = True
        latent = host_copy(final_latents)
        event = self._event(final_latents)
        digest = bytes_digest(output)

        def job() -> None:
            try:
                if self._lagged is not None:
                    self._fail(self._lagged)
                if self._error or not self._started:
                    raise RecordingError(self._error or "trajectory never began")
                _sync(event)
                self._commitment, self.record = self._recorder.sink.finish(
                    self._handle, latent, digest
                )
            except Exception as exc:
                self._fail(f"could not commit: {exc}")
            finally:
                self._done.set()

        self._hand_off(job)

    # -- failure and completion ----------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        if self._error is None:
            self._error = reason
            log.warning("trajectory %s is unverified: %s", self.request.request_id, reason)
            try:
                self._recorder.sink.abort(self._handle, reason)
            except Exception:  # the sink is already broken; the error above is what counts
                log.debug("sink abort failed", exc_info=True)

    def _hand_off(self, job: Callable[[], None] | None) -> None:
        """Hand the held steps (and a start waiting for them), then ``job``, to the worker at
        once. Steps alone are refused when the worker is ``max_pending`` steps behind: the
        trajectory is then unverified."""
        held, self._held = self._held, []
        start, self._start = self._start, None

        def run() -> None:
            if start is not None:
                start()
            if held:
                self._record_steps(held)
            if job is not None:
                job()

        try:
            self._recorder.submit(run, steps=len(held), bounded=job is None)
        except queue.Full:
            self._lagged = (
                f"the recorder fell {self._recorder.max_pending} steps behind the "
                "denoising loop (the sink is not keeping up); the request is unverified"
            )
            log.warning("trajectory %s: %s", self.request.request_id, self._lagged)

    def _record_steps(self, held: list[_Held]) -> None:
        """On the worker: the held steps to the sink, in one call where it takes a batch."""
        if self._lagged is not None:
            self._fail(self._lagged)
        if self._error or not self._started:
            return
        records = []
        for index, t_in, latent, state, noise, borrowed, event in held:
            _sync(event)
            t = t_in.item() if isinstance(t_in, torch.Tensor) else t_in
            records.append(StepRecord(index, t, latent, state, noise, borrowed))
        sink = self._recorder.sink
        try:
            steps = getattr(sink, "steps", None)
            if callable(steps):
                steps(self._handle, records)
            else:
                for record in records:
                    sink.step(self._handle, record)
        except Exception as exc:
            shown = f"{records[0].index}" + (f"-{records[-1].index}" if len(records) > 1 else "")
            self._fail(f"could not record step {shown}: {exc}")

    def _abort(self, reason: str) -> None:
        def job() -> None:
            self._fail(reason)
            self._done.set()

        self._start = None  # a start not handed over yet is never sent: nothing to abort there
        self._hand_off(job)

    def _wait(self, timeout: float = 60.0) -> None:
        if not self._ended:
            self._abort("the generation ended without end()")
        if not self._done.wait(timeout):
            self._error = self._error or f"commitment not ready after {timeout:.0f}s"
        if self._error is not None:
            raise RecordingError(f"request {self.request.request_id} is unverified: {self._error}")


def _plan(recipe: Mapping[str, Any], latents: torch.Tensor) -> SamplerPlan | None:
    """The declared sampler's plan (cached); a recipe it cannot be built for is left to fail
    at verification, with the reason logged now."""
    try:
        return sampler_plan(recipe, tuple(latents.shape), latents.dtype)
    except SamplerGuardError as exc:
        log.warning("request's declared sampler cannot be planned, it will not verify: %s", exc)
        return None


def _reset_leftovers(scheduler: Any, plan: SamplerPlan | None) -> None:
    """A pipeline reuses its scheduler across requests, and ``set_timesteps`` leaves a few
    attributes of the previous run behind that a fresh instance does not have; the verifier
    accepts only the states a fresh instance carries, so they are reset here (the step never
    reads them before writing them)."""
    changed = [] if plan is None else plan.reset(scheduler)
    if changed:
        log.debug("reset scheduler attributes left from an earlier run: %s", changed)


def _check_genuine(scheduler: Any, sampler: str) -> None:
    """The hook records only genuine instances of the declared sampler's diffusers class: a
    subclass or a look-alike could carry state the verifier's scheduler does not."""
    import diffusers

    from samplerguard.policy.spec import KNOWN_SAMPLERS, REFUSED_SCHEDULERS

    cls_name = KNOWN_SAMPLERS.get(sampler)
    for name in (sampler, type(scheduler).__name__):
        if name in REFUSED_SCHEDULERS:
            raise MalformedInputError(
                f"{name} cannot be verified: {REFUSED_SCHEDULERS[name]}; use another scheduler"
            )
    if cls_name is None:
        raise MalformedInputError(
            f"unknown sampler {sampler!r}: declare one of {sorted(KNOWN_SAMPLERS)}"
        )
    if type(scheduler) is not getattr(diffusers, cls_name):
        raise MalformedInputError(
            f"the request declares sampler {sampler!r} ({cls_name}), but the pipeline runs a "
            f"{type(scheduler).__module__}.{type(scheduler).__qualname__}: record only a "
            f"genuine diffusers.{cls_name}"
        )


def _sync(event: Any) -> None:
    if event is not None:
        event.synchronize()
