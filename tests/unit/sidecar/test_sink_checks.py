"""The hook's check of the sidecar's answer: the signed statement must describe the stream the
hook sent (request id, steps, output, recipe), since the hook no longer hashes itself."""

from __future__ import annotations

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from samplerguard.commitment.state import SamplerState
from samplerguard.commitment.statement import Commitment, commit
from samplerguard.commitment.trajectory import TrajectoryBuilder
from samplerguard.errors import MalformedInputError
from samplerguard.hook.recorder import TrajectoryRequest
from samplerguard.hook.sidecar_sink import SidecarSink, _Session

RECIPE = {"pipeline": "t", "steps": 3}
OUT = "sha256:" + "1" * 64


def _commitment(request_id: str = "r-1", steps: int = 3, recipe: dict = RECIPE) -> Commitment:  # type: ignore[type-arg]
    b = TrajectoryBuilder(recipe=recipe)
    state = SamplerState(values={"i": 0})
    b.initial(torch.zeros(2), state, "sha256:" + "0" * 64)
    for i in range(steps):
        b.step(i, 10 - i, torch.full((2,), float(i)), state)
    b.final(torch.ones(2))
    record = b.finish(OUT)
    return commit(record, Ed25519PrivateKey.generate(), request_id=request_id, tenant="t")


def _session(sent: int = 3) -> _Session:
    req = TrajectoryRequest("r-1", "t", "t", "m", "sha256:" + "0" * 64, "euler", 1.0, 3)
    return _Session(request=req, recipe=dict(RECIPE), sent_steps=sent)


def test_the_statement_of_the_stream_sent_passes() -> None:
    SidecarSink._check(_session(), _commitment(), OUT)


@pytest.mark.parametrize(
    ("commitment", "sent", "output", "match"),
    [
        (lambda: _commitment(request_id="r-2"), 3, OUT, "request id 'r-2'"),
        (lambda: _commitment(steps=2), 3, OUT, "6 leaves for 3 steps sent"),
        (_commitment, 3, "sha256:" + "2" * 64, "another output digest"),
        (lambda: _commitment(recipe={"pipeline": "t", "steps": 30}), 3, OUT, "another recipe"),
    ],
)
def test_a_statement_of_another_stream_is_refused(
    commitment: object, sent: int, output: str, match: str
) -> None:
    with pytest.raises(MalformedInputError, match=match):
        SidecarSink._check(_session(sent), commitment(), output)  # type: ignore[operator]
