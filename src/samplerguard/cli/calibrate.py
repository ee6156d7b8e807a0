"""``samplerguard calibrate``: measure honest re-check drift per pair of builds and propose τ.

Honest trajectories of the bundled digits model are generated in each configuration available
here (the *producer*): this process as it is, 1 thread, oneDNN off, every lower CPU kernel level
(``ATEN_CPU_CAPABILITY``, in a child process) and CUDA when present. Every step is re-checked by
this process the way the verifier re-checks it: the settable flags (threads, oneDNN) are set to
the producer's, so those pairs re-check exactly; what is left (kernel level, device) is the
drift a calibration entry covers. Per pair it prints the honest score quantiles, the proposed τ
(the worst honest score times ``--factor``), the false-rejection rate of one challenged request
(``--k`` windows of ``--window`` steps) at that τ with its 95% upper bound from the sample count,
and the smallest score of a provider whose weights carry 1e-4 relative noise, so the separation
is in view.

``--json`` prints ``{"calibration": [...]}``: the entries for the pairs the verifier cannot
reproduce, to paste under the policy's ``spec.verification``. Progress goes to stderr.

Exit codes: 0 measured, 2 unusable input.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "TAU_FLOOR",
    "Config",
    "PairResult",
    "clopper_pearson_upper",
    "configurations",
    "measure",
    "register",
    "request_false_rejection",
    "run",
]

#: relative weight noise of the provider calibrate shows beside the honest drift
WEIGHT_NOISE = 1e-4
_CAPABILITIES = ("DEFAULT", "AVX2", "AVX512")
#: τ of an entry for a pair that re-checked bit for bit (a calibrated τ must be positive)
TAU_FLOOR = 1e-9


def register(sub: Any) -> None:
    p = sub.add_parser(
        "calibrate",
        help="measure honest re-check drift per pair of builds here and propose tau",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    p.add_argument("--steps", type=int, default=20, help="denoising steps N")
    p.add_argument("--requests", type=int, default=3, help="honest generations per producer")
    p.add_argument("--sampler", default="dpmpp_2m", help="sampler of the honest generations")
    p.add_argument("--factor", type=float, default=3.0, help="tau = worst honest score x factor")
    p.add_argument("--k", type=int, default=2, help="windows per challenged request")
    p.add_argument("--window", type=int, default=1, help="steps per window")
    p.add_argument(
        "--configs",
        default="",
        help="comma-separated producer configurations to measure (default: all available)",
    )
    p.add_argument("--json", action="store_true", help="print the calibration entries as JSON")
    p.add_argument("--produce", help=argparse.SUPPRESS)  # child mode: write trajectories here
    p.set_defaults(_run=run)


@dataclass(frozen=True)
class Config:
    """A producer configuration: settable flags, and the kernel level of a child process."""

    name: str
    threads: int
    mkldnn: bool = True
    capability: str | None = None  # ATEN_CPU_CAPABILITY of a child process; None: this one
    device: str = "cpu"


def configurations() -> list[Config]:
    """The producer configurations available here; the first one is this process as it is."""
    import torch

    threads = torch.get_num_threads()
    out = [Config("native", threads)]
    if threads > 1:
        out.append(Config("1-thread", 1))
    if torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        out.append(Config("onednn-off", threads, mkldnn=False))
    native = torch.backends.cpu.get_cpu_capability()
    if native in _CAPABILITIES:
        out += [
            Config(f"cpu-{c.lower()}", threads, capability=c)
            for c in _CAPABILITIES[: _CAPABILITIES.index(native)]
        ]
    if torch.cuda.is_available():
        out.append(Config("cuda", threads, device="cuda"))
    return out


@dataclass
class PairResult:
    producer: Config
    producer_fingerprint: dict[str, Any]
    verifier_fingerprint: dict[str, Any]
    #: per honest trajectory, the score of every step
    honest: list[list[float]]
    noise_min: float
    fields: list[str] = field(default_factory=list)
    #: why this pair cannot be re-checked at all, when it cannot
    error: str | None = None

    @property
    def scores(self) -> list[float]:
        return sorted(s for t in self.honest for s in t)


def clopper_pearson_upper(exceeded: int, n: int, confidence: float = 0.95) -> float:
    """The one-sided upper confidence bound on a binomial rate from ``exceeded`` of ``n``."""
    if n <= 0:
        return 1.0
    if exceeded >= n:
        return 1.0
    alpha = 1.0 - confidence

    def cdf(p: float) -> float:  # P(X <= exceeded) for X ~ Bin(n, p)
        return sum(math.comb(n, i) * p**i * (1.0 - p) ** (n - i) for i in range(exceeded + 1))

    lo, hi = exceeded / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > alpha else (lo, mid)
    return hi


def request_false_rejection(
    honest: list[list[float]], tau: float, k: int, window: int
) -> tuple[float, float]:
    """(measured, upper bound) probability that one challenged request of ``k`` windows of
    ``window`` steps rejects an honest trajectory at ``tau``. Measured: over the windows the
    verifier draws (starts in ``[-(w-1), n-1]``, clipped), averaged over the trajectories.
    Bound: the 95% Clopper-Pearson bound on the per-step exceedance, over the ``k·window``
    steps a request checks (a union bound)."""
    rates = []
    for scores in honest:
        n = len(scores)
        starts = range(-(window - 1), n)
        hit = sum(1 for s in starts if any(x > tau for x in scores[max(s, 0) : s + window]))
        rates.append(1.0 - (1.0 - hit / len(starts)) ** k)
    steps = [x for t in honest for x in t]
    upper = clopper_pearson_upper(sum(x > tau for x in steps), len(steps))
    return sum(rates) / len(rates), min(1.0, k * window * upper)


@contextlib.contextmanager
def _flags(config: Config) -> Iterator[None]:

    from samplerguard.commitment.fingerprint import reproduce

    with reproduce({"threads": config.threads, "mkldnn": config.mkldnn}):
        yield


def _noisy(unet: Any) -> Any:
    import torch

    noisy = copy.deepcopy(unet)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * p.abs().mean() * WEIGHT_NOISE)
    return noisy


def _produce(config: Config, args: argparse.Namespace, out: Path) -> None:
    """Honest trajectories and one weight-noise trajectory in ``config``, written to ``out``:
    the sink's public key, and per trajectory its commitment and every step's opening."""
    import torch
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from samplerguard.commitment.digest import module_digest
    from samplerguard.demo.providers import Declared, Provider
    from samplerguard.hook.local import LocalSink
    from samplerguard.hook.recorder import Recorder
    from samplerguard.models.digits import load_unet

    unet = load_unet(device=config.device)
    digest = module_digest(unet)
    sink = LocalSink()
    recorder = Recorder(sink)
    declared = Declared(sampler=args.sampler, steps=args.steps)
    gen = torch.Generator().manual_seed(0)
    jobs = [(f"honest-{i}", unet) for i in range(args.requests)] + [("noise-0", _noisy(unet))]
    with _flags(config):
        for rid, model in jobs:
            provider = Provider("honest", model, declared, recorder)
            provider.model_digest = digest  # the noisy provider declares the reference model
            labels = torch.randint(0, 10, (8,), generator=gen)
            latents = torch.randn((8, 1, 8, 8), generator=gen)
            g = provider.generate(rid, labels.to(config.device), latents.to(config.device))
            folder = out / rid
            folder.mkdir()
            (folder / "commitment.json").write_text(g.commitment.to_json())
            for s in range(g.commitment.n_steps):
                (folder / f"{s}.opening").write_bytes(sink.opening(rid, s).to_bytes())
    recorder.close()
    pem = sink.key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (out / "key.pem").write_bytes(pem)


def _recheck(folder: Path, program: Any) -> tuple[dict[str, Any], list[list[float]], list[float]]:
    """Re-check every produced step: (declared fingerprint, honest scores, noise scores)."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from samplerguard.commitment.opening import Opening
    from samplerguard.commitment.recheck import recheck_step
    from samplerguard.commitment.statement import Commitment

    key = load_pem_public_key((folder / "key.pem").read_bytes())
    honest: list[list[float]] = []
    noise: list[list[float]] = []
    declared: dict[str, Any] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        c = Commitment.verify((sub / "commitment.json").read_text(), key)  # type: ignore[arg-type]
        declared = dict(c.recipe.get("runtime") or {})
        scores = [
            recheck_step(
                c, Opening.from_bytes((sub / f"{s}.opening").read_bytes()), program, tau=0.0
            ).worst
            for s in range(c.n_steps)
        ]
        (noise if sub.name.startswith("noise") else honest).append(scores)
    return declared, honest, [x for t in noise for x in t]


