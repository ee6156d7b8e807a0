"""The sidecar sink takes the pipeline's host tensors without copying them, and makes sure that
is safe: a tensor the pipeline changed in place before it went out fails its trajectory (the
sidecar commits nothing for it), and the sink copies from then on."""

from __future__ import annotations

import diffusers
import pytest
import torch

from samplerguard.commitment.state import host_copy
from samplerguard.hook.recorder import Recorder, RecordingError, TrajectoryRequest
from samplerguard.hook.sidecar_sink import SidecarSink
from samplerguard.sidecar.ingest import IngestServer
from tests.unit.sidecar import test_keepalive

ZERO = "sha256:" + "0" * 64


#: a real ingest server on a Unix socket, as the keep-alive tests use it
server = test_keepalive.server


@pytest.fixture
def latent_copies(monkeypatch: pytest.MonkeyPatch) -> list[torch.Size]:
    """The shapes of the host copies the recorder makes."""
    shapes: list[torch.Size] = []

    def counted(t: torch.Tensor) -> torch.Tensor:
        shapes.append(t.shape)
        return host_copy(t)

    monkeypatch.setattr("samplerguard.hook.recorder.host_copy", counted)
    return shapes


def _generate(recorder: Recorder, request_id: str, *, change_step: int | None = None) -> object:
    """Four Euler steps through the three-line API; ``change_step``: the loop adds to that
    step's latent in place right after recording it (before the worker sends anything: the
    steps go to the worker at the end)."""
    sched = diffusers.EulerDiscreteScheduler()
    sched.set_timesteps(4)
    req = TrajectoryRequest(request_id, "t", "digits", "m", ZERO, "euler", 1.0, 4)
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    with recorder.trajectory(req) as tr:
        tr.begin(sched, x, {"labels": torch.tensor([3])})
        for i, t in enumerate(sched.timesteps):
            model_input = sched.scale_model_input(x, t)
            x = sched.step(model_input * 0.1, t, x).prev_sample
            tr.step(i, t, x, sched)
            if i == change_step:
                x.add_(1.0)
        tr.end(x, b"output")
    return tr.commitment


def test_steps_are_recorded_from_the_pipelines_own_tensors(
    server: IngestServer, latent_copies: list[torch.Size]
) -> None:
    sink = SidecarSink(server.path)
    recorder = Recorder(sink)
    try:
        assert _generate(recorder, "borrowed-1") is not None
    finally:
        recorder.close()
    # z_N and the final latent are copied (and the class label); no step's latent is
    assert latent_copies.count(torch.Size([1, 2, 4, 4])) == 2
    assert server.committed == 1


def test_a_tensor_changed_in_place_before_it_was_sent_fails_the_trajectory(
    server: IngestServer,
) -> None:
    sink = SidecarSink(server.path)
    recorder = Recorder(sink)
    try:
        with pytest.raises(RecordingError, match="changed 1 recorded tensors in place"):
            _generate(recorder, "changed-1", change_step=1)
        assert server.committed == 0  # FINISH never went out: nothing was committed
        assert sink.borrows is False
        # from now on the sink gets copies: the same loop commits
        assert _generate(recorder, "changed-2", change_step=1) is not None
        assert server.committed == 1
    finally:
        recorder.close()


def test_a_sink_that_does_not_borrow_gets_copies_from_the_start(
    server: IngestServer, latent_copies: list[torch.Size]
) -> None:
    recorder = Recorder(SidecarSink(server.path, borrow=False))
    try:
        assert _generate(recorder, "copied-1", change_step=1) is not None
    finally:
        recorder.close()
    assert latent_copies.count(torch.Size([1, 2, 4, 4])) == 2 + 4


def test_a_sampler_that_writes_into_its_state_is_recorded_from_copies(
    server: IngestServer,
) -> None:
    """PNDM adds into its running model output in place; the declared sampler's dry run sees
    that, so the recorder copies its state even for a sink that borrows (nothing fails)."""
    from samplerguard.commitment.plan import sampler_plan
    from samplerguard.hook.recorder import scheduler_config

    for cls, writes in (("PNDMScheduler", True), ("DPMSolverMultistepScheduler", False)):
        recipe = {
            "sampler": cls,
            "scheduler_class": cls,
            "scheduler_config": scheduler_config(getattr(diffusers, cls)()),
            "steps": 6,
        }
        assert sampler_plan(recipe, (1, 2, 4, 4)).writes_in_place is writes
    sched = diffusers.PNDMScheduler()
    sched.set_timesteps(6)
    sink = SidecarSink(server.path)
    recorder = Recorder(sink)
    req = TrajectoryRequest("pndm", "t", "digits", "m", ZERO, "PNDMScheduler", 1.0, 6)
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    try:
        with recorder.trajectory(req) as tr:
            tr.begin(sched, x, {"labels": torch.tensor([3])})
            for i, t in enumerate(sched.timesteps):
                x = sched.step(x * 0.1, t, x).prev_sample
                tr.step(i, t, x, sched)
            tr.end(x, b"output")
    finally:
        recorder.close()
    assert tr.commitment is not None and sink.borrows is True


def test_a_generation_under_inference_mode_is_recorded_from_copies(
    server: IngestServer,
) -> None:
    """A serving app that runs its pipeline under ``torch.inference_mode``: its tensors keep no
    version counter, so nothing is borrowed, and the sampler's dry run (made in that context,
    the first time its recipe is seen) still reads the counters of its own tensors."""
    from samplerguard.commitment import plan

    plan._CACHE.clear()  # the dry run happens inside the inference-mode call below
    sink = SidecarSink(server.path)
    recorder = Recorder(sink)
    try:
        with torch.inference_mode():
            commitment = _generate(recorder, "inference-1")
    finally:
        recorder.close()
    assert server.committed == 1 and sink.borrows is True
    # the dry run read real version counters: Euler is known not to write in place
    recipe = commitment.recipe  # type: ignore[attr-defined]
    assert plan.sampler_plan(recipe, (1, 2, 4, 4)).writes_in_place is False
