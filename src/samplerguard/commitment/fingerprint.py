"""The build fingerprint: what decides whether a verifier reproduces a generation bit for bit.

Float kernels differ between builds, devices and backend settings: a verifier with oneDNN off
re-checking a step computed with it on sees rel-L2 of 1e-7..1e-5 on an honest step. The recipe
therefore records, beside the thread count, the library versions, the device kind and model, the
CPU kernel level, and every backend flag that changes kernels. The verifier then:

* **sets** what can be set (threads, oneDNN, TF32, cuDNN, deterministic algorithms) for the
  duration of the re-check (:func:`reproduce`);
* compares the rest (:func:`differences`): when nothing differs, honest steps must re-check to
  exactly 0 and any nonzero score is a deviation (a 1e-6 nudge of one latent is caught); when
  something differs, the τ of the policy's calibration entry for that pair of builds applies
  (``samplerguard calibrate`` measures it; :mod:`samplerguard.policy.tolerance` picks it).
"""

from __future__ import annotations

import functools
import platform
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from samplerguard.policy.spec import REPRODUCED_FIELDS
from samplerguard.policy.tolerance import differing_fields

__all__ = ["SETTABLE", "build_fingerprint", "differences", "reproduce", "text_cleaning"]

#: Fingerprint fields the verifier sets to the provider's values for a re-check.
SETTABLE = REPRODUCED_FIELDS


@functools.cache
def _static(device_kind: str, device_index: int) -> dict[str, Any]:
    import diffusers
    import numpy as np

    if device_kind == "cuda":
        name = torch.cuda.get_device_name(device_index)
        capability = ".".join(map(str, torch.cuda.get_device_capability(device_index)))
    else:
        name = platform.machine()
        capability = torch.backends.cpu.get_cpu_capability()
    return {
        "torch": str(torch.__version__),  # a plain str: TorchVersion compares by parsing
        "diffusers": diffusers.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "device": device_kind,
        "deviceName": name,
        "capability": capability,
        "cuda": torch.version.cuda if device_kind == "cuda" else None,
        "textCleaning": text_cleaning(),
    }


def text_cleaning() -> str:
    """The optional packages diffusers pipelines clean prompts with where they are installed
    (PixArt's captions with ``bs4`` and ``ftfy``, Wan's prompts with ``ftfy``), with their
    versions: ``"bs4 4.12.3, ftfy -"``."""
    from importlib import metadata

    out = []
    for name, dist in (("bs4", "beautifulsoup4"), ("ftfy", "ftfy")):
        try:
            out.append(f"{name} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name} -")
    return ", ".join(out)


def build_fingerprint(device: torch.device | str | None = None) -> dict[str, Any]:
    """The fingerprint of this process for tensors on ``device`` (CPU when omitted)."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    index = dev.index if dev.index is not None else 0
    out = dict(_static(dev.type, index if dev.type == "cuda" else 0))
    out.update(
        threads=torch.get_num_threads(),
        mkldnn=bool(torch.backends.mkldnn.enabled),
        deterministic=bool(torch.are_deterministic_algorithms_enabled()),
    )
    if dev.type == "cuda":
        out.update(
            tf32Matmul=bool(torch.backends.cuda.matmul.allow_tf32),
            tf32Cudnn=bool(torch.backends.cudnn.allow_tf32),
            cudnn=bool(torch.backends.cudnn.enabled),
            cudnnDeterministic=bool(torch.backends.cudnn.deterministic),
            cudnnBenchmark=bool(torch.backends.cudnn.benchmark),
        )
    return out


def differences(recorded: object, device: torch.device | str | None = None) -> list[str]:
    """The fields of ``recorded`` this process cannot reproduce on ``device`` after
    :func:`reproduce` has set the settable ones: ``["torch: 2.5.0 vs 2.13.0", …]``. A recipe
    without a fingerprint differs in everything."""
    if not isinstance(recorded, Mapping):
        return ["no build fingerprint recorded"]
    mine = build_fingerprint(device)
    return [
        f"{key}: {recorded.get(key)!r} vs {mine.get(key)!r}"
        for key in differing_fields(recorded, mine)
    ]


def _getter(module: Any, attr: str) -> Callable[[], Any]:
    return lambda: getattr(module, attr)


def _setter(module: Any, attr: str) -> Callable[[Any], None]:
    return lambda value: setattr(module, attr, value)


class _Settings:
    """The process-wide backend flags are shared by every thread: re-checks that want the same
    settings run side by side, and one that wants other settings waits until they are done."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._active: tuple[object, ...] | None = None
        self._holders = 0

    @contextmanager
    def hold(self, wanted: tuple[object, ...]) -> Iterator[bool]:
        """Yields True for the first holder of ``wanted`` (which sets and restores the flags)."""
        with self._cond:
            while self._holders and self._active != wanted:
                self._cond.wait()
            first = self._holders == 0
            self._active = wanted
            self._holders += 1
        try:
            yield first
        finally:
            with self._cond:
                self._holders -= 1
                if not self._holders:
                    self._active = None
                    self._cond.notify_all()


