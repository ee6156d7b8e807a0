"""The schedule id and the scheduler-config digest: the one owner of both.

A policy allows schedules by id (``KNOWN_SCHEDULES``) and may pin the exact scheduler config by
digest (``goldenDigests.schedulerConfig``). The sidecar (admission of a request), the recipe
guard (before generation) and the verifier (before any re-check) all decide with these two
functions, so the three can never disagree about what a recipe declares.

Torch-free and diffusers-free: both work on the declared class name and the JSON config.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import rfc8785

from samplerguard.errors import MalformedInputError

__all__ = ["schedule_id", "scheduler_config_digest"]


def schedule_id(scheduler_class: str | None, config: Mapping[str, Any]) -> str:
    """The schedule id a diffusers scheduler class and config select.

    The sigma-schedule flags win (a Euler scheduler with ``use_exponential_sigmas`` runs an
    exponential schedule whatever its spacing says); then the families whose schedule is fixed by
    the class (EDM's, flow matching's shifted one); then the timestep spacing, whose default in
    diffusers is ``leading``.
    """
    cls = scheduler_class or ""
    if config.get("use_karras_sigmas"):
        return "karras"
    if config.get("use_exponential_sigmas"):
        return "exponential"
    if config.get("use_beta_sigmas"):
        return "beta"
    if cls.startswith("EDM") or "sigma_data" in config:
        return "edm"
    if cls.startswith("FlowMatch") or config.get("use_flow_sigmas"):
        return "flow-shift"
    spacing = config.get("timestep_spacing")
    if isinstance(spacing, str):
        return spacing
    return "leading"


def scheduler_config_digest(scheduler_class: str, config: Mapping[str, Any]) -> str:
    """``sha256:`` over the RFC 8785 JSON of ``{"class": ..., "config": ...}``: what a policy's
    ``goldenDigests.schedulerConfig`` pins. diffusers' private keys (``_class_name``,
    ``_use_default_values`` …) are not part of it."""
    doc: Any = {
        "class": str(scheduler_class),
        "config": {str(k): v for k, v in config.items() if not str(k).startswith("_")},
    }
    try:
        data = rfc8785.dumps(doc)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise MalformedInputError(f"scheduler config is not canonical JSON: {exc}") from None
    return "sha256:" + hashlib.sha256(data).hexdigest()
