"""The verifier's tail check against the generation it checks, per pipeline family.

Every challenge checks the trajectory's tail besides its challenged steps: the transcript and
its output binding (the reference decode of the final latent) and the request binding (the
conditioning derived from the consumer's request by the reference text encoders). With a
reference codec that is a text encoding and a decode, so it costs a fixed share of the
generation, beside the ``1.5/N`` of each challenged step.

For each family (the tiny pipelines of the tests, with tokenizers and text encoders), one
generation is recorded through the hook, and then, interleaved round by round:

* ``generation``: the plain pipeline call (no hook), N steps;
* ``tail``: ``verify_challenge`` with no step challenged (transcript, decode, conditioning);
* ``step``: one challenged step on top of it, minus the tail.

Printed: tail / generation and step·N / generation (medians over rounds, with their
interquartile range). ``--sd15`` runs the same on Stable Diffusion 1.5's UNet, VAE and a
CLIP-L-sized text encoder (random weights) at ``--size`` pixels, which is what the tail check
costs at a real model's proportions:

    python benchmarks/bench_tail_check.py [--rounds 5] [--sd15 --size 256 --steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support

import torch
from _common import table


def _spread(xs: list[float]) -> str:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return f"{statistics.median(xs):.4f} ({q[0]:.4f}–{q[2]:.4f})"


def _builders() -> dict[str, Callable[[], Any]]:
    from tests.support.families import (
        PROMPTED,
        latent_consistency_prompted,
        stable_diffusion_prompted,
        stable_diffusion_xl_prompted,
    )

    return {
        "stable-diffusion": stable_diffusion_prompted,
        "stable-diffusion-xl": stable_diffusion_xl_prompted,
        "latent-consistency": latent_consistency_prompted,
        **PROMPTED,
    }


def _sd15(size: int, steps: int) -> Any:
    """SD 1.5's UNet and VAE with a CLIP-L-sized text encoder and the byte-level tokenizer of
    the tests, called with a prompt at ``size`` pixels."""
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.support.families import Case, tiny_clip_tokenizer
    from tests.support.tiny_sd import build_sd15_scale

    pipe = build_sd15_scale(EulerDiscreteScheduler())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        encoder = CLIPTextModel(
            CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12)
        ).eval()
    tokenizer = tiny_clip_tokenizer()
    tokenizer.model_max_length = 77
    pipe.register_modules(text_encoder=encoder, tokenizer=tokenizer)
    return Case(
        pipe,
        {"prompt": "a red cat", "negative_prompt": "blurry", "height": size, "width": size},
        steps=steps,
        guidance=7.5,
    )


def measure(name: str, case: Any, rounds: int) -> list[str]:
    from samplerguard.commitment.challenge import verify_challenge
    from samplerguard.commitment.opening import Opening
    from samplerguard.policy.spec import GoldenDigests
    from samplerguard.verifier.reference import ReferenceModels
    from tests.integration.verifier.test_reference_codec import _serve

    folder = Path(tempfile.mkdtemp(prefix="sg-tail-"))
    case.pipe.save_pretrained(folder, safe_serialization=True)
    sink, commitment = _serve(case, "tail")
    refs = ReferenceModels(
        {name: folder}, GoldenDigests(model_weights=[commitment.recipe["model"]["digest"]])
    )
    program = refs.program(dict(commitment.recipe))
    transcript = sink.transcript("tail")

    def challenge(steps: list[int]) -> None:
        result = verify_challenge(
            commitment,
            transcript,
            lambda s: Opening.from_bytes(sink.opening("tail", s).to_bytes()),
            program,
            steps=steps,
            tau=0.0,
        )
        if not result.accepted or result.unchecked:
            raise SystemExit(f"{name}: the honest generation did not check fully: {result}")

    def generate() -> None:
        case.call(case.pipe)

    challenge([0])  # warm: the codec's first run
    tails, steps = [], []
    mid = commitment.n_steps // 2
    for _ in range(rounds):
        t0 = time.perf_counter()
        generate()
        gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        challenge([])
        tail = time.perf_counter() - t0
        t0 = time.perf_counter()
        challenge([mid])
        step = time.perf_counter() - t0 - tail
        tails.append(tail / gen)
        steps.append(step * commitment.n_steps / gen)
    return [name, str(commitment.n_steps), _spread(tails), _spread(steps)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sd15", action="store_true", help="SD-1.5 proportions only")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    if args.sd15:
        rows.append(measure("stable-diffusion", _sd15(args.size, args.steps), args.rounds))
        rows[-1][0] = f"SD 1.5 scale, {args.size} px"
    else:
        for name, build in _builders().items():
            rows.append(measure(name, build(), args.rounds))
            print(f"  {name} done", file=sys.stderr)
    print(
        table(
            rows,
            ["family", "N", "tail / generation (IQR)", "step x N / generation (IQR)"],
        )
    )


if __name__ == "__main__":
    main()
