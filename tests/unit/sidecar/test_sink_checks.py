"""The hook's check of the sidecar's answer: the signed statement must describe the stream the
hook sent (request id, steps, output, recipe), since the hook no longer hashes itself."""

from __future__ import annotations

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from samplerguard.commitment.state import SamplerState
from samplerguard.commitment.statement import Commitment, commit
from samplerguard.errors import MalformedInputError
from samplerguard.hook.recorder import TrajectoryRequest
from samplerguard.hook.sidecar_sink import SidecarSink, _Session
from tests.support.dataplane import tiny_record

RECIPE = {"pipeline": "t", "steps": 3}
OUT = "sha256:" + "1" * 64


def _commitment(request_id: str = "r-1", steps: int = 3, recipe: dict = RECIPE) -> Commitment:  # type: ignore[type-arg]
    record = tiny_record(recipe, steps, OUT)
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


def test_steps_go_out_in_batches_by_count_and_by_bytes() -> None:
    """Small records go out 8 to a STEPS frame; large ones as soon as 8 MiB are held, so a
    frame stays far below the wire's 256 MiB cap whatever the latent size."""
    import socket
    import threading

    from samplerguard.hook.recorder import StepRecord
    from samplerguard.hook.wire import FRAME_STEP, FRAME_STEPS, FrameReader

    a, b = socket.socketpair()
    kinds: list[tuple[int, int]] = []

    def read_all() -> None:  # the peer reads as the sink sends (4 MiB records fill a socket)
        reader = FrameReader(b)
        for _ in range(5):
            frame = reader.read()
            n = len(frame.header["steps"]) if frame.kind == FRAME_STEPS else 1
            kinds.append((frame.kind, n))

    peer = threading.Thread(target=read_all, daemon=True)
    peer.start()
    sess = _session(sent=0)
    sess.sock = a
    a.settimeout(30)
    sink = SidecarSink("/nonexistent", batch=8)
    state = SamplerState(values={"i": 0})

    def send(n: int, numel: int, start: int) -> None:
        for i in range(start, start + n):
            sink.step(sess, StepRecord(i, 10, torch.zeros(numel), state, []))

    send(19, 4, 0)  # 2 frames of 8 now, 3 records held
    assert sess.sent_steps == 16 and len(sess.pending) == 3
    sink._flush_steps(sess)
    send(3, 1 << 20, 19)  # 4 MiB each: the second crosses 8 MiB
    assert sess.sent_steps == 21 and len(sess.pending) == 1
    sink._flush_steps(sess)  # a lone record goes out as a STEP frame
    peer.join(30)
    a.close()
    b.close()
    assert kinds == [
        (FRAME_STEPS, 8),
        (FRAME_STEPS, 8),
        (FRAME_STEPS, 3),
        (FRAME_STEPS, 2),
        (FRAME_STEP, 1),
    ]
