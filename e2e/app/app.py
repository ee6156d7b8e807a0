"""The kubelet e2e suite's diffusion app: an unmodified loop of pipeline calls on the bundled
digits model (DPM++ 2M, 20 steps, CFG 3), one generation every INTERVAL seconds. It imports no
hook: the injected sitecustomize instruments it. CHEAT=substitute perturbs the UNet's weights in
place after the first generation, a substituted model that no image signature can see.
TICKETS=DIR serves generation n under the gateway's request ticket DIR/gw-<n>.json (as a server
passes on the ticket the gateway forwarded with a request), and without one when it has none."""

import contextlib
import os
import sys
import time
from pathlib import Path

import torch

from samplerguard.models.digits import DigitsPipeline, load_unet, make_scheduler

interval = float(os.environ.get("INTERVAL", "10"))
cheat = os.environ.get("CHEAT", "")
tickets = os.environ.get("TICKETS", "")
print(f"app: hook installed: {'samplerguard.hook.auto' in sys.modules}", flush=True)
pipe = DigitsPipeline(load_unet().eval(), make_scheduler("dpmpp_2m"))
n = 0
while True:
    n += 1
    if cheat == "substitute" and n == 2:
        with torch.no_grad():
            for p in pipe.unet.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        print("app: weights perturbed in place", flush=True)
    started = time.monotonic()
    ticket = Path(tickets, f"gw-{n}.json") if tickets else None
    try:
        with contextlib.ExitStack() as stack:
            if ticket is not None and ticket.exists():
                from samplerguard.hook import ticketed

                stack.enter_context(ticketed(ticket.read_text()))
                print(f"app: generation {n} under the gateway's ticket {ticket.name}", flush=True)
            out = pipe(
                [n % 10, (n + 3) % 10],
                num_inference_steps=20,
                guidance_scale=3.0,
                generator=torch.Generator().manual_seed(n),
            )
        committed = getattr(out, "samplerguard_commitment", None) is not None
        print(
            f"app: generation {n} in {time.monotonic() - started:.2f}s, committed: {committed}",
            flush=True,
        )
    except Exception as exc:  # a fail-closed hook refuses: show it and keep going
        print(f"app: generation {n} failed: {exc!r}", flush=True)
    time.sleep(interval)