_SETTINGS = _Settings()


def _wanted(rec: Mapping[str, Any], dev: torch.device) -> tuple[object, ...]:
    keys = sorted(SETTABLE) if dev.type == "cuda" else ["deterministic", "mkldnn", "threads"]
    return (dev.type, *((k, rec.get(k)) for k in keys))


@contextmanager
def reproduce(recorded: object, device: torch.device | str | None = None) -> Iterator[None]:
    """Within this block, the settable backend flags and the thread count are the recorded
    ones (where recorded and valid); they are restored afterwards. A flag is touched only when
    it differs: setting oneDNN's flag, even to its current value, drops its kernel caches.

    The flags are process-wide: concurrent blocks asking for the same settings share them, and
    a block asking for other settings waits for the others to leave (never nest two blocks
    with different settings in one thread)."""
    rec = recorded if isinstance(recorded, Mapping) else {}
    dev = torch.device(device) if device is not None else torch.device("cpu")
    with _SETTINGS.hold(_wanted(rec, dev)) as first:
        if not first:
            yield
            return
        with _applied(rec, dev):
            yield


@contextmanager
def _applied(rec: Mapping[str, Any], dev: torch.device) -> Iterator[None]:
    undo: list[Callable[[], None]] = []

    def put(get: Callable[[], Any], set_: Callable[[Any], None], value: object) -> None:
        before = get()
        if isinstance(value, bool | int) and value != before:
            set_(value)
            undo.append(lambda: set_(before))

    try:
        threads = rec.get("threads")
        if dev.type == "cpu" and isinstance(threads, int) and 1 <= threads <= 256:
            put(torch.get_num_threads, torch.set_num_threads, threads)
        if isinstance(rec.get("mkldnn"), bool):
            put(
                lambda: torch.backends.mkldnn.enabled,
                lambda v: setattr(torch.backends.mkldnn, "enabled", v),
                rec["mkldnn"],
            )
        if isinstance(rec.get("deterministic"), bool):
            put(
                torch.are_deterministic_algorithms_enabled,
                lambda v: torch.use_deterministic_algorithms(v, warn_only=True),
                rec["deterministic"],
            )
        if dev.type == "cuda":
            flags: tuple[tuple[str, Any, str], ...] = (
                ("tf32Matmul", torch.backends.cuda.matmul, "allow_tf32"),
                ("tf32Cudnn", torch.backends.cudnn, "allow_tf32"),
                ("cudnn", torch.backends.cudnn, "enabled"),
                ("cudnnDeterministic", torch.backends.cudnn, "deterministic"),
            )
            for key, module, attr in flags:
                if isinstance(rec.get(key), bool):
                    put(_getter(module, attr), _setter(module, attr), rec[key])
        yield
    finally:
        for step in reversed(undo):
            step()
