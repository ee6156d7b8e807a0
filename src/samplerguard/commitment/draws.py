"""Route the noise diffusers draws inside schedulers and pipelines to a function of ours.

Schedulers such as Euler ancestral, DDPM and SDE solvers draw their step noise themselves with
``diffusers.utils.torch_utils.randn_tensor``. Passing a ``torch.Generator`` would keep that noise
on torch's PRNG. Instead, :func:`noise_from` installs a dispatcher in every loaded diffusers
module that imported ``randn_tensor``; while a noise function is active *in the current context*
(a :class:`contextvars.ContextVar`, so concurrent requests on other threads are unaffected), every
draw is answered by it. Outside such a context the dispatcher calls diffusers' own function
unchanged.

Uses: the DRBG noise source feeds generation through it, the recorder observes the draws through
it, and the re-check replays the committed step noise through it. It lives with the commitment
(not with :mod:`samplerguard.rng`, which plugs its noise sources into it) because capturing and
replaying a trajectory's draws is the commitment's business.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch

__all__ = ["NoiseFn", "install", "noise_from", "observe_noise"]

#: ``fn(shape, dtype, device) -> tensor`` of standard normal noise.
NoiseFn = Callable[[tuple[int, ...], torch.dtype, torch.device], torch.Tensor]

_ACTIVE: ContextVar[NoiseFn | None] = ContextVar("samplerguard_noise_fn", default=None)
_OBSERVER: ContextVar[Callable[[torch.Tensor], None] | None] = ContextVar(
    "samplerguard_noise_observer", default=None
)
_LOCK = threading.Lock()
_ORIGINAL: Callable[..., torch.Tensor] | None = None
_PATCHED: set[str] = set()
_SEEN_MODULES = 0  # len(sys.modules) at the last scan: nothing new loaded, nothing to patch

# Modules whose schedulers draw noise themselves; imported eagerly so the patch sees them.
_NOISY_MODULES = (
    "diffusers.schedulers.scheduling_euler_ancestral_discrete",
    "diffusers.schedulers.scheduling_ddpm",
    "diffusers.schedulers.scheduling_ddim",
    "diffusers.schedulers.scheduling_dpmsolver_multistep",
    "diffusers.schedulers.scheduling_unipc_multistep",
    "diffusers.schedulers.scheduling_lcm",
    "diffusers.schedulers.scheduling_edm_euler",
)


def _dispatch(
    shape: Sequence[int] | torch.Size,
    generator: Any = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    layout: torch.layout | None = None,
) -> torch.Tensor:
    fn = _ACTIVE.get()
    if fn is None:
        assert _ORIGINAL is not None
        out = _ORIGINAL(shape, generator=generator, device=device, dtype=dtype, layout=layout)
    else:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        out = fn(tuple(int(s) for s in shape), dtype or torch.float32, dev)
    observer = _OBSERVER.get()
    if observer is not None:
        observer(out)
    return out


def install() -> None:
    """Patch every loaded diffusers module that holds ``randn_tensor``. Idempotent; cheap after
    the first call unless new diffusers modules were imported since."""
    global _ORIGINAL, _SEEN_MODULES
    import importlib

    if _ORIGINAL is not None and len(sys.modules) == _SEEN_MODULES:
        return

    with _LOCK:
        if _ORIGINAL is None:
            from diffusers.utils import torch_utils

            _ORIGINAL = torch_utils.randn_tensor
            for name in _NOISY_MODULES:
                try:
                    importlib.import_module(name)
                except ImportError:  # pragma: no cover - older diffusers
                    continue
        for name, module in list(sys.modules.items()):
            if name in _PATCHED or not name.startswith("diffusers") or module is None:
                continue
            if getattr(module, "randn_tensor", None) is _ORIGINAL:
                setattr(module, "randn_tensor", _dispatch)  # noqa: B010 - a module attribute
            _PATCHED.add(name)
        _SEEN_MODULES = len(sys.modules)


@contextmanager
def noise_from(fn: NoiseFn) -> Iterator[None]:
    """Within this block, in this context only, diffusers' noise draws call ``fn``."""
    install()
    token = _ACTIVE.set(fn)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


@contextmanager
def observe_noise(callback: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """Within this block, in this context only, every noise tensor diffusers draws (from any
    source) is passed to ``callback`` after it is drawn. The tensor is not altered."""
    install()
    token = _OBSERVER.set(callback)
    try:
        yield
    finally:
        _OBSERVER.reset(token)
