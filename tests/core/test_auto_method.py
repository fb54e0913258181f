"""Method ``auto`` (issue 16): the calibration run is the uncached run, its choice is handed on and used."""
from __future__ import annotations

import pytest
import torch

from freqca_core import METHODS, CacheConfig, FixedSchedule
from freqca_core.calibration import Choice
from freqca_core.methods.auto import AllFull, RecordingMethod, budget_of
from freqca_core.methods.frdiff import GateSchedule
from freqca_lab.runner import generate
import runs

pytestmark = pytest.mark.usefixtures("one_torch_thread")
STEPS = 16


@pytest.fixture(scope="module")
def tiny():
    return runs.tiny_testbed()


def run(tiny, config: CacheConfig | None, steps: int = STEPS):
    model, table = tiny
    controller = config.new_controller(steps) if config is not None else None
    return generate(model, [1, 7], [5, 6], steps, 3.0, controller, table=table, size=(8, 8))


def test_auto_is_registered():
    assert "auto" in METHODS and CacheConfig().method != "auto"  # not the default


def test_budget_is_the_fixed_schedules_full_step_count():
    config = CacheConfig("auto", interval=4, warmup=2, final_full=1)
    assert budget_of(config, 50) == len(FixedSchedule(2, 4, 1).full_steps(50))
    short = CacheConfig("auto", interval=6, fit_short_runs=True)
    assert budget_of(short, 8) == len(FixedSchedule(3, 6, fit_short_runs=True).for_run(8).full_steps(8))


def test_calibration_run_is_the_uncached_run_and_hands_on_a_choice(tiny):
    chosen: list[Choice] = []
    config = CacheConfig("auto", interval=4, on_choice=chosen.append)
    method, schedule = config.new_controller(STEPS).method, config.new_controller(STEPS).schedule
    assert isinstance(method, RecordingMethod) and isinstance(schedule, AllFull)
    calibration, plain = run(tiny, config), run(tiny, None)
    assert torch.equal(calibration.images, plain.images)
    assert calibration.stats.full_steps == STEPS and calibration.stats.cached_steps == 0
    assert len(chosen) == 1
    choice = chosen[0]
    assert choice.n_steps == STEPS and len(choice.full_steps) == budget_of(config, STEPS)
    assert choice.score == min(choice.scores.values())


def test_a_run_with_a_choice_uses_its_method_and_full_steps(tiny):
    chosen: list[Choice] = []
    run(tiny, CacheConfig("auto", interval=4, on_choice=chosen.append))
    choice = chosen[0]
    config = CacheConfig("auto", interval=4, choice=choice, on_choice=chosen.append)
    controller = config.new_controller(STEPS)
    assert controller.method.name == choice.method and isinstance(controller.schedule, GateSchedule)
    result = run(tiny, config)
    timeline = result.stats.timeline()
    assert [i for i, c in enumerate(timeline) if c == "F"] == list(choice.full_steps)
    assert len(chosen) == 1  # nothing recalibrated
    # a choice for another step count or number of full steps calibrates again
    assert isinstance(config.new_controller(STEPS + 2).method, RecordingMethod)
    faster = CacheConfig("auto", interval=6, choice=choice)
    assert budget_of(faster, STEPS) != len(choice.full_steps)
    assert isinstance(faster.new_controller(STEPS).method, RecordingMethod)


def test_an_interrupted_calibration_chooses_nothing():
    chosen: list[Choice] = []
    method = RecordingMethod(10, 4, CacheConfig(), chosen.append)
    method.start_run(None)
    assert method.end_run() == {} and chosen == [] and method.choice is None


def test_a_failing_store_never_fails_the_run(tiny, caplog):
    def broken(choice):
        raise OSError("disk full")
    result = run(tiny, CacheConfig("auto", interval=4, on_choice=broken))
    assert result.stats.full_steps == STEPS and "calibration failed" in caplog.text
