"""``samplerguard demo``: the whole lane on the bundled model, one honest provider, ten cheats.

For each provider it generates class-conditional digits under the declared recipe, commits the
trajectory (signed DSSE, Merkle root), lets a challenger pick k steps *after* it holds the
signed root, opens them, re-runs each step with the reference model and scores rel-L2 against τ.
A cheater that survives a request is challenged again on its next one, up to a bound, so the
table also shows how many requests each cheat lasted (a cheat that fakes one step in N is caught
per request with probability about k/N).
"""

from __future__ import annotations

import json
import re
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from samplerguard.commitment.challenge import catch_probability, requests_for, verify_challenge
from samplerguard.commitment.statement import Commitment
from samplerguard.demo.providers import CHEATS, Declared, Provider
from samplerguard.errors import SamplerGuardError, VerificationError
from samplerguard.hook.local import LocalSink
from samplerguard.hook.recorder import Recorder
from samplerguard.models.programs import DigitsProgram
from samplerguard.rng import NoiseAuthority, RequestNoise
from samplerguard.rng.escrow import SeedEscrow, open_escrow

__all__ = ["DemoConfig", "ProviderResult", "choose_steps", "reason_text", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("samplerguard-demo")
    steps: int = 20
    cfg: float = 3.0
    sampler: str = "dpmpp_2m"
    k: int = 3
    tau: float = 1e-5
    batch: int = 8
    honest_requests: int = 3
    max_requests: int = 12
    threads: int = 0
    #: a cheater is served until caught, or until one faking a single step would have escaped
    #: with at most this probability (then it is reported "not caught")
    miss: float = 1e-6
    #: live mode: write an audit bundle of each provider's last request here
    export: Path | None = None


@dataclass
class Check:
    #: the re-checked step, or None for a check of the whole request (transcript, bindings)
    step: int | None
    rel_l2: float | None
    worst: float | None
    verdict: str
    reason: str = ""


@dataclass
class ProviderResult:
    provider: str
    verdict: str  # "accepted" | "rejected" | "not caught"
    requests: int
    root: str
    checks: list[Check] = field(default_factory=list)
    faked_steps: list[int] = field(default_factory=list)
    generation_s: float = 0.0
    recheck_s: float = 0.0
    accuracy: float | None = None
    image: str = ""
    request_id: str = ""
    #: every step the verifier challenged in the last request
    challenged: list[int] = field(default_factory=list)


def demo_authority() -> NoiseAuthority:
    """CTR_DRBG noise per (tenant, request id). The demo's master secret is fresh per run;
    a deployment reads it from a file or the environment (NoiseAuthority.from_env)."""
    return NoiseAuthority(secrets.token_bytes(32), mode="ctr-drbg")


def choose_steps(n_steps: int, k: int) -> list[int]:
    """k distinct steps from the OS CSPRNG. Call only once the signed root is held."""
    rng = secrets.SystemRandom()
    return sorted(rng.sample(range(n_steps), min(k, n_steps)))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _challenge(
    commitment: Commitment,
    sink: LocalSink,
    program: DigitsProgram,
    steps: list[int],
    tau: float,
    noise: Any,
) -> tuple[list[Check], float]:
    """The verifier's challenge of one request: transcript, noise stream, then the steps."""
    start = time.perf_counter()
    rid = commitment.request_id
    try:
        outcome = verify_challenge(
            commitment,
            sink.transcript(rid),
            lambda s: sink.opening(rid, s),
            program,
            steps=steps,
            tau=tau,
            noise=noise,
        )
    except VerificationError as exc:
        return [Check(None, None, None, "reject", str(exc))], time.perf_counter() - start
    elapsed = time.perf_counter() - start
    checks = []
    for r in outcome.results:
        if r.accepted:
            checks.append(Check(r.step, r.rel_l2, r.worst, "pass"))
        else:
            bound = "0 (same build: exact)" if outcome.exact else f"τ {outcome.tau:.0e}"
            reason = "; ".join(r.reasons) or f"rel-L2 {r.worst:.2e} > {bound}"
            checks.append(Check(r.step, r.rel_l2, r.worst, "reject", reason))
    return checks, elapsed / max(len(steps), 1)


def max_requests_for(cfg: DemoConfig) -> int:
    """How many requests a cheater is served before the demo calls it "not caught": enough that
    a provider faking a single step of N escapes with probability at most ``cfg.miss``."""
    per_request = catch_probability(cfg.steps, min(cfg.k, cfg.steps), 1)
    needed = requests_for(1.0 - cfg.miss, per_request)
    return max(cfg.max_requests, needed or cfg.max_requests)


def _escrow_noise(escrow: str | None, key: Any, request_id: str) -> Any:
    if escrow is None:
        return None
    seed = open_escrow(key, SeedEscrow.from_json(escrow), request_id=request_id)
    stream = RequestNoise(seed, record_draws=False)
    return lambda shape, dtype: stream.randn(shape, dtype=dtype)


def _save_grid(
    images: torch.Tensor,
    path: Path,
    commitment: Any = None,
    labels: torch.Tensor | None = None,
) -> None:
    """The request's digits as one PNG strip carrying its provenance record and the signed
    commitment (``samplerguard inspect PNG --public-key KEY`` checks one against the other)."""
    from PIL import Image

    from samplerguard.models.digits import to_pixels
    from samplerguard.recipe.provenance import embed_provenance, provenance_from_commitment

    pixels = to_pixels(images)  # (B, 8, 8)
    tiles = [Image.fromarray(p).resize((64, 64), Image.Resampling.NEAREST) for p in pixels]
    grid = Image.new("L", (64 * len(tiles) + 4 * (len(tiles) - 1), 64), color=40)
    for i, tile in enumerate(tiles):
        grid.paste(tile, (i * 68, 0))
    if commitment is None:
        grid.save(path)
        return
    extra = {} if labels is None else {"classLabels": ",".join(map(str, labels.tolist()))}
    record = provenance_from_commitment(commitment, **extra)
    path.write_bytes(embed_provenance(grid, record, commitment.envelope))


def run_demo(cfg: DemoConfig, progress: Callable[[str], None] = _log) -> dict[str, Any]:
    from samplerguard.models.digits import CLASSIFIER_FILE, MODEL_FILE, load_classifier, load_unet

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not MODEL_FILE.exists():
        raise SamplerGuardError(
            f"bundled weights are missing at {MODEL_FILE}; "
            "rebuild them with `python -m samplerguard.models.train`"
        )
    cfg.out.mkdir(parents=True, exist_ok=True)
    unet = load_unet()
    classifier = load_classifier() if CLASSIFIER_FILE.exists() else None
    program = DigitsProgram(unet)
    declared = Declared(sampler=cfg.sampler, steps=cfg.steps, cfg=cfg.cfg)
    progress(
        f"samplerguard demo: bundled digits model {program.model_digest[:19]}…, declared "
        f"{cfg.sampler} × {cfg.steps} steps, CFG {cfg.cfg}, k={cfg.k} challenged steps, "
        f"τ={cfg.tau:.0e}"
    )
    results: list[ProviderResult] = []
    gen = torch.Generator().manual_seed(2024)  # class labels only; noise comes from the DRBG
    authority = demo_authority()
    verifier_key = X25519PrivateKey.generate()
    for name in ("honest", *CHEATS):
        sink = LocalSink()
        recorder = Recorder(sink)
        provider = Provider(name, unet, declared, recorder, authority, verifier_key.public_key())
        limit = cfg.honest_requests if name == "honest" else max_requests_for(cfg)
        res = ProviderResult(provider=name, verdict="accepted", requests=0, root="")
        gen_times: list[float] = []
        check_times: list[float] = []
        for r in range(1, limit + 1):
            labels = torch.randint(0, 10, (cfg.batch,), generator=gen)
            start = time.perf_counter()
            g = provider.generate(f"{name}-{r}", labels)
            gen_times.append(time.perf_counter() - start)
            # The verifier's side: authenticate the commitment, then pick the steps.
            commitment = Commitment.verify(g.commitment.to_json(), sink.key.public_key())
            steps = choose_steps(commitment.n_steps, cfg.k)
            noise = _escrow_noise(g.escrow, verifier_key, commitment.request_id)
            checks, per_step = _challenge(commitment, sink, program, steps, cfg.tau, noise)
            check_times.append(per_step)
            res.requests, res.root, res.checks = r, commitment.root.hex(), checks
            res.request_id, res.challenged = commitment.request_id, steps
            res.faked_steps = g.faked_steps
            if classifier is not None:
                res.accuracy = classifier.accuracy(g.images, labels)
            if r == 1 or any(c.verdict == "reject" for c in checks):
                _save_grid(g.images, cfg.out / f"{name}.png", commitment, labels)
                res.image = f"{name}.png"
            caught = any(c.verdict == "reject" for c in checks)
            if caught or r <= 3 or r % 10 == 0:
                progress(
                    f"  {name:<18} request {r}: root {commitment.root.hex()[:16]}… steps "
                    f"{steps} → " + ("REJECTED" if caught else "pass")
                )
            if caught:
                res.verdict = "rejected"
                break
        else:
            res.verdict = "accepted" if name == "honest" else "not caught"
        res.generation_s = statistics.mean(gen_times)
        res.recheck_s = statistics.mean(check_times) if check_times else 0.0
        results.append(res)
        recorder.close()
    honest = results[0]
    rho = honest.recheck_s / honest.generation_s if honest.generation_s else float("nan")
    summary: dict[str, Any] = {
        "model_digest": program.model_digest,
        "declared": asdict(declared),
        "k": cfg.k,
        "tau": cfg.tau,
        "miss_probability": cfg.miss,
        "max_requests": max_requests_for(cfg),
        "verification_ratio": {
            "one_step_recheck_s": honest.recheck_s,
            "generation_s": honest.generation_s,
            "rho": rho,
            "rho_times_N": rho * cfg.steps,
        },
        "providers": [asdict(r) for r in results],
        "all_cheaters_caught": all(r.verdict == "rejected" for r in results[1:]),
        "honest_accepted": honest.verdict == "accepted",
    }
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (cfg.out / "summary.md").write_text(render_markdown(summary))
    return summary


def _where(step: int | None) -> str:
    """A check of one step, or (None) of the whole request: its transcript or bindings."""
    return "request" if step is None else f"step {step}"


_PREFIX = re.compile(r"^(?:step \d+|request): ")


def reason_text(reason: str) -> str:
    """A reason without the ``step N:`` / ``request:`` prefix its table row already shows."""
    while _PREFIX.match(reason):
        reason = _PREFIX.sub("", reason, count=1)
    return reason


def _challenged(p: dict[str, Any]) -> str:
    steps = p.get("challenged") or sorted({c["step"] for c in p["checks"] if c["step"] is not None})
    return ", ".join(str(s) for s in steps) if steps else "—"


def _worst(p: dict[str, Any]) -> str:
    scored = [c for c in p["checks"] if c["worst"] is not None]
    if not scored:
        return "—"
    c = max(scored, key=lambda c: c["worst"])
    return f"{_fmt(c['worst'])} (step {c['step']})"


def _fmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.2e}"


