"""Which grid an SR case is sampled on, and whether the per-step projection may run there."""
import pytest

from diffens_auto.inference.case_preparation import sampling_spacing
from tiny_plans import tiny_plans

SR = {"target": 1, "degradation": {"type": "avgpool", "factor": [4, 4, 4]}}


@pytest.fixture
def plans():
    plans = tiny_plans()
    assert plans["inference"]["sr_spacing_tolerance"] == 1.0          # what the planner writes (measured)
    plans["inference"]["sr_spacing_tolerance"] = 0.1
    plans["target_spacing"] = [1.0, 1.0, 2.0]
    return plans


@pytest.mark.parametrize("spacing, expected", [
    ([1.0, 1.0, 2.0], ([1.0, 1.0, 2.0], True)),          # on the target spacing: nothing to resample
    ([1.04, 0.97, 2.1], ([1.04, 0.97, 2.1], True)),      # within 10 % on every axis: sampled on its own grid
    ([1.0, 1.0, 2.3], ([1.0, 1.0, 2.0], False)),         # 15 % off on one axis: resampled, no per-step projection
])
def test_an_sr_case_is_sampled_on_its_own_grid_within_the_tolerance(plans, spacing, expected):
    assert sampling_spacing(plans, {"spacing": spacing}, SR) == expected


def test_the_planned_tolerance_samples_cases_up_to_twice_the_target_spacing_on_their_own_grid(plans):
    plans["inference"]["sr_spacing_tolerance"] = 1.0
    assert sampling_spacing(plans, {"spacing": [1.2, 1.2, 2.4]}, SR) == ([1.2, 1.2, 2.4], True)
    assert sampling_spacing(plans, {"spacing": [0.5, 1.0, 4.0]}, SR) == ([0.5, 1.0, 4.0], True)
    assert sampling_spacing(plans, {"spacing": [1.0, 1.0, 4.1]}, SR) == ([1.0, 1.0, 2.0], False)


def test_a_zero_tolerance_samples_only_cases_on_the_target_spacing_with_per_step_projection(plans):
    plans["inference"]["sr_spacing_tolerance"] = 0.0
    assert sampling_spacing(plans, {"spacing": [1.0, 1.0, 2.0]}, SR) == ([1.0, 1.0, 2.0], True)
    assert sampling_spacing(plans, {"spacing": [1.01, 1.0, 2.0]}, SR) == ([1.0, 1.0, 2.0], False)


def test_plans_without_the_key_and_tasks_without_a_degradation_keep_the_target_spacing(plans):
    assert sampling_spacing(plans, {"spacing": [1.2, 1.0, 2.0]}, {"target": 1, "degradation": None}) == \
        ([1.0, 1.0, 2.0], True)
    del plans["inference"]["sr_spacing_tolerance"]
    assert sampling_spacing(plans, {"spacing": [1.3, 1.0, 2.0]}, SR) == ([1.0, 1.0, 2.0], True)
