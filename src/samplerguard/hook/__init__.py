"""The hook: what an ML engineer programs against to record generations.

Three ways in, from least to most code:

* auto-instrumentation (:func:`install_from_env`, run by the injected ``sitecustomize``):
  every diffusers pipeline call is recorded, no code change;
* :func:`instrument` a pipeline object: ``instrument(pipe, recorder)(..., trajectory_request=...)``;
* the plain-loop API for a loop of your own: ``with recorder.trajectory(request) as tr:``
  ``tr.begin(...)``, ``tr.step(...)`` per step, ``tr.end(...)``; ``tr.commitment`` after.

Sinks: :class:`SidecarSink` streams to the sidecar (the deployed setup), :class:`LocalSink`
builds and signs in this process (tests, notebooks).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from samplerguard.families import UnsupportedPipeline
    from samplerguard.hook.auto import install, install_from_env, ticketed
    from samplerguard.hook.local import LocalSink
    from samplerguard.hook.pipelines import InstrumentedPipeline, RecordedOutput, instrument
    from samplerguard.hook.recorder import (
        Recorder,
        RecordingError,
        Trajectory,
        TrajectoryRequest,
    )
    from samplerguard.hook.sidecar_sink import SidecarSink

#: public name -> the module that owns it. Loaded on first use, so that the sidecar, which
#: reads only the wire format (``samplerguard.hook.wire``), does not import diffusers.
_OWNERS = {
    "InstrumentedPipeline": "samplerguard.hook.pipelines",
    "LocalSink": "samplerguard.hook.local",
    "RecordedOutput": "samplerguard.hook.pipelines",
    "Recorder": "samplerguard.hook.recorder",
    "RecordingError": "samplerguard.hook.recorder",
    "SidecarSink": "samplerguard.hook.sidecar_sink",
    "Trajectory": "samplerguard.hook.recorder",
    "TrajectoryRequest": "samplerguard.hook.recorder",
    "UnsupportedPipeline": "samplerguard.families",
    "install": "samplerguard.hook.auto",
    "install_from_env": "samplerguard.hook.auto",
    "instrument": "samplerguard.hook.pipelines",
    "ticketed": "samplerguard.hook.auto",
}

__all__ = [
    "InstrumentedPipeline",
    "LocalSink",
    "RecordedOutput",
    "Recorder",
    "RecordingError",
    "SidecarSink",
    "Trajectory",
    "TrajectoryRequest",
    "UnsupportedPipeline",
    "install",
    "install_from_env",
    "instrument",
    "ticketed",
]


def __getattr__(name: str) -> Any:
    owner = _OWNERS.get(name)
    if owner is None:
        raise AttributeError(f"module 'samplerguard.hook' has no attribute {name!r}")
    return getattr(importlib.import_module(owner), name)


def __dir__() -> list[str]:
    return __all__
