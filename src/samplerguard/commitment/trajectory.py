"""Trajectory records: the leaves of the commitment tree and the tensors behind them.

Leaf order (DESIGN.md), tree size ``n_steps + 4``::

    0            recipe    the request's public recipe
    1            initial   z_N, the sampler state before step 0, the schedule digest
    2 … 1+N      step i    index, timestep, latent after the step, state carried on, noise drawn
    2+N          final     the final latent
    3+N          output    the output bytes' digest

Each leaf's data is RFC 8785 canonical JSON with a ``type`` field. :class:`TrajectoryBuilder`
accumulates a trajectory (in the hook's background thread, or in the sidecar) and keeps the
tensors needed to open any step; :meth:`TrajectoryBuilder.finish` yields the
:class:`TrajectoryRecord`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from samplerguard.commitment import jcs
from samplerguard.commitment.digest import tensor_digest
from samplerguard.commitment.merkle import inclusion_proof, leaf_hash, merkle_root_from_hashes
from samplerguard.commitment.state import SamplerState
from samplerguard.errors import MalformedInputError

__all__ = [
    "LEAF_FINAL",
    "LEAF_INITIAL",
    "LEAF_OUTPUT",
    "LEAF_RECIPE",
    "LEAF_STEP",
    "StepTensors",
    "TrajectoryBuilder",
    "TrajectoryRecord",
    "canonical",
    "leaf_index_of_step",
]

LEAF_RECIPE = "recipe"
LEAF_INITIAL = "initial"
LEAF_STEP = "step"
LEAF_FINAL = "final"
LEAF_OUTPUT = "output"

MAX_STEPS = 4096


def canonical(doc: Mapping[str, Any]) -> bytes:
    """RFC 8785 canonical JSON."""
    return jcs.dumps(dict(doc))


def leaf_index_of_step(step: int) -> int:
    return 2 + step


@dataclass(frozen=True)
class StepTensors:
    """What a step leaf commits, kept so the step (or the next one) can be opened."""

    latent: torch.Tensor
    state: SamplerState
    noise: tuple[torch.Tensor, ...] = ()


@dataclass
class TrajectoryRecord:
    """A finished trajectory: leaves, their hashes, the root, and the tensors to open steps."""

    recipe: dict[str, Any]
    leaves: list[bytes]
    leaf_hashes: list[bytes]
    root: bytes
    initial: StepTensors
    steps: list[StepTensors]
    conditioning: dict[str, torch.Tensor]
    output_digest: str

    @property
    def tree_size(self) -> int:
        return len(self.leaves)

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    def proof(self, index: int) -> list[bytes]:
        return inclusion_proof(self.leaf_hashes, index, hashed=True)

    def before(self, step: int) -> StepTensors:
        """The latent and state carried *into* ``step``."""
        return self.initial if step == 0 else self.steps[step - 1]


def _timestep_value(t: Any) -> int | float:
    value = float(t.item() if isinstance(t, torch.Tensor) else t)
    return int(value) if value.is_integer() else value


@dataclass
class TrajectoryBuilder:
    """Accumulates one trajectory, leaf by leaf. Not thread-safe: one owner thread."""

    recipe: dict[str, Any]
    _leaves: list[bytes] = field(default_factory=list)
    _hashes: list[bytes] = field(default_factory=list)
    _initial: StepTensors | None = None
    _steps: list[StepTensors] = field(default_factory=list)
    _conditioning: dict[str, torch.Tensor] = field(default_factory=dict)
    _final: torch.Tensor | None = None

    def _append(self, doc: Mapping[str, Any]) -> None:
        data = canonical(doc)
        self._leaves.append(data)
        self._hashes.append(leaf_hash(data))

    def set_conditioning(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Conditioning tensors; their digests go into the recipe leaf."""
        if self._leaves:
            raise MalformedInputError("conditioning must be set before the first leaf")
        self._conditioning = dict(tensors)

    def initial(self, latent: torch.Tensor, state: SamplerState, schedule_digest: str) -> None:
        if self._leaves:
            raise MalformedInputError("the initial latent was already recorded")
        recipe = dict(self.recipe)
        recipe["conditioning"] = {
            k: tensor_digest(v) for k, v in sorted(self._conditioning.items())
        }
        recipe["type"] = LEAF_RECIPE
        self.recipe = recipe
        self._append(recipe)
        self._initial = StepTensors(latent=latent, state=state)
        self._append(
            {
                "type": LEAF_INITIAL,
                "latent": tensor_digest(latent),
                "state": state.digest(),
                "schedule": schedule_digest,
            }
        )

    def step(
        self,
        index: int,
        timestep: Any,
        latent: torch.Tensor,
        state: SamplerState,
        noise: Sequence[torch.Tensor] = (),
    ) -> None:
        if self._initial is None:
            raise MalformedInputError("a step was recorded before the initial latent")
        if index != len(self._steps):
            raise MalformedInputError(
                f"step {index} recorded out of order (expected step {len(self._steps)})"
            )
        if index >= MAX_STEPS:
            raise MalformedInputError(f"more than {MAX_STEPS} steps")
        self._steps.append(StepTensors(latent=latent, state=state, noise=tuple(noise)))
        self._append(
            {
                "type": LEAF_STEP,
                "index": index,
                "timestep": _timestep_value(timestep),
                "latent": tensor_digest(latent),
                "state": state.digest(),
                "noise": [tensor_digest(n) for n in noise],
            }
        )

    def final(self, latent: torch.Tensor) -> None:
        if self._initial is None or self._final is not None:
            raise MalformedInputError("final latent recorded out of order")
        self._final = latent
        self._append({"type": LEAF_FINAL, "latent": tensor_digest(latent)})

    def finish(self, output_digest: str) -> TrajectoryRecord:
        if self._initial is None or self._final is None:
            raise MalformedInputError("trajectory is incomplete: no initial or final latent")
        self._append({"type": LEAF_OUTPUT, "digest": output_digest})
        return TrajectoryRecord(
            recipe=self.recipe,
            leaves=list(self._leaves),
            leaf_hashes=list(self._hashes),
            root=merkle_root_from_hashes(self._hashes),
            initial=self._initial,
            steps=list(self._steps),
            conditioning=dict(self._conditioning),
            output_digest=output_digest,
        )
