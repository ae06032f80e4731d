"""Adaptation settings: the plans' values, the flags over them, the refusals, the horizon and Reptile's alpha."""
import pytest
import torch

from diffens_auto.adaptation import AdaptationSettings, AdaptationSettingsError
from diffens_auto.adaptation.slices import draw_slices
from diffens_auto.planning.task_sections import KSPACE_ADAPTATION


def _resolve(method, overrides=None, section=KSPACE_ADAPTATION):
    return AdaptationSettings.resolve(method, section, overrides, dc_gamma=5.0, dc_steps=5, task="recon")


def test_each_variant_takes_the_shared_values_then_its_own_then_the_flags():
    base = _resolve("d3ip")
    assert (base.slices, base.steps, base.lr, base.lora_rank, base.horizon) == (6, 10, 1e-4, 4, 40)
    assert (base.dc_gamma, base.dc_steps) == (5.0, 5)
    mbir = _resolve("d3ip_mbir", {"admm_steps": 3})
    assert (mbir.steps, mbir.lr, mbir.tv_rho, mbir.tv_lambda, mbir.admm_steps) == (10, 1e-4, 0.3, 0.03, 3)
    meta = _resolve("d3ip_meta", {"meta_alpha": [0.9, 0.3], "lr": 2e-5})
    assert meta.meta_alpha == (0.9, 0.3) and meta.lr == 2e-5
    assert _resolve("ddip").slices == 1       # one slice, its own problem
    assert _resolve("none").active is False
    record = meta.as_dict()
    assert record["method"] == "d3ip_meta" and record["meta_alpha"] == [0.9, 0.3]


@pytest.mark.parametrize("method, overrides, message", [
    ("d3ip", {"tv_rho": 0.1}, "--tv_rho: not used by --adapt d3ip"),
    ("ddip", {"slices": 3}, "--adapt_slices: not used by --adapt ddip"),
    ("none", {"steps": 3}, "--adapt_steps: not used by --adapt none"),
    ("d3ip", {"slices": 0}, "--adapt_slices 0: give at least 1"),
    ("d3ip", {"lr": -1.0}, "--adapt_lr -1.0: give a learning rate > 0"),
    ("d3ip_meta", {"meta_alpha": [1.5, 0.5]}, "--meta_alpha"),
    ("sgd", {}, "--adapt sgd: use one of none, d3ip"),
])
def test_bad_flags_are_refused_with_the_flag_and_the_fix(method, overrides, message):
    with pytest.raises(AdaptationSettingsError, match=message):
        _resolve(method, overrides)


def test_plans_without_an_adaptation_section_say_how_to_get_one():
    with pytest.raises(AdaptationSettingsError, match="no adaptation section.*diffens_plan_and_preprocess"):
        _resolve("d3ip", section=None)
    assert _resolve("none", section=None).method == "none"


def test_the_horizon_and_the_alpha_schedule_are_in_training_steps():
    settings = _resolve("d3ip_meta")
    assert [t for t in (39, 40, 500, 960, 961) if settings.in_horizon(t, 1000)] == [40, 500, 960]
    assert [settings.meta_alpha_at(i, 5) for i in range(5)] == pytest.approx([1.0, 0.875, 0.75, 0.625, 0.5])


def test_slice_draws_are_distinct_contiguous_or_whole_blocks_inside_the_region():
    generator = torch.Generator().manual_seed(3)
    picked = draw_slices(2, 14, 6, generator)
    assert len(set(picked.tolist())) == 6 and picked.min() >= 2 and picked.max() < 14
    assert picked.tolist() == sorted(picked.tolist())
    slab = draw_slices(2, 14, 4, generator, contiguous=True)
    assert slab.tolist() == list(range(int(slab[0]), int(slab[0]) + 4))
    blocks = draw_slices(0, 16, 2, generator, block=4)
    assert len(blocks) == 8 and all(int(b) % 4 == i % 4 for i, b in enumerate(blocks))
    assert draw_slices(0, 3, 6, generator).tolist() == [0, 1, 2]        # K above the slices: all of them
    again = [draw_slices(0, 40, 6, torch.Generator().manual_seed(9)).tolist() for _ in range(2)]
    assert again[0] == again[1]
    with pytest.raises(ValueError, match="whole blocks"):
        draw_slices(0, 10, 2, generator, block=4)
