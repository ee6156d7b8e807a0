"""Auto-instrumentation: record every diffusers pipeline call in this process, no code change.

The webhook's init container puts this package and a ``sitecustomize.py`` on ``PYTHONPATH``
(in the style of the OpenTelemetry operator's Python auto-instrumentation). That file calls
:func:`install_from_env`, which does nothing unless ``SAMPLERGUARD_SOCKET`` names the sidecar's
socket. Then every pipeline *class* is wrapped the first time one of its instances is built
(diffusers' ``register_modules`` runs in every pipeline's ``__init__``): a call to a pipeline
of a supported family (:mod:`samplerguard.families`) goes through
:func:`samplerguard.hook.pipelines.instrument` with a fresh request id; a call to any other
pipeline is refused with the family list (or, under fail-open, logged and left unverified).
The commitment is attached to the returned output as ``output.samplerguard_commitment`` when
the output object allows it.

Noise: with ``SAMPLERGUARD_RNG_MODE=ctr-drbg`` (or ``hmac-drbg``) every call draws its noise
from the seed the sidecar issues for its request id (the sidecar holds the master secret and
escrows the seed to the verifier); the default ``framework`` leaves the noise to the app.

Failure policy: if the sidecar is unreachable the generation itself still raises
:class:`~samplerguard.hook.recorder.RecordingError` (``SAMPLERGUARD_FAIL_OPEN=1`` instead logs
and returns the unrecorded output, marked unverified). Failing closed is the default.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import inspect
import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from samplerguard.errors import SamplerGuardError
from samplerguard.families import family_for_pipeline
from samplerguard.hook.pipelines import instrument
from samplerguard.hook.recorder import Recorder, RecordingError, TrajectoryRequest
from samplerguard.policy.spec import KNOWN_SAMPLERS

__all__ = ["install", "install_from_env", "request_for", "ticketed"]

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_WRAPPED: set[type] = set()
_STATE: dict[str, Any] = {}

#: diffusers class name → sampler id of the policy vocabulary (its first, short name)
_SAMPLER_IDS: dict[str, str] = {}
for _sid, _cls in KNOWN_SAMPLERS.items():
    _SAMPLER_IDS.setdefault(_cls, _sid)


_TICKET: contextvars.ContextVar[tuple[dict[str, Any], str] | None] = contextvars.ContextVar(
    "samplerguard_ticket", default=None
)


@contextlib.contextmanager
def ticketed(ticket: Mapping[str, Any] | str | bytes) -> Iterator[str]:
    """Run the pipeline calls inside under the gateway's request ticket (the DSSE envelope
    the gateway sent with the request, as a JSON object or text). The call is recorded under
    the ticket's request id, the ticket goes to the sidecar with its seed request and START, and
    a policy requiring tickets accepts it. Yields the request id. One ticket is good for one
    generation: a second call inside the same block is refused by the sidecar."""
    from samplerguard.commitment.ticket import read_ticket

    doc, named = read_ticket(dict(ticket) if isinstance(ticket, Mapping) else ticket)
    token = _TICKET.set((doc, str(named["requestId"])))
    try:
        yield str(named["requestId"])
    finally:
        _TICKET.reset(token)


def request_for(pipe: Any, kwargs: Mapping[str, Any], tenant: str) -> TrajectoryRequest:
    """The public facts of one call, read from the pipeline and its arguments (and the
    request id of the :func:`ticketed` block it runs in)."""
    from samplerguard.commitment.digest import module_digest

    name = type(pipe).__name__
    family = family_for_pipeline(name)
    digest = getattr(pipe, "_samplerguard_model_digest", None)
    if digest is None:
        digest = module_digest(getattr(pipe, family.denoiser))
        pipe._samplerguard_model_digest = digest  # the weights of a loaded pipe do not change
    sig = inspect.signature(type(pipe).__call__).parameters
    steps = kwargs.get("num_inference_steps", _default(sig, "num_inference_steps"))
    cfg = kwargs.get("guidance_scale", _default(sig, "guidance_scale"))
    if not isinstance(steps, int) or isinstance(cfg, bool) or not isinstance(cfg, int | float):
        raise RecordingError(f"{name}: num_inference_steps and guidance_scale must be numbers")
    active = _TICKET.get()
    ticket, request_id = active if active is not None else (None, f"req-{uuid.uuid4().hex}")
    return TrajectoryRequest(
        request_id=request_id,
        ticket=ticket,
        tenant=tenant,
        pipeline=family.name,
        model_name=str(getattr(pipe, "name_or_path", None) or name),
        model_digest=digest,
        sampler=_SAMPLER_IDS.get(type(pipe.scheduler).__name__, type(pipe.scheduler).__name__),
        guidance_scale=float(cfg),
        steps=int(steps),
    )


@contextlib.contextmanager
def _request_noise(recorder: Recorder, req: TrajectoryRequest) -> Iterator[TrajectoryRequest]:
    """In the DRBG modes (``SAMPLERGUARD_RNG_MODE``), every draw of the call comes from the
    seed the sidecar issues for this request: z_N and any step noise, with no code change in
    the app (diffusers' ``randn_tensor`` is routed to it)."""
    mode = _STATE.get("rng_mode", "framework")
    if mode == "framework":
        yield req
        return
    from samplerguard.commitment.draws import noise_from

    request_noise = getattr(recorder.sink, "request_noise", None)
    if request_noise is None:
        raise RecordingError(f"{mode} noise needs the sidecar sink, which issues the seeds")
    noise = request_noise(req.tenant, req.request_id, mode, ticket=req.ticket)
    try:
        with noise_from(noise.noise_fn()):
            yield dataclasses.replace(req, rng_mode=noise.mode)
    finally:
        noise.close()


def _default(params: Mapping[str, inspect.Parameter], name: str) -> Any:
    param = params.get(name)
    return None if param is None else param.default


def _supported(cls: type) -> bool:
    """Every pipeline with a ``__call__`` is wrapped: an unsupported one is refused at its call
    (a silently unrecorded generation would look verified to nobody)."""
    return getattr(cls, "__call__", None) is not None  # noqa: B004 - the class attribute


def _wrap_class(cls: type, recorder: Recorder, tenant: str, fail_open: bool) -> None:
    with _LOCK:
        if cls in _WRAPPED or not _supported(cls):
            return
        _WRAPPED.add(cls)
        original: Callable[..., Any] = cls.__call__

    @functools.wraps(original)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(_STATE.get("busy"), "active", False):
            return original(self, *args, **kwargs)  # a pipeline called from inside another
        busy = _STATE.setdefault("busy", threading.local())
        busy.active = True
        try:
            req = request_for(self, kwargs, tenant)
            # The instrumented runner calls ``self(...)`` again; ``busy`` routes that inner call
            # to the original method.
            with _request_noise(recorder, req) as req:
                recorded = instrument(self, recorder)(*args, trajectory_request=req, **kwargs)
        except (RecordingError, SamplerGuardError):
            if not fail_open:
                raise
            log.exception("generation is unverified (fail-open is set)")
            return original(self, *args, **kwargs)
        finally:
            busy.active = False
        out = recorded.output
        # tensors and tuples take no attribute: their commitment stays with the sidecar
        with contextlib.suppress(AttributeError):
            out.samplerguard_commitment = recorded.commitment
        return out

    cls.__call__ = call  # type: ignore[method-assign]


def install(recorder: Recorder, *, tenant: str, fail_open: bool = False) -> None:
    """Wrap every diffusers pipeline class as its first instance is built. Idempotent."""
    from diffusers import DiffusionPipeline

    if _STATE.get("installed"):
        return
    original_register: Callable[..., Any] = DiffusionPipeline.register_modules

    @functools.wraps(original_register)
    def register_modules(self: Any, **kwargs: Any) -> Any:
        result = original_register(self, **kwargs)
        _wrap_class(type(self), recorder, tenant, fail_open)
        return result

    DiffusionPipeline.register_modules = register_modules
    _STATE["installed"] = True
    _STATE["recorder"] = recorder


def install_from_env(env: Mapping[str, str] | None = None) -> bool:
    """Called by the injected ``sitecustomize``. Returns whether instrumentation is active."""
    env = os.environ if env is None else env
    socket = env.get("SAMPLERGUARD_SOCKET")
    if not socket:
        return False
    from samplerguard.hook.sidecar_sink import SidecarSink

    tenant = env.get("SAMPLERGUARD_TENANT", "default")
    mode = env.get("SAMPLERGUARD_RNG_MODE", "framework")
    if mode not in ("framework", "ctr-drbg", "hmac-drbg"):
        log.error("SAMPLERGUARD_RNG_MODE=%r is not framework, ctr-drbg or hmac-drbg", mode)
        return False
    _STATE["rng_mode"] = mode
    recorder = Recorder(SidecarSink(socket))
    install(recorder, tenant=tenant, fail_open=env.get("SAMPLERGUARD_FAIL_OPEN") == "1")
    log.info("samplerguard hook active: pipelines report to %s as tenant %s", socket, tenant)
    return True
