"""The digest-only leaf log (what the sidecar builds) against the tensor builder (the hook) and
the reference canonical JSON; the state digest from a skeleton against SamplerState.digest."""

from __future__ import annotations

import hashlib

import pytest
import rfc8785
import torch
from hypothesis import given
from hypothesis import strategies as st

from samplerguard.commitment.digest import tensor_digest
from samplerguard.commitment.state import (
    SamplerState,
    capture_schedule,
    capture_state,
    state_digest,
)
from samplerguard.commitment.trajectory import (
    LEAF_STEP,
    LeafLog,
    TrajectoryBuilder,
    canonical,
    step_leaf,
)
from samplerguard.errors import MalformedInputError

D = "sha256:" + "ab" * 32
digests = st.text("0123456789abcdef", min_size=64, max_size=64).map(lambda h: "sha256:" + h)


@given(
    st.integers(0, 4095),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)
    | st.integers(0, 1000),
    digests,
    digests,
    st.lists(digests, max_size=3),
)
def test_step_leaf_is_the_canonical_json_of_the_leaf(
    index: int, t: float, latent: str, state: str, noise: list[str]
) -> None:
    value = int(t) if float(t).is_integer() else float(t)
    doc = {
        "type": LEAF_STEP,
        "index": index,
        "timestep": value,
        "latent": latent,
        "state": state,
        "noise": noise,
    }
    assert step_leaf(index, t, latent, state, noise) == canonical(doc)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((-1, 1, D, D), "step index"),
        ((True, 1, D, D), "step index"),
        ((4096, 1, D, D), "step index"),
        ((0, 1, "sha256:zz", D), "latent digest"),
        ((0, 1, D, 'x","index":9'), "state digest"),
        ((0, 1, D, D, ["md5:0"]), "noise digest"),
        ((0, float("nan"), D, D), "non-finite timestep"),
        ((0, float("inf"), D, D), "non-finite timestep"),
    ],
)
def test_step_leaf_refuses_what_would_break_the_json(args: tuple[object, ...], match: str) -> None:
    with pytest.raises(MalformedInputError, match=match):
        step_leaf(*args)  # type: ignore[arg-type]


def _builder_and_log() -> tuple[TrajectoryBuilder, LeafLog]:
    gen = torch.Generator().manual_seed(0)
    b = TrajectoryBuilder(recipe={"pipeline": "x", "guidance_scale": 7.5})
    cond = {"emb": torch.randn(2, 3, generator=gen)}
    b.set_conditioning(cond)
    z = torch.randn(1, 4, generator=gen)
    s0 = SamplerState(values={"i": 0, "h": [torch.ones(2)], "f": 0.25})
    b.initial(z, s0, D)
    log = LeafLog()
    log.begin(
        {"pipeline": "x", "guidance_scale": 7.5},
        {k: tensor_digest(v) for k, v in cond.items()},
        tensor_digest(z),
        s0.digest(),
        D,
    )
    for i in range(3):
        z = torch.randn(1, 4, generator=gen)
        s = SamplerState(values={"i": i + 1, "h": [z.clone()], "f": 0.25})
        n = [torch.randn(1, 4, generator=gen)]
        b.step(i, 10.5 - i, z, s, n)
        log.step(i, 10.5 - i, tensor_digest(z), s.digest(), [tensor_digest(n[0])])
    b.final(z)
    log.final(tensor_digest(z))
    return b, log


def test_the_leaf_log_and_the_builder_commit_the_same_root() -> None:
    b, log = _builder_and_log()
    record = b.finish(D)
    assert log.finish(D) == record.root
    assert log.leaves == record.leaves


def test_the_leaf_log_refuses_out_of_order_use() -> None:
    _, log = _builder_and_log()
    with pytest.raises(MalformedInputError, match="after the final"):
        log.step(3, 1, D, D)
    log.finish(D)
    with pytest.raises(MalformedInputError, match="already finished"):
        log.finish(D)
    fresh = LeafLog()
    with pytest.raises(MalformedInputError, match="before the initial"):
        fresh.step(0, 1, D, D)
    with pytest.raises(MalformedInputError, match="incomplete"):
        fresh.finish(D)
    fresh.begin({}, {}, D, D, D)
    with pytest.raises(MalformedInputError, match="out of order"):
        fresh.step(1, 1, D, D)
    with pytest.raises(MalformedInputError, match="already recorded"):
        fresh.begin({}, {}, D, D, D)
    with pytest.raises(MalformedInputError, match="schedule digest"):
        LeafLog().begin({}, {}, D, D, "nope")


