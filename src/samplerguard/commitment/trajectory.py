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

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from samplerguard.commitment import jcs
from samplerguard.commitment.digest import DIGEST_RE, tensor_digest, tensor_digests
from samplerguard.commitment.merkle import inclusion_proof, leaf_hash, merkle_root_from_hashes
from samplerguard.commitment.state import SamplerState, state_digest
from samplerguard.errors import MalformedInputError

__all__ = [
    "LEAF_FINAL",
    "LEAF_INITIAL",
    "LEAF_OUTPUT",
    "LEAF_RECIPE",
    "LEAF_STEP",
    "LeafLog",
    "StepTensors",
    "TrajectoryBuilder",
    "TrajectoryRecord",
    "canonical",
    "leaf_index_of_step",
    "step_leaf",
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
    final: torch.Tensor | None = None

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


def _digest(value: str, what: str) -> str:
    if not isinstance(value, str) or not DIGEST_RE.match(value):
        raise MalformedInputError(f"{what} is not a sha256:<hex> digest")
    return value


def step_leaf(
    index: int, timestep: Any, latent: str, state: str, noise: Sequence[str] = ()
) -> bytes:
    """The canonical bytes of a step leaf, from digests. Every field is a digest, an integer or
    a number, so the RFC 8785 bytes are written directly (the sidecar builds one per record);
    ``tests/unit/commitment`` checks them against the reference encoder."""
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < MAX_STEPS:
        raise MalformedInputError(f"step index {index!r} is not an integer in [0, {MAX_STEPS})")
    value = _timestep_value(timestep)
    if not math.isfinite(value):
        raise MalformedInputError(f"step {index} has a non-finite timestep")
    ts = jcs.number(value)
    digests = ",".join(f'"{_digest(n, "a noise digest")}"' for n in noise)
    return (
        f'{{"index":{index},"latent":"{_digest(latent, "the latent digest")}",'
        f'"noise":[{digests}],"state":"{_digest(state, "the state digest")}",'
        f'"timestep":{ts},"type":"{LEAF_STEP}"}}'
    ).encode("ascii")


class LeafLog:
    """The leaves of one trajectory, built from digests alone, in the order DESIGN.md fixes.

    :class:`TrajectoryBuilder` (the hook) wraps it and keeps the tensors; the sidecar uses it
    directly with digests it computes from the raw frame bytes. Not thread-safe: one owner.
    """

    def __init__(self) -> None:
        self.leaves: list[bytes] = []
        self.hashes: list[bytes] = []
        self.n_steps = 0
        self._final = False

    def _append(self, data: bytes) -> None:
        self.leaves.append(data)
        self.hashes.append(leaf_hash(data))

    def begin(
        self,
        recipe: Mapping[str, Any],
        conditioning: Mapping[str, str],
        latent: str,
        state: str,
        schedule: str,
    ) -> dict[str, Any]:
        """The recipe leaf (with the conditioning digests) and the initial leaf; returns the
        recipe as committed."""
        if self.leaves:
            raise MalformedInputError("the initial latent was already recorded")
        doc = dict(recipe)
        doc["conditioning"] = {
            k: _digest(v, f"conditioning {k!r}") for k, v in sorted(conditioning.items())
        }
        doc["type"] = LEAF_RECIPE
        self._append(canonical(doc))
        self._append(
            canonical(
                {
                    "type": LEAF_INITIAL,
                    "latent": _digest(latent, "the initial latent digest"),
                    "state": _digest(state, "the initial state digest"),
                    "schedule": _digest(schedule, "the schedule digest"),
                }
            )
        )
        return doc

    def step(
        self, index: int, timestep: Any, latent: str, state: str, noise: Sequence[str] = ()
    ) -> None:
        if not self.leaves or self._final:
            raise MalformedInputError(
                f"step {index} recorded before the initial latent or after the final one"
            )
        if index != self.n_steps:
            raise MalformedInputError(
                f"step {index} recorded out of order (expected step {self.n_steps})"
            )
        self._append(step_leaf(index, timestep, latent, state, noise))
        self.n_steps += 1

    def final(self, latent: str) -> None:
        if not self.leaves or self._final:
            raise MalformedInputError("final latent recorded out of order")
        self._append(
            canonical({"type": LEAF_FINAL, "latent": _digest(latent, "the final latent digest")})
        )
        self._final = True

    def finish(self, output_digest: str) -> bytes:
        """The output leaf; returns the root."""
        if not self._final:
            raise MalformedInputError("trajectory is incomplete: no initial or final latent")
        if len(self.leaves) != self.n_steps + 3:
            raise MalformedInputError("the trajectory was already finished")
        self._append(
            canonical({"type": LEAF_OUTPUT, "digest": _digest(output_digest, "the output digest")})
        )
        return merkle_root_from_hashes(self.hashes)


class TrajectoryBuilder:
    """Accumulates one trajectory, leaf by leaf, with the tensors behind the leaves (so any step
    can be opened). Not thread-safe: one owner thread."""

    def __init__(self, recipe: Mapping[str, Any]) -> None:
        self.recipe: dict[str, Any] = dict(recipe)
        self._log = LeafLog()
        self._initial: StepTensors | None = None
        self._steps: list[StepTensors] = []
        self._conditioning: dict[str, torch.Tensor] = {}
        self._final: torch.Tensor | None = None

    def set_conditioning(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Conditioning tensors; their digests go into the recipe leaf."""
        if self._log.leaves:
            raise MalformedInputError("conditioning must be set before the first leaf")
        self._conditioning = dict(tensors)

    def initial(self, latent: torch.Tensor, state: SamplerState, schedule_digest: str) -> None:
        self.recipe = self._log.begin(
            self.recipe,
            {k: tensor_digest(v) for k, v in self._conditioning.items()},
            tensor_digest(latent),
            state.digest(),
            schedule_digest,
        )
        self._initial = StepTensors(latent=latent, state=state)

    def step(
        self,
        index: int,
        timestep: Any,
        latent: torch.Tensor,
        state: SamplerState,
        noise: Sequence[torch.Tensor] = (),
    ) -> None:
        skeleton, named = state.wire("")
        # every tensor of the step in one hashing call (the same digests as tensor_digest)
        digests = tensor_digests([latent, *(t for _, t in named), *noise])
        parts = dict(zip((path for path, _ in named), digests[1 : 1 + len(named)], strict=True))
        self._log.step(
            index,
            timestep,
            digests[0],
            state_digest(skeleton, parts),
            digests[1 + len(named) :],
        )
        self._steps.append(StepTensors(latent=latent, state=state, noise=tuple(noise)))

    def final(self, latent: torch.Tensor) -> None:
        self._log.final(tensor_digest(latent))
        self._final = latent

    def finish(self, output_digest: str) -> TrajectoryRecord:
        if self._initial is None or self._final is None:
            raise MalformedInputError("trajectory is incomplete: no initial or final latent")
        root = self._log.finish(output_digest)
        return TrajectoryRecord(
            recipe=self.recipe,
            leaves=list(self._log.leaves),
            leaf_hashes=list(self._log.hashes),
            root=root,
            initial=self._initial,
            steps=list(self._steps),
            conditioning=dict(self._conditioning),
            output_digest=output_digest,
            final=self._final,
        )
