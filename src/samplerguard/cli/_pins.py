"""The digests a policy's ``goldenDigests`` pins, computed from files on disk.

Each digest is computed by the very function the check that compares it uses:

* ``modelWeights`` / ``textEncoder``: :func:`~samplerguard.commitment.digest.safetensors_digest`,
  equal to the ``module_digest`` of the loaded module that the hook declares as the recipe's
  ``model.digest`` and that the sidecar and the verifier compare (not ``sha256sum`` of the file);
* ``schedulerConfig``: :func:`~samplerguard.policy.schedule.scheduler_config_digest` of the
  scheduler's config *as diffusers loads it* (the recipe guard and the verifier see that one)
  and, when it differs, of the config *as written in the file* (the sidecar's periodic
  ``--scheduler-config`` check reads the file);
* ``solverCode``: :func:`~samplerguard.hook.solver.solver_code_digest` of the scheduler class,
  from the diffusers installed in *this* Python: run it with the diffusers version your serving
  image runs.

Accepted inputs: a ``.safetensors`` file, a diffusers component folder (``unet/``,
``text_encoder/``, ``scheduler/``) or a whole pipeline folder (``model_index.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from samplerguard.errors import MalformedInputError

__all__ = ["Pin", "Pins", "pinned_digests"]

#: pipeline sub-folders whose weights a policy pins as ``modelWeights`` (the denoiser the hook
#: declares) and as ``textEncoder``
_DENOISERS = ("unet", "transformer", "prior")
_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
_WEIGHT_FILES = ("diffusion_pytorch_model", "model")
_MAX_CONFIG = 1 << 20


@dataclass(frozen=True)
class Pin:
    digest: str
    source: str  # what was hashed, relative to the input
    note: str = ""


@dataclass
class Pins:
    """``{goldenDigests field: [Pin]}``, in the policy's field order."""

    path: Path
    fields: dict[str, list[Pin]] = field(
        default_factory=lambda: {
            "modelWeights": [],
            "textEncoder": [],
            "schedulerConfig": [],
            "solverCode": [],
        }
    )

    def add(self, name: str, pin: Pin) -> None:
        if all(p.digest != pin.digest for p in self.fields[name]):
            self.fields[name].append(pin)

    def golden_digests(self) -> dict[str, list[str]]:
        """The ``goldenDigests`` object to paste into a policy (empty fields left out)."""
        return {k: [p.digest for p in v] for k, v in self.fields.items() if v}

    def as_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "goldenDigests": self.golden_digests(),
            "sources": {
                k: [{"digest": p.digest, "source": p.source, "note": p.note} for p in v]
                for k, v in self.fields.items()
                if v
            },
        }

    def as_yaml(self) -> str:
        lines = ["goldenDigests:"]
        for name, pins in self.fields.items():
            if not pins:
                continue
            lines.append(f"  {name}:")
            for p in pins:
                comment = f"{p.source}, {p.note}" if p.note else p.source
                lines.append(f"  - {p.digest}  # {comment}")
        return "\n".join(lines)


def pinned_digests(path: Path, *, variant: str | None = None, solver: bool = True) -> Pins:
    """Every digest a policy can pin for ``path`` (see the module doc)."""
    pins = Pins(path)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise MalformedInputError(
                f"{path} is not a .safetensors file (expected a .safetensors checkpoint, a "
                "diffusers component folder or a pipeline folder with model_index.json)"
            )
        pins.add("modelWeights", Pin(_weights(path), path.name))
        return pins
    if not path.is_dir():
        raise MalformedInputError(f"{path} does not exist")
    if (path / "model_index.json").is_file():
        found = False
        for name in _DENOISERS + _ENCODERS + ("scheduler",):
            sub = path / name
            if sub.is_dir():
                found |= _component(pins, sub, f"{name}/", variant, solver)
        if not found:
            raise MalformedInputError(f"pipeline folder {path} has no unet, encoder or scheduler")
        return pins
    if not _component(pins, path, "", variant, solver):
        raise MalformedInputError(
            f"{path} is not a diffusers folder (expected model_index.json, scheduler_config.json, "
            "or config.json beside diffusion_pytorch_model.safetensors / model.safetensors)"
        )
    return pins


def _component(pins: Pins, folder: Path, prefix: str, variant: str | None, solver: bool) -> bool:
    if (folder / "scheduler_config.json").is_file():
        _scheduler(pins, folder, prefix, solver)
        return True
    weights = _weights_file(folder, variant)
    if weights is None:
        return False
    config = _read_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    role = _role(folder.name, config)
    pins.add(role, Pin(_weights(weights), prefix + weights.name))
    return True


def _role(name: str, config: dict[str, Any]) -> str:
    if name in _ENCODERS:
        return "textEncoder"
    if name in _DENOISERS:
        return "modelWeights"
    # A lone component folder: transformers configs name ``architectures``, diffusers ones a
    # ``_class_name``; only the text encoders of the supported pipelines come from transformers.
    return "textEncoder" if "architectures" in config else "modelWeights"


def _weights_file(folder: Path, variant: str | None) -> Path | None:
    suffix = f".{variant}.safetensors" if variant else ".safetensors"
    for stem in _WEIGHT_FILES:
        candidate = folder / (stem + suffix)
        if candidate.is_file():
            return candidate
        if (folder / f"{stem}{suffix}.index.json").is_file():
            raise MalformedInputError(
                f"{folder / (stem + suffix)}.index.json: sharded checkpoints are not supported; "
                "save the component as one safetensors file"
            )
    if any(folder.glob("*.bin")):
        raise MalformedInputError(
            f"{folder} holds only pickled .bin weights; samplerguard digests safetensors files "
            "(convert them with diffusers' save_pretrained(..., safe_serialization=True))"
        )
    return None


def _weights(path: Path) -> str:
    from samplerguard.commitment.digest import safetensors_digest

    return safetensors_digest(path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            raw = fh.read(_MAX_CONFIG + 1)
    except OSError as exc:
        raise MalformedInputError(f"cannot read {path}: {exc.strerror}") from None
    if len(raw) > _MAX_CONFIG:
        raise MalformedInputError(f"{path} is over {_MAX_CONFIG} bytes")
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise MalformedInputError(f"{path} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedInputError(f"{path} is not a JSON object")
    return doc


def _scheduler(pins: Pins, folder: Path, prefix: str, solver: bool) -> None:
    from samplerguard.policy.schedule import scheduler_config_digest

    source = prefix + "scheduler_config.json"
    written = _read_json(folder / "scheduler_config.json")
    cls = written.get("_class_name")
    if not isinstance(cls, str):
        raise MalformedInputError(f"{folder / 'scheduler_config.json'} names no _class_name")
    import diffusers

    klass = getattr(diffusers, cls, None)
    if klass is None or not hasattr(klass, "from_config"):
        raise MalformedInputError(
            f"{source}: diffusers {diffusers.__version__} has no scheduler class {cls!r}"
        )
    from samplerguard.hook.recorder import scheduler_config

    loaded = scheduler_config(klass.from_config(written))  # what the hook declares
    version = f"diffusers {diffusers.__version__}"
    pins.add(
        "schedulerConfig",
        Pin(scheduler_config_digest(cls, loaded), source, f"as {version} loads it"),
    )
    pins.add(
        "schedulerConfig",
        Pin(scheduler_config_digest(cls, written), source, "as written (the sidecar's file check)"),
    )
    if solver:
        from samplerguard.hook.solver import solver_code_digest

        pins.add("solverCode", Pin(solver_code_digest(cls), cls, f"code of {version} here"))
