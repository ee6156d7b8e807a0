"""diffusers integration: record a pipeline call through its own callback contract.

``instrument(pipe, recorder)`` returns a callable with the pipeline's signature plus a
``trajectory_request`` keyword. It observes three things, and changes none of them:

* the initial latents, by wrapping the pipeline's ``prepare_latents`` for this call only;
* every step, through ``callback_on_step_end`` (the latents and the conditioning tensors are
  declared in ``callback_on_step_end_tensor_inputs`` and returned unchanged; a user callback is
  chained after ours);
* the scheduler state, read from ``pipe.scheduler`` inside the callback, and the output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from samplerguard.commitment.digest import output_bytes
from samplerguard.commitment.statement import Commitment
from samplerguard.hook.recorder import Recorder, Trajectory, TrajectoryRequest

__all__ = ["InstrumentedPipeline", "RecordedOutput", "instrument", "output_bytes"]

#: Which callback tensors are the conditioning, per pipeline family.
CONDITIONING_INPUTS: dict[str, tuple[str, ...]] = {
    "DigitsPipeline": ("class_labels",),
    "StableDiffusionPipeline": ("prompt_embeds",),
}


@dataclass(frozen=True)
class RecordedOutput:
    output: Any
    commitment: Commitment
    trajectory: Trajectory


#: The call arguments that are the consumer's request, per pipeline family, in call order.
_REQUEST_INPUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "digits": (("class_labels", "classLabels"),),
    "stable-diffusion": (
        ("prompt", "prompt"),
        ("height", "height"),
        ("width", "width"),
        ("negative_prompt", "negativePrompt"),
    ),
}


def request_params(
    request: TrajectoryRequest, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    """The consumer's request parameters, read from the pipeline call: the declared steps and
    guidance, and the family's request inputs (positional in call order, or by keyword)."""
    params: dict[str, Any] = {
        "requestId": request.request_id,
        "tenant": request.tenant,
        "steps": request.steps,
        "guidanceScale": request.guidance_scale,
    }
    for i, (arg, key) in enumerate(_REQUEST_INPUTS.get(request.pipeline, ())):
        value = kwargs.get(arg, args[i] if i < len(args) else None)
        if value is None:
            continue
        if isinstance(value, torch.Tensor):
            value = value.reshape(-1).tolist()
        if isinstance(value, tuple):
            value = list(value)
        params[key] = value
    return params


class InstrumentedPipeline:
    def __init__(self, pipe: Any, recorder: Recorder) -> None:
        self.pipe = pipe
        self.recorder = recorder
        self.conditioning = CONDITIONING_INPUTS.get(type(pipe).__name__, ())

    def __call__(
        self, *args: Any, trajectory_request: TrajectoryRequest, **kwargs: Any
    ) -> RecordedOutput:
        pipe = self.pipe
        if trajectory_request.params is None:
            trajectory_request = dataclasses.replace(
                trajectory_request, params=request_params(trajectory_request, args, kwargs)
            )
        user_cb: Callable[..., dict[str, Any]] | None = kwargs.pop("callback_on_step_end", None)
        user_inputs = list(kwargs.pop("callback_on_step_end_tensor_inputs", ["latents"]))
        inputs = list(dict.fromkeys(["latents", *self.conditioning, *user_inputs]))
        last: dict[str, torch.Tensor] = {}
        original_prepare = pipe.prepare_latents

        with self.recorder.trajectory(trajectory_request) as tr:

            def prepare_latents(*a: Any, **kw: Any) -> Any:
                latents = original_prepare(*a, **kw)
                tr.begin(pipe.scheduler, latents)
                return latents

            def on_step_end(
                p: Any, i: int, t: Any, callback_kwargs: dict[str, Any]
            ) -> dict[str, Any]:
                if i == 0:
                    tr.set_conditioning(
                        {k: callback_kwargs[k] for k in self.conditioning if k in callback_kwargs}
                    )
                latents = callback_kwargs["latents"]
                tr.step(i, t, latents, p.scheduler)
                last["latents"] = latents
                if user_cb is not None:
                    seen = {k: callback_kwargs[k] for k in user_inputs if k in callback_kwargs}
                    callback_kwargs.update(user_cb(p, i, t, seen))
                return callback_kwargs

            pipe.prepare_latents = prepare_latents
            try:
                out = pipe(
                    *args,
                    callback_on_step_end=on_step_end,
                    callback_on_step_end_tensor_inputs=inputs,
                    **kwargs,
                )
            finally:
                del pipe.prepare_latents  # drop the instance attribute: the method shows again
            tr.end(last["latents"], output_bytes(out))
        assert tr.commitment is not None
        return RecordedOutput(output=out, commitment=tr.commitment, trajectory=tr)


def instrument(pipe: Any, recorder: Recorder) -> InstrumentedPipeline:
    """Wrap ``pipe`` so each call is recorded. The pipeline object itself is not modified
    outside a call."""
    if not hasattr(pipe, "prepare_latents"):
        raise TypeError(f"{type(pipe).__name__} has no prepare_latents; use the plain-loop API")
    return InstrumentedPipeline(pipe, recorder)
