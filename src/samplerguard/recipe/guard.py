"""The inference guard: apply a checkpoint's recipe to a requested run, and police it.

``InferenceGuard(recipe).check(RunRequest(...))`` does three things:

1. **Defaults.** Fields the caller left unset come from the named preset, then the recipe.
   A field the caller set to something other than its default is an *override*.
2. **Hard checks** raise :class:`RecipeViolation` (a :class:`VerificationError`): a forbidden
   sampler or schedule, a sampler unknown to the project, a wrong prediction type, a step count
   outside ``grid.allowedSteps`` or timesteps off the canonical grid (per ``grid.subsampling``),
   and (in :meth:`InferenceGuard.from_checkpoint`) a weights or metadata hash mismatch.
3. **Soft checks** return :class:`RecipeWarning` s: CFG or steps outside the recipe's ranges,
   a resolution that is not native, a known sampler or schedule other than the recipe's.
   With ``strict=True`` a soft finding is refused too, unless the call gives a ``reason``:
   an explicit, audited override.

Every decision that carries an override, a warning or a violation is appended to the audit log
(JSON lines; rotated to ``<log>.1`` past 16 MiB), with the actor and the reason.
"""

from __future__ import annotations

import json
import math
import os
import threading
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from samplerguard.errors import MalformedInputError, VerificationError
from samplerguard.policy.schedule import schedule_id
from samplerguard.policy.spec import KNOWN_SAMPLERS, KNOWN_SCHEDULES
from samplerguard.recipe.checkpoint import verify_hashes
from samplerguard.recipe.model import Recipe

__all__ = [
    "EffectiveRun",
    "GuardDecision",
    "InferenceGuard",
    "Override",
    "RecipeViolation",
    "RecipeWarning",
    "RunRequest",
    "build_recipe",
    "describe_scheduler",
]

_AUDIT_MAX_BYTES = 16 << 20
_TIMESTEP_TOL = 1e-3


class RecipeViolation(VerificationError):
    """A run breaks its checkpoint's recipe. ``check``, ``got`` (``found`` as a string) and
    ``expected`` say how."""

    def __init__(self, check: str, got: object, expected: object, message: str) -> None:
        super().__init__(
            message,
            check=check,
            found=None if got is None else repr(got),
            expected=None if expected is None else str(expected),
        )
        self.got = got


@dataclass(frozen=True)
class RunRequest:
    """What a caller asks for; ``None`` means "the recipe's default"."""

    sampler: str | None = None
    schedule: str | None = None
    steps: int | None = None
    cfg: float | None = None
    prediction_type: str | None = None
    width: int | None = None
    height: int | None = None
    #: The timesteps the scheduler will actually visit, when known (see describe_scheduler).
    timesteps: tuple[float, ...] | None = None
    preset: str | None = None


@dataclass(frozen=True)
class EffectiveRun:
    """A run with every default applied: what will be executed."""

    sampler: str
    schedule: str
    steps: int
    cfg: float
    prediction_type: str
    width: int
    height: int
    timesteps: tuple[float, ...] | None
    preset: str | None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["timesteps"] = list(self.timesteps) if self.timesteps is not None else None
        return d


@dataclass(frozen=True)
class RecipeWarning:
    check: str
    got: Any
    expected: Any
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Override:
    field: str
    default: Any
    value: Any


@dataclass(frozen=True)
class GuardDecision:
    effective: EffectiveRun
    warnings: tuple[RecipeWarning, ...] = ()
    overrides: tuple[Override, ...] = ()
    reason: str | None = None

    @property
    def clean(self) -> bool:
        return not self.warnings


@dataclass
class _Finding:
    hard: list[RecipeViolation] = field(default_factory=list)
    soft: list[RecipeWarning] = field(default_factory=list)