def measure(args: argparse.Namespace, configs: list[Config], say: Any = None) -> list[PairResult]:
    """Produce in every configuration and re-check here; one result per producer."""
    import torch

    from samplerguard.commitment.fingerprint import build_fingerprint
    from samplerguard.errors import VerificationError
    from samplerguard.models.digits import load_unet
    from samplerguard.models.programs import DigitsProgram
    from samplerguard.policy.tolerance import differing_fields

    say = say or (lambda _: None)
    torch.set_grad_enabled(False)
    program = DigitsProgram(load_unet())  # the verifier: this process, on the CPU
    results = []
    for i, config in enumerate(configs, 1):
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="samplerguard-calibrate-") as tmp:
            folder = Path(tmp)
            say(
                f"[{i}/{len(configs)}] {config.name}: generating {args.requests} honest and 1 "
                f"weight-noise trajectories of {args.steps} steps"
            )
            if config.capability is None:
                _produce(config, args, folder)
            else:
                _produce_in_child(config, args, folder)
            say(
                f"[{i}/{len(configs)}] {config.name}: re-checking "
                f"{(args.requests + 1) * args.steps} steps here"
            )
            try:
                declared, honest, noise = _recheck(folder, program)
                error = None
            except VerificationError as exc:  # a binding check that is bit-exact by design
                declared, honest, noise, error = {}, [], [], str(exc)
        mine = build_fingerprint(program.device)
        results.append(
            PairResult(
                config,
                declared,
                mine,
                honest,
                min(noise) if noise else math.inf,
                differing_fields(declared, mine) if declared else [],
                error,
            )
        )
        say(f"[{i}/{len(configs)}] {config.name}: done in {time.monotonic() - started:.1f}s")
    return results


