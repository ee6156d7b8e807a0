"""A sink that commits in-process: signs with a local Ed25519 key and keeps records to open.

Used by tests, benchmarks and offline tools. In a pod the hook streams to the sidecar instead.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from samplerguard.commitment.opening import Opening, open_step
from samplerguard.commitment.statement import Commitment, commit
from samplerguard.commitment.trajectory import TrajectoryBuilder, TrajectoryRecord
from samplerguard.commitment.transcript import Transcript, build_transcript
from samplerguard.errors import MalformedInputError
from samplerguard.hook.recorder import Begin, StepRecord, TrajectoryRequest

__all__ = ["LocalSink"]


@dataclass
class _Local:
    request: TrajectoryRequest
    builder: TrajectoryBuilder


class LocalSink:
    """Signs commitments with ``key`` and keeps the last ``keep`` records in memory."""

    def __init__(self, key: Ed25519PrivateKey | None = None, *, keep: int = 64) -> None:
        self.key = key or Ed25519PrivateKey.generate()
        self.keep = keep
        self._records: OrderedDict[str, TrajectoryRecord] = OrderedDict()
        self._lock = threading.Lock()
        self.aborted: dict[str, str] = {}
        self._params: dict[str, dict[str, Any] | None] = {}

    def start(self, request: TrajectoryRequest, begin: Begin) -> _Local:
        builder = TrajectoryBuilder(recipe=begin.recipe)
        builder.set_conditioning(begin.conditioning)
        builder.initial(begin.latent, begin.state, begin.schedule)
        return _Local(request, builder)

    def step(self, handle: _Local, step: StepRecord) -> None:
        # the recorder copied the step's tensors: this sink keeps them for its openings (a copy
        # on this thread instead, of tensors borrowed from the loop, cost the worker four
        # times what it saved the loop)
        handle.builder.step(step.index, step.timestep, step.latent, step.state, step.noise)

    def finish(
        self, handle: _Local, final_latent: torch.Tensor, output_digest: str
    ) -> tuple[Commitment, TrajectoryRecord]:
        handle.builder.final(final_latent)
        record = handle.builder.finish(output_digest)
        request = handle.request
        commitment = commit(record, self.key, request_id=request.request_id, tenant=request.tenant)
        with self._lock:
            self._records[request.request_id] = record
            self._params[request.request_id] = (
                dict(request.params) if request.params is not None else None
            )
            while len(self._records) > self.keep:
                old, _ = self._records.popitem(last=False)
                self._params.pop(old, None)
        return commitment, record

    def abort(self, handle: _Local | None, reason: str) -> None:
        if handle is not None:
            self.aborted[handle.request.request_id] = reason

    def record(self, request_id: str) -> TrajectoryRecord:
        with self._lock:
            try:
                return self._records[request_id]
            except KeyError:
                raise MalformedInputError(f"no trajectory {request_id!r} is kept") from None

    def opening(self, request_id: str, step: int) -> Opening:
        return open_step(self.record(request_id), request_id, step)

    def transcript(self, request_id: str) -> Transcript:
        record = self.record(request_id)
        with self._lock:
            params = self._params.get(request_id)
        assert record.final is not None  # a finished record has its final latent
        return build_transcript(record, request_id, record.final, params)
