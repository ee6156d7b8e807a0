"""Shared pieces of the data-plane benchmarks: a sidecar process and raw trajectory streams."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import torch
from _common import scratch_dir

from samplerguard.commitment.state import SamplerState
from samplerguard.commitment.trajectory import TrajectoryBuilder
from samplerguard.demo.services import ServiceProcess, make_token, start_sidecar
from samplerguard.hook.wire import (
    FRAME_FINAL,
    FRAME_FINISH,
    FRAME_REPLY,
    FRAME_START,
    FRAME_STEP,
    encode_frame,
    encode_steps,
    read_frame,
    tune_socket,
)

LATENT_SHAPE = (1, 4, 64, 64)  # float32: 64 KiB, an SD-1.5 latent at 512x512
RECIPE: dict[str, Any] = {"pipeline": "bench", "sampler": "euler", "steps": 50}


def sidecar(root: Path | None = None, **kw: Any) -> tuple[ServiceProcess, Path]:
    root = root or scratch_dir("sg-bench-")
    token = make_token(root / "token")
    return start_sidecar(root / "run", token_file=token, **kw), token


class RawStream:
    """Pre-encoded frames of one synthetic trajectory (the same tensors for every request id),
    so the client spends its time sending, not hashing; the sidecar does all the work."""

    def __init__(self, steps: int, shape: tuple[int, ...] = LATENT_SHAPE, batch: int = 1) -> None:
        """``batch`` > 1 sends the steps as ``STEPS`` frames of that many records (what the
        hook's SidecarSink sends), 1 as one ``STEP`` frame each."""
        gen = torch.Generator().manual_seed(0)
        self.latents = [torch.randn(shape, generator=gen) for _ in range(steps + 2)]
        self.steps = steps
        state = SamplerState(values={"_step_index": 0})
        b = TrajectoryBuilder(recipe=dict(RECIPE))
        b.set_conditioning({})
        b.initial(self.latents[0], state, "sha256:" + "0" * 64)
        self.step_frames = []
        records: list[tuple[dict[str, Any], list[tuple[str, torch.Tensor]]]] = []
        for i in range(steps):
            st = SamplerState(values={"_step_index": i + 1})
            b.step(i, 999 - i, self.latents[i + 1], st)
            header = {"index": i, "timestep": 999 - i, "state": st.skeleton()}
            records.append((header, [("latent", self.latents[i + 1])]))
        for k in range(0, steps, batch):
            chunk = records[k : k + batch]
            parts = encode_steps(chunk) if batch > 1 else encode_frame(FRAME_STEP, *chunk[0])
            self.step_frames.append(b"".join(bytes(p) for p in parts))
        b.final(self.latents[-1])
        self.root = b.finish("sha256:" + "1" * 64).root.hex()
        self.final = b"".join(
            bytes(p) for p in encode_frame(FRAME_FINAL, {}, [("latent", self.latents[-1])])
        )
        self.finish = b"".join(
            bytes(p)
            for p in encode_frame(FRAME_FINISH, {"output": "sha256:" + "1" * 64, "root": self.root})
        )

    def start_frame(self, request_id: str) -> bytes:
        header: dict[str, Any] = {
            "request": {"requestId": request_id, "tenant": "bench", "rngMode": "framework"},
            "recipe": RECIPE,
            "schedule": "sha256:" + "0" * 64,
            "state": {"_step_index": 0},
            "conditioning": [],
            "solverCode": None,
        }
        return b"".join(
            bytes(p) for p in encode_frame(FRAME_START, header, [("latent", self.latents[0])])
        )

    def send(self, socket_path: str, request_id: str) -> dict[str, Any]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            tune_socket(s)  # the socket buffers the hook's SidecarSink asks for
            s.settimeout(60)
            s.connect(socket_path)
            s.sendall(self.start_frame(request_id))
            reply = read_frame(s, max_body=0)
            assert reply.kind == FRAME_REPLY and reply.header.get("ok"), reply.header
            for frame in self.step_frames:
                s.sendall(frame)
            s.sendall(self.final)
            s.sendall(self.finish)
            done = read_frame(s, max_body=0)
            assert done.header.get("ok"), done.header
            return done.header