def describe_scheduler(scheduler: Any) -> dict[str, Any]:
    """Sampler id, schedule id, prediction type and visited timesteps of a diffusers scheduler
    (after ``set_timesteps``). Duck-typed: no diffusers import."""
    cls = type(scheduler).__name__
    config = dict(getattr(scheduler, "config", {}) or {})
    samplers = [sid for sid, name in KNOWN_SAMPLERS.items() if name == cls]
    if cls == "DPMSolverMultistepScheduler":
        sde = "sde" in str(config.get("algorithm_type", ""))
        sampler = "dpmpp_2m_sde" if sde else "dpmpp_2m"
    else:
        sampler = samplers[0] if samplers else cls
    schedule = schedule_id(cls, config)
    ts = getattr(scheduler, "timesteps", None)
    timesteps = tuple(float(t) for t in ts.tolist()) if ts is not None else None
    return {
        "sampler": sampler,
        "schedule": schedule,
        "prediction_type": str(config.get("prediction_type", "epsilon")),
        "timesteps": timesteps,
    }


class InferenceGuard:
    """Applies and enforces one recipe. Thread-safe; the audit log is shared."""

    def __init__(
        self,
        recipe: Recipe,
        *,
        audit_log: Path | None = None,
        strict: bool = False,
        actor: str = "unknown",
    ) -> None:
        self.recipe = recipe
        self.strict = strict
        self.actor = actor
        self._audit_log = audit_log
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        *,
        audit_log: Path | None = None,
        strict: bool = False,
        actor: str = "unknown",
    ) -> InferenceGuard:
        """Load time: read the checkpoint's recipe and verify its pinned hashes."""
        try:
            recipe = verify_hashes(path)
        except VerificationError as exc:
            raise RecipeViolation("hashes", None, None, str(exc)) from None
        return cls(recipe, audit_log=audit_log, strict=strict, actor=actor)

    # -- defaults -------------------------------------------------------------------------------

    def apply_defaults(self, run: RunRequest) -> tuple[EffectiveRun, tuple[Override, ...]]:
        r = self.recipe
        preset = None
        if run.preset is not None:
            preset = r.presets.get(run.preset)
            if preset is None:
                raise MalformedInputError(
                    f"preset {run.preset!r} is not in recipe {r.model_id!r} "
                    f"(known: {sorted(r.presets)})"
                )
        native = r.resolutions[0]
        defaults = {
            "sampler": (preset and preset.sampler) or r.sampler,
            "schedule": (preset and preset.schedule) or r.schedule,
            "steps": (preset and preset.steps) or r.default_steps,
            "cfg": preset.cfg if preset and preset.cfg is not None else r.default_cfg,
            "prediction_type": r.prediction_type,
            "width": (preset and preset.width) or native.width,
            "height": (preset and preset.height) or native.height,
        }
        values: dict[str, Any] = {}
        overrides = []
        for name, default in defaults.items():
            asked = getattr(run, name)
            values[name] = default if asked is None else asked
            if asked is not None and asked != default:
                overrides.append(Override(name, default, asked))
        effective = EffectiveRun(
            timesteps=tuple(run.timesteps) if run.timesteps is not None else None,
            preset=run.preset,
            **values,
        )
        return effective, tuple(overrides)

    # -- checks ---------------------------------------------------------------------------------

    def _findings(self, e: EffectiveRun) -> _Finding:
        r = self.recipe
        f = _Finding()
        model = r.model_id

        def hard(check: str, got: object, expected: object, what: str) -> None:
            f.hard.append(
                RecipeViolation(
                    check,
                    got,
                    expected,
                    f"recipe of {model!r} refuses the run: {what} "
                    f"(got {got!r}, expected {expected})",
                )
            )

        def soft(check: str, got: object, expected: object, what: str) -> None:
            f.soft.append(
                RecipeWarning(check, got, expected, f"{what} (got {got!r}, expected {expected})")
            )

        # (1) sampler and schedule: forbidden or unknown is hard, merely different is soft.
        if e.sampler in r.forbidden_samplers:
            hard("sampler", e.sampler, f"none of {r.forbidden_samplers}", "forbidden sampler")
        elif e.sampler not in KNOWN_SAMPLERS:
            hard("sampler", e.sampler, f"one of {sorted(KNOWN_SAMPLERS)}", "unknown sampler")
        elif e.sampler != r.sampler:
            soft("sampler", e.sampler, repr(r.sampler), "sampler differs from the validated one")
        if e.schedule in r.forbidden_schedules:
            hard("schedule", e.schedule, f"none of {r.forbidden_schedules}", "forbidden schedule")
        elif e.schedule not in KNOWN_SCHEDULES:
            hard("schedule", e.schedule, f"one of {sorted(KNOWN_SCHEDULES)}", "unknown schedule")
        elif e.schedule != r.schedule:
            soft(
                "schedule", e.schedule, repr(r.schedule), "schedule differs from the validated one"
            )
        # (2) prediction type must match the weights.
        if e.prediction_type != r.prediction_type:
            hard(
                "prediction_type",
                e.prediction_type,
                repr(r.prediction_type),
                "wrong prediction type",
            )
        # (3) the step grid.
        grid = r.grid
        if grid.allowed_steps and e.steps not in grid.allowed_steps:
            hard("steps", e.steps, f"one of {grid.allowed_steps}", "step count off the allowed set")
        if e.timesteps is not None and grid.subsampling != "any":
            if len(e.timesteps) != e.steps:
                hard("grid", len(e.timesteps), e.steps, "timestep count differs from steps")
            elif grid.subsampling == "exact" and not _same_grid(e.timesteps, grid.timesteps):
                hard(
                    "grid", "another grid", "the canonical grid", "timesteps off the canonical grid"
                )
            elif grid.subsampling == "subset" and not _is_subgrid(e.timesteps, grid.timesteps):
                off = [t for t in e.timesteps if not _on_grid(t, grid.timesteps)][:3]
                hard("grid", off, f"a sub-grid of the {grid.canonical_steps}-step grid",
                     "timesteps off the allowed grid")  # fmt: skip
        # (4) soft ranges.
        if e.steps not in r.steps:
            soft(
                "steps",
                e.steps,
                f"{r.steps.min}..{r.steps.max}",
                "steps outside the recipe's range",
            )
        if not math.isfinite(e.cfg) or e.cfg not in r.cfg:
            soft("cfg", e.cfg, f"{r.cfg.min:g}..{r.cfg.max:g}", "CFG outside the recipe's range")
        natives = [(res.width, res.height) for res in r.resolutions]
        if (e.width, e.height) not in natives:
            soft("resolution", f"{e.width}x{e.height}",
                 ", ".join(f"{w}x{h}" for w, h in natives), "unusual resolution")  # fmt: skip
        return f

    def check(
        self,
        run: RunRequest | None = None,
        *,
        reason: str | None = None,
        actor: str | None = None,
    ) -> GuardDecision:
        """Apply defaults and check. Raises :class:`RecipeViolation` on a hard failure (or, in
        strict mode, on a soft one without ``reason``); returns the decision otherwise."""
        effective, overrides = self.apply_defaults(run or RunRequest())
        found = self._findings(effective)
        who = actor or self.actor
        if found.hard:
            self._audit(effective, overrides, found.soft, found.hard[0], who, reason, "denied")
            raise found.hard[0]
        if found.soft and self.strict and not reason:
            w = found.soft[0]
            violation = RecipeViolation(
                w.check,
                w.got,
                w.expected,
                f"recipe of {self.recipe.model_id!r} refuses the run in strict mode: {w.message}; "
                "an override needs a reason",
            )
            self._audit(effective, overrides, found.soft, violation, who, reason, "denied")
            raise violation
        decision = GuardDecision(effective, tuple(found.soft), overrides, reason)
        if overrides or found.soft:
            outcome = "warned" if found.soft else "allowed"
            self._audit(effective, overrides, found.soft, None, who, reason, outcome)
        return decision

    def check_scheduler(
        self,
        scheduler: Any,
        *,
        cfg: float | None = None,
        width: int | None = None,
        height: int | None = None,
        reason: str | None = None,
        actor: str | None = None,
    ) -> GuardDecision:
        """Run time: check a configured diffusers scheduler (after ``set_timesteps``)."""
        d = describe_scheduler(scheduler)
        ts = d["timesteps"]
        run = RunRequest(
            sampler=d["sampler"],
            schedule=d["schedule"],
            prediction_type=d["prediction_type"],
            steps=len(ts) if ts is not None else None,
            timesteps=ts,
            cfg=cfg,
            width=width,
            height=height,
        )
        return self.check(run, reason=reason, actor=actor)

    # -- audit ----------------------------------------------------------------------------------

    def _audit(
        self,
        effective: EffectiveRun,
        overrides: tuple[Override, ...],
        warnings: list[RecipeWarning],
        violation: RecipeViolation | None,
        actor: str,
        reason: str | None,
        outcome: str,
    ) -> None:
        if self._audit_log is None:
            return
        record = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "model": self.recipe.model_id,
            "outcome": outcome,
            "actor": actor,
            "reason": reason,
            "effective": {**effective.to_dict(), "timesteps": None},
            "overrides": [asdict(o) for o in overrides],
            "warnings": [{"check": w.check, "message": w.message} for w in warnings],
            "violation": (
                {"check": violation.check, "message": str(violation)} if violation else None
            ),
        }
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with self._lock:
            try:
                if (
                    self._audit_log.exists()
                    and self._audit_log.stat().st_size + len(line) > _AUDIT_MAX_BYTES
                ):
                    os.replace(
                        self._audit_log, self._audit_log.with_name(self._audit_log.name + ".1")
                    )
                with self._audit_log.open("a", encoding="utf-8") as fh:
                    fh.write(line)
            except OSError as exc:
                # Fail closed: an override that cannot be audited does not happen.
                raise MalformedInputError(
                    f"cannot write the audit log {self._audit_log}: {exc.strerror}"
                ) from None


