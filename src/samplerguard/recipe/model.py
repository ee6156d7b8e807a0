"""The checkpoint recipe: how a checkpoint is meant to be sampled.

It travels inside the checkpoint, as JSON in the safetensors ``__metadata__`` under the key
``samplerguard.recipe`` (see :mod:`samplerguard.recipe.checkpoint`), so the weights and their
sampling contract cannot drift apart. Wire names are camelCase like the policy CRDs; sampler,
schedule and prediction-type names are the policy's (:mod:`samplerguard.policy.spec`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from samplerguard.errors import MalformedInputError
from samplerguard.policy.spec import (
    KNOWN_PREDICTION_TYPES,
    KNOWN_SAMPLERS,
    KNOWN_SCHEDULES,
    FloatRange,
    IntRange,
)

__all__ = [
    "MAX_RECIPE_BYTES",
    "RECIPE_KEY",
    "Preset",
    "Recipe",
    "RecipeHashes",
    "Resolution",
    "SchedulerGrid",
]

#: The ``__metadata__`` key that holds the recipe.
RECIPE_KEY = "samplerguard.recipe"
#: A recipe larger than this is refused before parsing.
MAX_RECIPE_BYTES = 1 << 20

Sha256Digest = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/@:+-]{0,127}$")]
_JsonScalar = str | int | float | bool | None


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


def _known(value: str, known: frozenset[str] | dict[str, str], what: str) -> str:
    if value not in known:
        raise ValueError(f"unknown {what} {value!r}; known: {sorted(known)}")
    return value


class SchedulerGrid(_Model):
    """The scheduler and the timestep (or sigma) grid the checkpoint was validated on."""

    #: The diffusers class, e.g. ``"DDIMScheduler"``.
    class_name: Name
    #: The scheduler's saved config (``scheduler.config``), JSON scalars and lists.
    config: Annotated[dict[str, _JsonScalar | list[_JsonScalar]], Field(max_length=128)] = {}
    num_train_timesteps: Annotated[int, Field(ge=1, le=100_000)] = 1000
    #: The canonical step count and its timesteps, in sampling order.
    canonical_steps: Annotated[int, Field(ge=1, le=10_000)]
    timesteps: Annotated[list[float], Field(min_length=1, max_length=10_000)]
    sigmas: Annotated[list[float], Field(max_length=10_001)] | None = None
    #: How a run may depart from the canonical grid: ``exact`` (only the canonical grid),
    #: ``subset`` (any sub-grid of it: fewer steps on the same timesteps), ``any``.
    subsampling: Literal["exact", "subset", "any"] = "subset"
    #: Step counts allowed; empty means any count whose grid satisfies ``subsampling``.
    allowed_steps: Annotated[
        list[Annotated[int, Field(ge=1, le=10_000)]], Field(max_length=256)
    ] = []

    @model_validator(mode="after")
    def _consistent(self) -> SchedulerGrid:
        if len(self.timesteps) != self.canonical_steps:
            raise ValueError(
                f"the grid has {len(self.timesteps)} timesteps but canonicalSteps is "
                f"{self.canonical_steps}"
            )
        if any(not 0 <= t < self.num_train_timesteps for t in self.timesteps):
            raise ValueError(f"timesteps must lie in 0..{self.num_train_timesteps - 1}")
        return self


class Resolution(_Model):
    width: Annotated[int, Field(ge=1, le=65_536)]
    height: Annotated[int, Field(ge=1, le=65_536)]


class Preset(_Model):
    """A named set of defaults (``"fast"``, ``"quality"``)."""

    steps: Annotated[int, Field(ge=1, le=10_000)] | None = None
    cfg: Annotated[float, Field(ge=0.0, le=100.0)] | None = None
    sampler: str | None = None
    schedule: str | None = None
    width: Annotated[int, Field(ge=1, le=65_536)] | None = None
    height: Annotated[int, Field(ge=1, le=65_536)] | None = None

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, v: str | None) -> str | None:
        return None if v is None else _known(v, KNOWN_SAMPLERS, "sampler")

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, v: str | None) -> str | None:
        return None if v is None else _known(v, KNOWN_SCHEDULES, "schedule")


class RecipeHashes(_Model):
    """Digests of what the recipe governs (see :mod:`samplerguard.recipe.checkpoint`)."""

    #: ``sg-weights-v1``: over every tensor's name, dtype, shape and bytes.
    weights: Sha256Digest
    #: Over the other ``__metadata__`` entries (canonical JSON, the recipe key excluded).
    metadata: Sha256Digest | None = None


class Recipe(_Model):
    """The sampling contract of one checkpoint."""

    schema_version: Literal["samplerguard.recipe/v1"] = "samplerguard.recipe/v1"
    model_id: Name
    sampler: str
    schedule: str
    grid: SchedulerGrid
    prediction_type: str = "epsilon"
    steps: IntRange
    cfg: FloatRange
    default_steps: Annotated[int, Field(ge=1, le=10_000)]
    default_cfg: Annotated[float, Field(ge=0.0, le=100.0)]
    #: Native resolutions; others are allowed with a warning.
    resolutions: Annotated[list[Resolution], Field(min_length=1, max_length=64)]
    #: The latent each sample starts from, e.g. ``[1, 8, 8]`` (channels, height, width).
    latent_shape: Annotated[list[Annotated[int, Field(ge=1)]], Field(max_length=8)] | None = None
    vae_id: Name | None = None
    text_encoder_id: Name | None = None
    presets: Annotated[dict[str, Preset], Field(max_length=32)] = {}
    forbidden_samplers: Annotated[list[str], Field(max_length=32)] = []
    forbidden_schedules: Annotated[list[str], Field(max_length=32)] = []
    hashes: RecipeHashes | None = None

    @field_validator("sampler", "forbidden_samplers")
    @classmethod
    def _samplers(cls, v: str | list[str]) -> str | list[str]:
        for s in [v] if isinstance(v, str) else v:
            _known(s, KNOWN_SAMPLERS, "sampler")
        return v

    @field_validator("schedule", "forbidden_schedules")
    @classmethod
    def _schedules(cls, v: str | list[str]) -> str | list[str]:
        for s in [v] if isinstance(v, str) else v:
            _known(s, KNOWN_SCHEDULES, "schedule")
        return v

    @field_validator("prediction_type")
    @classmethod
    def _prediction(cls, v: str) -> str:
        return _known(v, KNOWN_PREDICTION_TYPES, "prediction type")

    @model_validator(mode="after")
    def _consistent(self) -> Recipe:
        if self.sampler in self.forbidden_samplers:
            raise ValueError(f"the recipe's own sampler {self.sampler!r} is forbidden")
        if self.schedule in self.forbidden_schedules:
            raise ValueError(f"the recipe's own schedule {self.schedule!r} is forbidden")
        if self.default_steps not in self.steps:
            raise ValueError(f"defaultSteps {self.default_steps} is outside steps {self.steps}")
        if self.default_cfg not in self.cfg:
            raise ValueError(f"defaultCfg {self.default_cfg} is outside cfg {self.cfg}")
        for name, preset in self.presets.items():
            if preset.sampler in self.forbidden_samplers:
                raise ValueError(f"preset {name!r} uses forbidden sampler {preset.sampler!r}")
            if preset.schedule in self.forbidden_schedules:
                raise ValueError(f"preset {name!r} uses forbidden schedule {preset.schedule!r}")
        return self

    # -- wire ---------------------------------------------------------------------------------

    def to_json(self) -> str:
        """Canonical, compact JSON (sorted keys): what goes into ``__metadata__``."""
        body = self.model_dump(by_alias=True, exclude_none=True, mode="json")
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "recipe") -> Recipe:
        if len(text) > MAX_RECIPE_BYTES:
            raise MalformedInputError(
                f"{source} is {len(text)} bytes; a recipe is at most {MAX_RECIPE_BYTES}"
            )
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise MalformedInputError(f"{source} is invalid: {_explain(exc)}") from None

    @classmethod
    def from_dict(cls, body: dict[str, Any], *, source: str = "recipe") -> Recipe:
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise MalformedInputError(f"{source} is invalid: {_explain(exc)}") from None


def _explain(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False, include_input=False)[:8]:
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
    more = f" (and {exc.error_count() - 8} more)" if exc.error_count() > 8 else ""
    return "; ".join(problems) + more