def _produce_in_child(config: Config, args: argparse.Namespace, folder: Path) -> None:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": str(config.capability).lower()}
    cmd = [
        sys.executable, "-m", "samplerguard", "calibrate", "--produce", str(folder),
        "--steps", str(args.steps), "--requests", str(args.requests),
        "--sampler", args.sampler, "--configs", f"child:{config.threads}:{int(config.mkldnn)}",
    ]  # fmt: skip
    # bounded, and long enough for a large sample on a busy machine (a minute per request)
    limit = 600 + 60 * args.requests
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"producer {config.name} did not finish within {limit}s") from None
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace")[-400:]
        raise RuntimeError(f"producer {config.name} failed ({done.returncode}): {tail}")


def _entry(pair: PairResult, tau: float, upper: float) -> dict[str, Any]:
    from samplerguard.policy.tolerance import fingerprint_text

    return {
        "producer": {k: fingerprint_text(pair.producer_fingerprint.get(k)) for k in pair.fields},
        "verifier": {k: fingerprint_text(pair.verifier_fingerprint.get(k)) for k in pair.fields},
        "tau": float(f"{tau:.2g}"),
        "honestSamples": len(pair.scores),
        "falseRejection": float(f"{upper:.3g}"),
        "weightNoiseMin": float(f"{pair.noise_min:.3g}"),
    }


def _quantile(scores: list[float], q: float) -> float:
    return scores[min(len(scores) - 1, int(q * len(scores)))]


def run(args: argparse.Namespace) -> int:
    if not (
        1 <= args.steps <= 200
        and 1 <= args.requests <= 1000
        and args.factor >= 1
        and 1 <= args.k <= 64
        and 1 <= args.window <= 64
    ):
        print("calibrate: steps 1..200, requests 1..1000, factor >= 1, k and window 1..64")
        return 2
    if args.produce:  # child mode: produce in this process's kernel level and flags
        _, threads, mkldnn = args.configs.split(":")
        _produce(Config("child", int(threads), bool(int(mkldnn))), args, Path(args.produce))
        return 0
    available = configurations()
    wanted = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(wanted) - {c.name for c in available})
    if unknown:
        print(f"calibrate: unknown configurations {unknown}; here: {[c.name for c in available]}")
        return 2
    configs = [c for c in available if not wanted or c.name in wanted]

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    pairs = measure(args, configs, say)
    entries = []
    lines = [
        f"{'producer -> here':<22} {'differs':<24} {'p50':>8} {'p99':>8} {'max':>8} "
        f"{'tau':>8} {'FR/req':>8} {'FR<= (95%)':>10} {'1e-4 noise min':>14}"
    ]
    for pair in pairs:
        if pair.error is not None:
            lines.append(f"{pair.producer.name:<22} cannot be re-checked here: {pair.error}")
            continue
        scores = pair.scores
        worst = scores[-1]
        tau = worst * args.factor
        measured, upper = request_false_rejection(pair.honest, tau, args.k, args.window)
        differs = ", ".join(pair.fields) or "nothing (reproduced)"
        if worst == 0.0:  # bit for bit: reproduced (no entry), or the smallest tau for the pair
            if pair.fields:
                entries.append(_entry(pair, TAU_FLOOR, 0.0))
            lines.append(
                f"{pair.producer.name:<22} {differs[:24]:<24} {0:>8.1e} {0:>8.1e} {0:>8.1e} "
                f"{'exact' if not pair.fields else TAU_FLOOR:>8} {0:>8.1e} {'-':>10} "
                f"{pair.noise_min:>14.2e}"
            )
            continue
        lines.append(
            f"{pair.producer.name:<22} {differs[:24]:<24} {_quantile(scores, 0.5):>8.1e} "
            f"{_quantile(scores, 0.99):>8.1e} {worst:>8.1e} {tau:>8.1e} {measured:>8.1e} "
            f"{upper:>10.1e} {pair.noise_min:>14.2e}"
        )
        if pair.fields and worst > 0 and tau < pair.noise_min:
            entries.append(_entry(pair, tau, upper))
        elif pair.fields:
            say(
                f"{pair.producer.name}: tau {tau:.1e} does not separate honest drift from 1e-4 "
                f"weight noise ({pair.noise_min:.1e}); no entry (lower --factor or use "
                "requireSameBuild)"
            )
    k, w = args.k, args.window
    lines.append(
        f"FR/req: measured false rejection of one challenged request (k={k} windows of {w}); "
        f"FR<=: its 95% upper bound from the sample count; bound 1e-3 needs about "
        f"{math.ceil(3 * k * w / 1e-3)} honest steps per pair (--requests)"
    )
    if args.json:
        say("\n".join(lines))
        print(json.dumps({"calibration": entries}, indent=2))
    else:
        print("\n".join(lines))
        print(
            f"{len(entries)} calibration entries for builds the verifier cannot reproduce; "
            "--json prints them for the policy's spec.verification.calibration"
        )
    return 0
