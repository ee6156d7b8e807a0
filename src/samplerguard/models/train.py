"""Reproducible training of the bundled digits model and its classifier.

    python -m samplerguard.models.train [--out DIR] [--steps N] [--threads T]

Data: scikit-learn's bundled 8×8 digits (1,797 images, shipped inside the package; nothing is
downloaded). Pixels 0..16 are mapped to [-1, 1]. The last 20 % (fixed split) are held out to
score the classifier. The UNet learns ε-prediction under a DDPM linear schedule with 15 %
label dropout to NULL_CLASS, which is what classifier-free guidance needs. Everything is
seeded; on the same build the output files are bit-identical.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from samplerguard.models.digits import (
    CLASSIFIER_FILE,
    MODEL_FILE,
    NULL_CLASS,
    SCHEDULER_CONFIG,
    DigitsClassifier,
    build_unet,
    model_metadata,
)

__all__ = ["load_digits_tensors", "main"]


def load_digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as (N, 1, 8, 8) float32 in [-1, 1] and (N,) int64 labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.from_numpy(np.asarray(data.images, dtype=np.float32) / 8.0 - 1.0).unsqueeze(1)
    y = torch.from_numpy(np.asarray(data.target, dtype=np.int64))
    return x, y


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def train_classifier(
    x: torch.Tensor, y: torch.Tensor, gen: torch.Generator
) -> tuple[DigitsClassifier, float]:
    n_train = int(0.8 * len(x))
    clf = DigitsClassifier()
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-3, weight_decay=1e-4)
    for epoch in range(60):
        clf.train()
        perm = torch.randperm(n_train, generator=gen)
        for i in range(0, n_train, 128):
            idx = perm[i : i + 128]
            xb = x[idx]
            # Light noise augmentation so slightly imperfect samples still classify.
            xb = (xb + 0.1 * torch.randn(xb.shape, generator=gen)).clamp(-1, 1)
            loss = torch.nn.functional.cross_entropy(clf(xb), y[idx])
            opt.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
        if epoch % 20 == 19:
            clf.eval()
            acc = clf.accuracy(x[n_train:], y[n_train:])
            _log(f"classifier epoch {epoch + 1}: held-out accuracy {acc:.3f}")
    clf.eval()
    return clf, clf.accuracy(x[n_train:], y[n_train:])


def train_unet(
    x: torch.Tensor, y: torch.Tensor, steps: int, gen: torch.Generator, batch: int = 128
) -> torch.nn.Module:
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(**SCHEDULER_CONFIG)
    unet = build_unet(seed=0)
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3, weight_decay=1e-4)
    lr = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    start = time.monotonic()
    for step in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        x0, labels = x[idx], y[idx].clone()
        labels[torch.rand(batch, generator=gen) < 0.15] = NULL_CLASS
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, SCHEDULER_CONFIG["num_train_timesteps"], (batch,), generator=gen)
        xt = sched.add_noise(x0, noise, t)
        loss = torch.nn.functional.mse_loss(unet(xt, t, class_labels=labels).sample, noise)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr.step()
        with torch.no_grad():
            for k, v in unet.state_dict().items():
                ema[k].mul_(0.995).add_(v.detach(), alpha=0.005) if v.is_floating_point() else (
                    ema[k].copy_(v)
                )
        if step % 100 == 0 or step == steps - 1:
            el = time.monotonic() - start
            _log(f"unet step {step + 1}/{steps} loss {loss.item():.4f} ({el:.0f}s)")
    unet.load_state_dict(ema)
    trained: torch.nn.Module = unet.eval()
    return trained


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=MODEL_FILE.parent)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    from safetensors.torch import save_file

    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(1234)
    x, y = load_digits_tensors()
    args.out.mkdir(parents=True, exist_ok=True)

    clf, acc = train_classifier(x, y, gen)
    save_file(
        {k: v.contiguous() for k, v in clf.state_dict().items()},
        str(args.out / CLASSIFIER_FILE.name),
        metadata={"samplerguard.model": "digits-classifier", "heldout_accuracy": f"{acc:.4f}"},
    )
    unet = train_unet(x, y, args.steps, gen, args.batch)
    weights = args.out / MODEL_FILE.name
    save_file(
        {k: v.contiguous() for k, v in unet.state_dict().items()},
        str(weights),
        metadata=model_metadata(),
    )
    # the checkpoint carries its sampling recipe, with the weights' and metadata's hashes pinned
    from samplerguard.models.recipe import bundled_recipe
    from samplerguard.recipe import write_recipe

    write_recipe(weights, bundled_recipe(), weights)
    (args.out / "training.json").write_text(
        json.dumps(
            {"steps": args.steps, "batch": args.batch, "classifier_heldout_accuracy": round(acc, 4)}
        )
        + "\n"
    )
    _log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
