"""The checkpoint format: a file of a newer format is refused with the fix, plans with a mistyped key too."""
import pytest
from tiny_plans import tiny_plans

from diffens_auto.model_folder import checkpoints as ckpt
from diffens_auto.planning.plans_schema import PlansError, validate_plans


def test_a_checkpoint_of_a_newer_format_is_refused_with_the_fix(tmp_path):
    path = ckpt.save_checkpoint({"format_version": ckpt.FORMAT_VERSION + 1, "epoch": 1}, tmp_path / ckpt.FINAL)
    with pytest.raises(ckpt.CheckpointError, match=rf"format {ckpt.FORMAT_VERSION + 1}.*Fix: update diffens_auto"):
        ckpt.load_checkpoint(path)
    ckpt.save_checkpoint({"format_version": ckpt.FORMAT_VERSION, "epoch": 1}, path)
    assert ckpt.load_checkpoint(path)["epoch"] == 1


def test_plans_whose_network_has_an_unknown_key_are_refused_by_name():
    plans = tiny_plans()
    validate_plans(plans)
    plans["configurations"]["2d_axial"]["network"]["num_res_block"] = 2
    with pytest.raises(PlansError, match="configuration '2d_axial' network has the unknown key 'num_res_block'"):
        validate_plans(plans, source="diffensPlans_tiny.json")