def render_markdown(summary: dict[str, Any]) -> str:
    d = summary["declared"]
    vr = summary["verification_ratio"]
    lines = [
        "# samplerguard demo",
        "",
        f"Declared recipe: `{d['sampler']}`, {d['steps']} steps, CFG {d['cfg']}; "
        f"k = {summary['k']} challenged steps per request; τ = {summary['tau']:.0e}.",
        "",
        "| provider | verdict | requests | root | challenged steps | worst rel-L2 | reason |"
        " accuracy | image |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in summary["providers"]:
        reasons = "; ".join(
            f"{_where(c['step'])}: {reason_text(c['reason'])}" for c in p["checks"] if c["reason"]
        )
        acc = "—" if p["accuracy"] is None else f"{p['accuracy']:.0%}"
        img = f"![{p['provider']}]({p['image']})" if p["image"] else ""
        lines.append(
            f"| {p['provider']} | **{p['verdict']}** | {p['requests']} | `{p['root'][:16]}…` | "
            f"{_challenged(p)} | {_worst(p)} | {reasons.replace('|', '/')} | {acc} | {img} |"
        )
    lines += [
        "",
        f"Verification cost: one-step re-check {vr['one_step_recheck_s'] * 1e3:.1f} ms, "
        f"generation {vr['generation_s'] * 1e3:.1f} ms, ρ = {vr['rho']:.4f} "
        f"(ρ·N = {vr['rho_times_N']:.2f}; 1/N = {1 / d['steps']:.4f}).",
        "",
    ]
    return "\n".join(lines)


def print_table(summary: dict[str, Any], out: Callable[[str], None] = print) -> None:
    out(
        f"{'provider':<18} {'verdict':<11} {'req':>3}  {'root':<18} "
        f"{'challenged steps':<18} worst rel-L2"
    )
    for p in summary["providers"]:
        out(
            f"{p['provider']:<18} {p['verdict']:<11} {p['requests']:>3}  {p['root'][:16]}…  "
            f"{_challenged(p):<18} {_worst(p)}"
        )
        for c in p["checks"]:
            if c["reason"]:
                out(f"{'':<18}   {_where(c['step'])}: {reason_text(c['reason'])}")
    vr = summary["verification_ratio"]
    if summary.get("services"):
        # Live mode times a whole verifier round: HTTP, signature, inclusion, the re-check,
        # the fsynced journal and the audit log. The compute ratio is bench_verification_ratio.
        out(
            f"verifier round per challenged step / generation = {vr['rho']:.4f} "
            f"(×N = {vr['rho_times_N']:.2f}; includes HTTP, journal and audit-log writes)"
        )
    else:
        out(
            f"verification/generation cost ρ = {vr['rho']:.4f} per challenged step "
            f"(ρ·N = {vr['rho_times_N']:.2f}, goal ≤ 1.5)"
        )