def _on_grid(t: float, grid: list[float]) -> bool:
    return any(abs(t - g) <= _TIMESTEP_TOL for g in grid)


def _same_grid(a: tuple[float, ...], b: list[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= _TIMESTEP_TOL for x, y in zip(a, b, strict=True))


def _is_subgrid(run: tuple[float, ...], grid: list[float]) -> bool:
    """Every visited timestep is on the canonical grid, in the grid's order, without repeats."""
    pos = -1
    for t in run:
        idx = next((i for i, g in enumerate(grid) if abs(t - g) <= _TIMESTEP_TOL), None)
        if idx is None or idx <= pos:
            return False
        pos = idx
    return True


def with_timesteps(run: RunRequest, timesteps: list[float]) -> RunRequest:
    """``run`` with its visited timesteps set (and steps to match)."""
    return replace(run, timesteps=tuple(timesteps), steps=len(timesteps))


def build_recipe(
    model_id: str,
    scheduler: Any,
    *,
    canonical_steps: int,
    steps: tuple[int, int],
    cfg: tuple[float, float],
    default_steps: int,
    default_cfg: float,
    resolutions: list[tuple[int, int]],
    allowed_steps: list[int] | None = None,
    subsampling: str = "subset",
    **extra: Any,
) -> Recipe:
    """A recipe whose grid is taken from a real diffusers scheduler: ``scheduler`` is set to
    ``canonical_steps`` and its class, config, prediction type, sampler and schedule ids and
    visited timesteps are recorded. ``extra`` passes further :class:`Recipe` fields (snake_case:
    ``presets``, ``forbidden_samplers``, ``latent_shape``, ``vae_id`` …)."""
    scheduler.set_timesteps(canonical_steps)
    d = describe_scheduler(scheduler)
    config = {
        k: v
        for k, v in dict(scheduler.config).items()
        if not k.startswith("_") and (isinstance(v, str | int | float | bool) or v is None)
    }
    body: dict[str, Any] = {
        "model_id": model_id,
        "sampler": d["sampler"],
        "schedule": d["schedule"],
        "prediction_type": d["prediction_type"],
        "grid": {
            "class_name": type(scheduler).__name__,
            "config": config,
            "num_train_timesteps": _int_or(config.get("num_train_timesteps"), 1000),
            "canonical_steps": canonical_steps,
            "timesteps": list(d["timesteps"] or ()),
            "subsampling": subsampling,
            "allowed_steps": allowed_steps or [],
        },
        "steps": {"min": steps[0], "max": steps[1]},
        "cfg": {"min": cfg[0], "max": cfg[1]},
        "default_steps": default_steps,
        "default_cfg": default_cfg,
        "resolutions": [{"width": w, "height": h} for w, h in resolutions],
        **extra,
    }
    return Recipe.from_dict(body, source=f"recipe for {model_id}")


def _int_or(value: object, default: int) -> int:
    return int(value) if isinstance(value, int | float) else default
