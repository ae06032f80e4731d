"""Experts planned with the condition's non-zero mask channel: trained, fused, validated and predicted end to end."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from diffens_auto import paths
from diffens_auto.imageio import read_image, write_image
from diffens_auto.inference.predictor import DiffensPredictor
from diffens_auto.operators import degrade_image
from diffens_auto.planning.plans_file import find_plans_file

MODELS = (("sr", "2d_axial"), ("sr", "2d_sagittal"), ("sr", "3d_ensembler"), ("mt", "2d_axial"))


def _plan_mask_channels(plans_file):
    """Edit the plans as a user would: a mask channel for every expert of every task (mt has one planned)."""
    plans = json.loads(plans_file.read_text())
    for config in plans["configurations"].values():
        if config["kind"] == "expert":
            config["network"]["mask_channels"] = 1
            for task, mask in config["mask_channels_per_task"].items():
                if not mask:
                    config["mask_channels_per_task"][task] = 1
                    config["in_channels_per_task"][task] += 1
    plans_file.write_text(json.dumps(plans, indent=2))


@pytest.fixture(scope="module")
def masked_demo(tmp_path_factory):
    """Dataset900_DemoBrain (4 cases of 32^3, tiny plans with mask channels) and briefly trained fold-0 models."""
    from diffens_auto.demo.dataset import make_demo_dataset
    from diffens_auto.workflows.plan_and_preprocess import plan_and_preprocess
    from diffens_auto.workflows.train import train

    root = tmp_path_factory.mktemp("masked_demo")
    folders = {variable: root / variable
               for variable in (paths.RAW_VARIABLE, paths.PREPROCESSED_VARIABLE, paths.RESULTS_VARIABLE)}
    with pytest.MonkeyPatch.context() as monkeypatch:
        for variable, folder in folders.items():
            folder.mkdir()
            monkeypatch.setenv(variable, str(folder))
        make_demo_dataset(num_cases=4, shape=(32, 32, 32), spacing=(2, 2, 2))
        plan_and_preprocess(900, preset="tiny", num_processes=1)
        _plan_mask_channels(find_plans_file(folders[paths.PREPROCESSED_VARIABLE] / "Dataset900_DemoBrain",
                                            "diffensPlans_tiny"))
        for task, configuration in MODELS:
            # the ensembler also validates: the timestep diagnostic and the validation predictions take the mask
            train(900, task, configuration, 0, num_epochs=1, iterations_per_epoch=2, echo=False,
                  validate=configuration == "3d_ensembler", val_steps=2)
    return SimpleNamespace(folders=folders, raw=folders[paths.RAW_VARIABLE] / "Dataset900_DemoBrain")


@pytest.fixture
def masked_folders(masked_demo, monkeypatch):
    for variable, folder in masked_demo.folders.items():
        monkeypatch.setenv(variable, str(folder))
    return masked_demo


def _record_expert_masks(predictor):
    """Forward hooks that keep the last input channel (the mask) of every expert call."""
    seen = []
    for runner in predictor.model.runners.values():
        runner.expert.register_forward_pre_hook(lambda _module, args: seen.append(args[0][:, -1].clone()))
    return seen


def test_validation_of_an_ensembler_of_masked_experts_writes_the_diagnostic(masked_folders):
    fold = masked_folders.folders[paths.RESULTS_VARIABLE] / "Dataset900_DemoBrain" / "sr" / \
        "3d_ensembler__diffensPlans_tiny" / "fold_0"
    diagnostic = json.loads((fold / "validation" / "timestep_diagnostic.json").read_text())
    assert {"3d_ensembler", "2d_axial", "tpdm"} <= set(diagnostic["curves"])


def test_sr_with_masked_experts_feeds_them_the_inputs_non_zero_blocks(masked_folders, tmp_path, monkeypatch):
    image, props = read_image(sorted((masked_folders.raw / "imagesTr").glob("*_0003.nii.gz"))[0])
    lowres, lowres_props = degrade_image(image, props, {"type": "avgpool", "factor": [4, 4, 4]})
    (tmp_path / "in").mkdir()
    write_image(lowres, lowres_props, tmp_path / "in" / "case_0003.nii.gz")
    predictor = DiffensPredictor(steps=2, progress=False).initialize_from_trained_model(900, "sr", "3d_ensembler")
    seen = _record_expert_masks(predictor)
    given = []
    original = DiffensPredictor.case_denoiser
    monkeypatch.setattr(DiffensPredictor, "case_denoiser",
                        lambda self, *args: given.append(args[3]) or original(self, *args))
    summary = predictor.predict_from_files(tmp_path / "in", tmp_path / "out")
    assert summary["done"] == 1 and summary["failed"] == 0, summary
    # sampled on the input's own grid: the mask is exactly the input's non-zero 4x4x4 blocks
    (mask,) = given
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert float(mask.sum()) == 64 * np.count_nonzero(lowres)
    # and it is what every expert call sees in its last input channel
    masks = torch.cat([m.flatten() for m in seen])
    assert float(masks.mean()) == pytest.approx(float(mask.mean()), rel=1e-6)


def test_mt_with_a_masked_expert_sees_where_the_input_is_not_zero(masked_folders, tmp_path):
    source = sorted((masked_folders.raw / "imagesTr").glob("*_0001.nii.gz"))[0]
    image, props = read_image(source)
    (tmp_path / "in").mkdir()
    write_image(image, props, tmp_path / "in" / "case_0001.nii.gz")
    predictor = DiffensPredictor(steps=2, progress=False).initialize_from_trained_model(900, "mt", "2d_axial")
    seen = _record_expert_masks(predictor)
    summary = predictor.predict_from_files(tmp_path / "in", tmp_path / "out")
    assert summary["done"] == 1, summary
    mask = torch.cat(seen)
    # the expert's axial slices hold the input's foreground, cropped to it and padded: never all of it, never none
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert 0.2 < float(mask.mean()) < 1.0
    assert np.count_nonzero(image) > 0


def test_a_masked_expert_without_a_mask_is_refused_with_the_fix(masked_folders):
    predictor = DiffensPredictor(steps=2, progress=False).initialize_from_trained_model(900, "mt", "2d_axial")
    runner = predictor.model.runners["2d_axial"]
    y_t = torch.zeros(1, 1, 8, 8, 8)
    with pytest.raises(ValueError, match="non-zero mask channel.*expert_frame"):
        runner(y_t, torch.zeros(1, 1, 8, 8, 8), 10)
