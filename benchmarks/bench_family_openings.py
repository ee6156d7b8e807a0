"""What an opening costs per pipeline family, at the latent and conditioning sizes of the real
models: bytes, the sidecar's ingestion per step, and the verifier's fetch of one opening.

Each row commits one trajectory through the real hook (plain-loop API, the family's real
scheduler class, a synthetic denoiser: the cost measured is the hook's and the sidecar's, not
the model's) to a real sidecar process, then fetches openings of random steps over its
authenticated HTTP API the way the verifier does. Sizes are float32 (fp16 latents halve the
latent part; the conditioning dominates for T5-conditioned models).

    python benchmarks/bench_family_openings.py [--steps 20] [--fetches 10] [--only sdxl,wan]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from _dataplane import sidecar

#: name -> (family, scheduler class, latent shape, conditioning shapes, guidance)
ROWS: dict[str, tuple[str, str, tuple[int, ...], dict[str, tuple[int, ...]], float]] = {
    "sd15 512px": (
        "stable-diffusion",
        "EulerDiscreteScheduler",
        (1, 4, 64, 64),
        {"prompt_embeds": (2, 77, 768)},
        7.5,
    ),
    "sdxl 1024px": (
        "stable-diffusion-xl",
        "EulerDiscreteScheduler",
        (1, 4, 128, 128),
        {"prompt_embeds": (2, 77, 2048), "add_text_embeds": (2, 1280), "add_time_ids": (2, 6)},
        5.0,
    ),
    "sd3 1024px": (
        "stable-diffusion-3",
        "FlowMatchEulerDiscreteScheduler",
        (1, 16, 128, 128),
        {"prompt_embeds": (2, 333, 4096), "pooled_prompt_embeds": (2, 2048)},
        7.0,
    ),
    "flux 1024px": (
        "flux",
        "FlowMatchEulerDiscreteScheduler",
        (1, 4096, 64),
        {
            "prompt_embeds": (1, 512, 4096),
            "pooled_prompt_embeds": (1, 768),
            "text_ids": (512, 3),
            "latent_image_ids": (4096, 3),
        },
        3.5,
    ),
    "animatediff 16f": (
        "animatediff",
        "DDIMScheduler",
        (1, 4, 16, 64, 64),
        {"prompt_embeds": (32, 77, 768)},
        7.5,
    ),
    "wan 81f 480p": (
        "wan",
        "FlowMatchEulerDiscreteScheduler",
        (1, 16, 21, 60, 104),
        {"prompt_embeds": (1, 512, 4096), "negative_prompt_embeds": (1, 512, 4096)},
        5.0,
    ),
    "stable-audio 47s": (
        "stable-audio",
        "EDMDPMSolverMultistepScheduler",
        (1, 64, 1024),
        {
            "text_audio_duration_embeds": (2, 130, 768),
            "audio_duration_embeds": (2, 1, 1536),
        },
        7.0,
    ),
}


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f}"


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--fetches", type=int, default=10)
    ap.add_argument("--only", default="", help="comma-separated row names (prefix match)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    import diffusers

    from samplerguard.commitment.digest import output_bytes
    from samplerguard.commitment.opening import Opening
    from samplerguard.hook.recorder import Recorder, TrajectoryRequest
    from samplerguard.hook.sidecar_sink import SidecarSink
    from samplerguard.policy.spec import KNOWN_SAMPLERS
    from samplerguard.verifier.client import SidecarClient

    ids = {cls: sid for sid, cls in reversed(list(KNOWN_SAMPLERS.items()))}
    svc, token_file = sidecar(extra_args=["--max-store-bytes", str(8 << 30)])
    token = token_file.read_text().strip()
    client = SidecarClient(svc.url, lambda: token, timeout=60.0)
    recorder = Recorder(SidecarSink(Path(svc.ready["socket"]), io_timeout=120.0))
    wanted = [w for w in args.only.split(",") if w]
    print(f"{args.steps} steps per trajectory, {args.fetches} opening fetches per row, float32")
    print(
        f"{'row':18} {'latent MiB':>10} {'cond MiB':>9} {'opening MiB':>11} "
        f"{'ingest ms/step':>14} {'sidecar CPU ms/step':>19} {'fetch p50/p99 ms':>17}"
    )
    gen = torch.Generator().manual_seed(0)
    try:
        for name, (family, cls, shape, cond_shapes, cfg) in ROWS.items():
            if wanted and not any(name.startswith(w) for w in wanted):
                continue
            scheduler = getattr(diffusers, cls)()
            scheduler.set_timesteps(args.steps)
            cond = {k: torch.randn(s, generator=gen) for k, s in cond_shapes.items()}
            request = TrajectoryRequest(
                request_id=f"bench-{name.replace(' ', '-')}",
                tenant="bench",
                pipeline=family,
                model_name=name,
                model_digest="sha256:" + "0" * 64,
                sampler=ids[cls],
                guidance_scale=cfg,
                steps=args.steps,
            )
            x = torch.randn(shape, generator=gen) * float(
                getattr(scheduler, "init_noise_sigma", 1.0)
            )
            eps = [torch.randn(shape, generator=gen) for _ in range(4)]
            cpu0, t0 = _cpu(svc.pid), time.perf_counter()
            with recorder.trajectory(request) as tr:
                tr.begin(scheduler, x, conditioning=cond)
                for i, t in enumerate(scheduler.timesteps):
                    if hasattr(scheduler, "scale_model_input"):
                        scheduler.scale_model_input(x, t)
                    x = scheduler.step(eps[i % 4], t, x, return_dict=False)[0]
                    tr.step(i, t, x, scheduler)
                tr.end(x, output_bytes(x))
            wall = (time.perf_counter() - t0) / args.steps
            cpu = (_cpu(svc.pid) - cpu0) / args.steps
            assert tr.commitment is not None
            trajectory = tr.commitment.request_id
            listing = client.trajectories()
            tid = next(
                (t["id"] for t in listing if t.get("requestId") == trajectory),
                listing[-1]["id"] if listing else trajectory,
            )
            times, size = [], 0
            for k in range(args.fetches):
                step = (k * 7) % args.steps
                t1 = time.perf_counter()
                raw = client.opening(tid, step)
                Opening.from_bytes(raw)
                times.append(time.perf_counter() - t1)
                size = len(raw)
            times.sort()
            p99 = times[min(len(times) - 1, int(0.99 * len(times)))]
            latent = x.numel() * 4
            cond_bytes = sum(v.numel() * 4 for v in cond.values())
            print(
                f"{name:18} {_mib(latent):>10} {_mib(cond_bytes):>9} {_mib(size):>11} "
                f"{wall * 1e3:>14.1f} {cpu * 1e3:>19.1f} "
                f"{statistics.median(times) * 1e3:>8.1f}/{p99 * 1e3:.1f}"
            )
    finally:
        recorder.close()
        client.close()
        svc.stop()


if __name__ == "__main__":
    main()
