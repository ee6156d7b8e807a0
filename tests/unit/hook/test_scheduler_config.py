"""The recipe's scheduler config is always the scheduler's config now, whatever was kept."""

from __future__ import annotations

from typing import Any

from samplerguard.demo.providers import make_scheduler
from samplerguard.hook.recorder import scheduler_config


class _Sched:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config


def test_the_same_config_gives_equal_json_and_a_copy_each_time() -> None:
    sched = make_scheduler("dpmpp_2m")
    first, second = scheduler_config(sched), scheduler_config(sched)
    assert first == second and first is not second
    first["solver_order"] = 99  # the caller's copy: the next call is unaffected
    assert scheduler_config(sched)["solver_order"] == 2
    assert not any(k.startswith("_") for k in first)


def test_a_config_changed_in_place_or_for_a_look_alike_value_is_converted_anew() -> None:
    config: dict[str, Any] = {"steps_offset": 1, "beta_end": 0.012, "clip": False}
    sched = _Sched(config)
    assert scheduler_config(sched) == {"steps_offset": 1, "beta_end": 0.012, "clip": False}
    config["steps_offset"] = 0  # the same mapping, changed in place
    assert scheduler_config(sched)["steps_offset"] == 0
    config["steps_offset"] = True  # equal to 1 in Python, but not the same JSON
    got = scheduler_config(sched)["steps_offset"]
    assert got is True
    config["steps_offset"] = 1.0
    assert type(scheduler_config(sched)["steps_offset"]) is float
    config["beta_end"] = -0.0
    assert str(scheduler_config(sched)["beta_end"]) == "-0.0"
    config["beta_end"] = 0.0
    assert str(scheduler_config(sched)["beta_end"]) == "0.0"
    config["beta_end"] = float("inf")
    assert scheduler_config(sched)["beta_end"] == {"$float": "inf"}