@pytest.mark.parametrize(
    "name", ["DPMSolverMultistepScheduler", "HeunDiscreteScheduler", "EulerDiscreteScheduler"]
)
def test_state_digest_from_the_skeleton_equals_the_states_own(name: str) -> None:
    import diffusers

    sched = getattr(diffusers, name)()
    sched.set_timesteps(10)
    x = torch.randn(1, 2, 4, 4)
    for t in sched.timesteps[:3]:
        x = sched.step(x * 0.1, t, x).prev_sample
    state = capture_state(sched, capture_schedule(sched))
    parts = {p: tensor_digest(t) for p, t in state.tensors().items()}
    assert state_digest(state.skeleton(), parts) == state.digest()


@pytest.mark.parametrize(
    ("skeleton", "parts", "match"),
    [
        ({"h": {"tensor": "h"}}, {}, "missing or repeated"),
        ({"h": {"list": [{"tensor": "h"}, {"tensor": "h"}]}}, {"h": D}, "missing or repeated"),
        ({"i": 1}, {"h": D}, "does not name"),
        ({"f": {"float": "0xzz"}}, {}, "float"),
        ({"f": 1.5}, {}, "unsupported value"),
        ({"x": {"list": [[[[[[1]]]]]]}}, {}, "unsupported|deeply"),
        ({"x": {"list": [1] * 300}}, {}, "too long"),
        ({"x": {"tensor": "h", "extra": 1}}, {"h": D}, "unsupported value"),
        ([1], {}, "not a JSON object"),
    ],
)
def test_state_digest_refuses_malformed_skeletons(
    skeleton: object, parts: dict[str, str], match: str
) -> None:
    with pytest.raises(MalformedInputError, match=match):
        state_digest(skeleton, parts)  # type: ignore[arg-type]


_text_chars = st.characters(codec="utf-8", exclude_categories=["Cs"])
_names = st.one_of(
    st.text("abcdef_.0123", max_size=6),
    st.text(_text_chars, max_size=6),
)
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**60), max_value=2**60),
    st.integers(min_value=-100, max_value=1000),
    st.text('ab"\\\n\x01z', max_size=6),
    st.text(_text_chars, max_size=8),
    st.floats(allow_nan=False, allow_infinity=False).map(lambda f: {"float": f.hex()}),
)
_tensors = st.text("abc.0123", min_size=1, max_size=4).map(lambda p: {"tensor": p})
_nodes = st.recursive(
    st.one_of(_scalars, _tensors),
    lambda inner: st.lists(inner, max_size=4).map(lambda v: {"list": v}),
    max_leaves=8,
)


def _paths(node: object) -> list[str]:
    if isinstance(node, dict) and "tensor" in node:
        return [node["tensor"]]
    if isinstance(node, dict) and "list" in node:
        return [p for item in node["list"] for p in _paths(item)]
    return []


@given(st.dictionaries(_names, _nodes, max_size=5), st.booleans(), st.data())
def test_state_digest_one_pass_text_equals_the_reference_canonical_json(
    skeleton: dict[str, object], extra: bool, data: st.DataObject
) -> None:
    """The sidecar's one-pass state text against the general path (the document built node by
    node, encoded by the reference JCS): the same digest, or the same refusal. Every tensor the
    skeleton names gets a digest (a repeated name is refused), and ``extra`` adds one it does
    not name."""
    from samplerguard.commitment import state as state_module

    named = [p for v in skeleton.values() for p in _paths(v)]
    parts = {p: data.draw(digests) for p in named}
    if extra:
        parts["unnamed"] = D
    used: set[str] = set()
    try:
        doc = {k: state_module._digest_node(v, parts, used, 0) for k, v in skeleton.items()}
        reference = (
            None
            if len(used) != len(parts)
            else "sha256:" + hashlib.sha256(rfc8785.dumps(doc)).hexdigest()
        )
    except (MalformedInputError, rfc8785.IntegerDomainError):
        reference = None
    if reference is None:
        with pytest.raises((MalformedInputError, rfc8785.IntegerDomainError)):
            state_digest(skeleton, parts)
    else:
        assert state_digest(skeleton, parts) == reference


def test_state_wire_is_the_skeleton_and_the_tensors_in_one_walk() -> None:
    t1, t2, t3 = torch.zeros(2), torch.ones(3), torch.full((1,), 2.0)
    state = SamplerState(
        values={"h": [t1, None, [t2, 1.5]], "x": t3, "f": 0.25, "n": 4, "s": "euler", "z": None}
    )
    skeleton, tensors = state.wire("state/")
    assert skeleton == state.skeleton()
    assert [(name, t) for name, t in tensors] == [
        (f"state/{p}", t) for p, t in state.tensors().items()
    ]
