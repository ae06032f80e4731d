"""diffens_train on the tiny demo plans: every configuration trains and writes its files; fusion; overfitting."""
import json
import shutil
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from diffens_auto import paths
from diffens_auto.diffusion import NoiseSchedule
from diffens_auto.diffusion.slicing import ExpertRunner, expert_frame, position_channels
from diffens_auto.diffusion.target_space import ConvertedRunner
from diffens_auto.hashing import file_sha256
from diffens_auto.imageio import read_image
from diffens_auto.inference.predictor import DiffensPredictor
from diffens_auto.model_folder.checkpoints import BEST, FINAL, LATEST, load_checkpoint, model_from_checkpoint
from diffens_auto.model_folder.recorded_experts import ExpertMismatchError
from diffens_auto.networks import Ensembler, build_expert
from diffens_auto.operators import avgpool_downsample, degrade_image
from diffens_auto.planning import network_for_task, plan_experiment
from diffens_auto.run.train import train_entry
from diffens_auto.training.errors import TrainingSetupError
from diffens_auto.training.experts import ExpertsNotTrainedError, FrozenExpert, condition_indices
from diffens_auto.training.objectives import EnsemblerObjective, ExpertObjective
from diffens_auto.training.run_spec import resolve_run
from diffens_auto.training.schedule import EpochSchedule, Stage, make_schedule
from diffens_auto.training.trainer import Trainer
from diffens_auto.workflows.train import train

DATASET, PLANS = "Dataset900_DemoBrain", "diffensPlans_tiny"
EXPERTS = ("2d_axial", "2d_sagittal", "2d_coronal")
QUICK = dict(num_epochs=1, iterations_per_epoch=2, echo=False, validate=False)


@pytest.fixture(scope="module")
def workspace(demo_data, tmp_path_factory):
    """A private copy of the preprocessed demo dataset (tests add plans files to it) and an empty results folder."""
    root = tmp_path_factory.mktemp("trainer")
    preprocessed, results = root / "preprocessed", root / "results"
    shutil.copytree(demo_data.dataset_folder, preprocessed / DATASET)
    results.mkdir()
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(paths.PREPROCESSED_VARIABLE, str(preprocessed))
        monkeypatch.setenv(paths.RESULTS_VARIABLE, str(results))
        monkeypatch.delenv(paths.RAW_VARIABLE, raising=False)
        monkeypatch.setenv(paths.AUGMENTATION_WORKERS_VARIABLE, "0")
        yield SimpleNamespace(root=root, preprocessed=preprocessed / DATASET, results=results / DATASET,
                              plans=demo_data.plans)


@pytest.fixture(scope="module")
def sr_experts(workspace):
    """The three sr experts of fold 0, trained for one epoch of two iterations."""
    return {c: train(DATASET, "sr", c, plans_name=PLANS, **QUICK) for c in EXPERTS}


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("configuration", EXPERTS)
def test_expert_trains_and_writes_its_files(sr_experts, workspace, configuration):
    folder = sr_experts[configuration]
    assert folder == workspace.results / "sr" / f"{configuration}__{PLANS}" / "fold_0"
    names = _files(folder)
    assert {FINAL, BEST, "progress.png"} <= set(names) and LATEST not in names
    assert any(n.startswith("training_log_") and n.endswith(".txt") for n in names)
    checkpoint = load_checkpoint(folder / FINAL)                 # weights_only=True
    assert checkpoint["kind"] == "expert" and checkpoint["epoch"] == 1 and checkpoint["iteration"] == 2
    assert checkpoint["slice_axis"] == workspace.plans["configurations"][configuration]["slice_axis"]
    assert checkpoint["network"] == network_for_task(workspace.plans, configuration, "sr")
    assert (folder / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("configuration", ["3d_ensembler", "3d_ensembler_small"])
def test_ensembler_pretrains_fine_tunes_and_records_its_experts(sr_experts, workspace, configuration):
    folder = train(DATASET, "sr", configuration, plans_name=PLANS, num_epochs=2, iterations_per_epoch=1, echo=False,
                   validate=False)
    checkpoint = load_checkpoint(folder / FINAL)
    assert checkpoint["kind"] == "ensembler" and checkpoint["epoch"] == 2
    experts = workspace.plans["configurations"][configuration]["experts"]
    assert [e["name"] for e in checkpoint["experts"]] == experts
    for record in checkpoint["experts"]:
        assert record["sha256"] == file_sha256(sr_experts[record["configuration"]] / FINAL)
    log = next(folder.glob("training_log_*.txt")).read_text()
    assert "(pretrain, patch" in log and "(finetune, patch" in log
    model = model_from_checkpoint(checkpoint)
    assert isinstance(model, Ensembler) and bool(model.feature_injection) == (configuration == "3d_ensembler")


def test_ensembler_without_trained_experts_names_the_commands(workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(paths.RESULTS_VARIABLE, str(tmp_path))
    with pytest.raises(ExpertsNotTrainedError) as error:
        train(DATASET, "sr", "3d_ensembler", fold=1, plans_name=PLANS, echo=False, validate=False)
    for expert in ("2d_axial", "2d_sagittal"):
        assert f"diffens_train {DATASET} sr {expert} -f 1 -p {PLANS}" in str(error.value)
    monkeypatch.setattr(sys, "argv", ["diffens_train", "900", "sr", "3d_ensembler", "-p", PLANS])
    with pytest.raises(SystemExit) as exit_:
        train_entry()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"diffens_train {DATASET} sr 2d_sagittal -f 0 -p {PLANS}" in err
    assert not list(tmp_path.rglob("*.pth"))


def test_bad_requests_are_clear_errors(workspace):
    with pytest.raises(TrainingSetupError, match="--experts and --name go together"):
        resolve_run(DATASET, "sr", "3d_ensembler", plans_name=PLANS, experts=["sr:2d_axial"])
    with pytest.raises(TrainingSetupError, match="is an expert"):
        resolve_run(DATASET, "sr", "2d_axial", plans_name=PLANS, experts=["sr:2d_axial"], name="x")
    with pytest.raises(TrainingSetupError, match="No configuration '3d_nope'"):
        resolve_run(DATASET, "sr", "3d_nope", plans_name=PLANS)
    with pytest.raises(TrainingSetupError, match="-f 7"):
        resolve_run(DATASET, "sr", "2d_axial", fold=7, plans_name=PLANS)
    assert resolve_run(DATASET, "sr", "2d_axial", fold="all", plans_name=PLANS).output_folder.name == "fold_all"
    # the mt ensembler has no degraded FLAIR: an sr expert cannot see its input, nor form its residual
    with pytest.raises(ExpertMismatchError, match="condition channels \\[3\\] of task 'sr' are not conditions of task 'mt'"):
        condition_indices(workspace.plans, "mt", "sr")
    # sr and mt experts fuse into both with the default plans: each sees its own channels of both's conditions
    assert condition_indices(workspace.plans, "both", "mt") == [0]
    assert condition_indices(workspace.plans, "both", "sr") == [1]


def test_schedules_of_experts_and_ensemblers(workspace):
    plans = workspace.plans
    expert = make_schedule(plans, "2d_axial")
    assert [(s.name, s.num_epochs) for s in expert.stages] == [("train", plans["training"]["expert"]["num_epochs"])]
    assert expert.stages[0].patch_size == tuple(plans["configurations"]["2d_axial"]["patch_size"])
    ensembler = plans["configurations"]["3d_ensembler"]
    schedule = make_schedule(plans, "3d_ensembler", num_epochs=5, iterations_per_epoch=7)
    assert [(s.name, s.num_epochs) for s in schedule.stages] == [("pretrain", 2), ("finetune", 3)]   # 1 : 1 plans
    assert schedule.iterations_per_epoch == 7 and schedule.num_epochs == 5
    assert schedule.stage_at(1).name == "pretrain" and schedule.stage_at(2).name == "finetune"
    assert schedule.stages[0].patch_size == tuple(ensembler["patch_size"])
    assert schedule.val_stage.patch_size == tuple(ensembler["fine_tune_shape"])
    assert [s.name for s in make_schedule(plans, "3d_ensembler", num_epochs=1).stages] == ["finetune"]


def _both_case(folder, degradation):
    """A case for task both: T1ce (channel 1) at 2 mm and FLAIR (channel 3) degraded as the task does."""
    generator = np.random.default_rng(5)
    arrays, props = {}, {}
    for channel in (1, 3):
        array = np.zeros((16, 16, 12), np.float32)
        array[2:14, 2:14, 2:10] = 100 + 50 * generator.random((12, 12, 8))
        image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
        image.SetSpacing((2.0, 2.0, 2.0))
        sitk.WriteImage(image, str(folder / f"case_{channel:04d}.nii.gz"))
        arrays[channel], props[channel] = read_image(folder / f"case_{channel:04d}.nii.gz")
    arrays[3], props[3] = degrade_image(arrays[3], props[3], degradation)
    return arrays, props


def test_fusion_ensembler_from_experts_of_other_tasks(workspace, tmp_path):
    plans_name = PLANS    # the default plans: sr (residual, v) and mt (target, eps) experts fuse as they are
    sr = train(DATASET, "sr", "2d_axial", plans_name=plans_name, **QUICK)
    mt = train(DATASET, "mt", "2d_sagittal", plans_name=plans_name, **QUICK)
    fusion = dict(experts=["sr:2d_axial", "mt:2d_sagittal"], name="3d_fusion", plans_name=plans_name, echo=False,
                  validate=False)
    folder = train(DATASET, "both", "3d_ensembler", num_epochs=1, iterations_per_epoch=1, **fusion)
    assert folder == workspace.results / "both" / f"3d_fusion__{plans_name}" / "fold_0"
    checkpoint = load_checkpoint(folder / FINAL)
    assert checkpoint["configuration"] == "3d_fusion" and checkpoint["base_configuration"] == "3d_ensembler"
    # "both" conditions on [T1ce, degraded FLAIR]: the mt expert takes channel 0, the sr expert channel 1
    records = {r["name"]: r for r in checkpoint["experts"]}
    assert records["sr:2d_axial"]["condition_indices"] == [1] and records["mt:2d_sagittal"]["condition_indices"] == [0]
    assert records["sr:2d_axial"]["sha256"] == file_sha256(sr / FINAL)
    assert checkpoint["network"]["in_channels"] == 2 + 1 + 2
    assert {e["expert"] for e in checkpoint["network"]["feature_injection"]} == set(records)
    model_from_checkpoint(checkpoint)
    # and it predicts: an output on the T1ce grid whose blocks pool back to the measured FLAIR
    predictor = DiffensPredictor(steps=3, progress=False).initialize_from_trained_model(
        DATASET, "both", "3d_fusion", fold=0, plans_name=plans_name)
    assert isinstance(predictor.model.runners["mt:2d_sagittal"], ConvertedRunner)
    assert not isinstance(predictor.model.runners["sr:2d_axial"], ConvertedRunner)
    degradation = workspace.plans["tasks"]["both"]["degradation"]
    arrays, props = _both_case(tmp_path, degradation)
    mean, _, _, _ = predictor.predict_volume(arrays, props)
    assert mean.shape == arrays[1].shape and np.all(np.isfinite(mean))
    pooled = avgpool_downsample(mean.astype(np.float64), degradation["factor"])
    inside = arrays[3] != 0
    assert np.abs(pooled - arrays[3])[inside].max() <= 1e-3 * float(arrays[3].max())
    # an expert retrained since: the fusion ensembler refuses to resume with it
    train(DATASET, "mt", "2d_sagittal", plans_name=plans_name, seed=1, **QUICK)
    assert file_sha256(mt / FINAL) != records["mt:2d_sagittal"]["sha256"]
    with pytest.raises(ExpertMismatchError, match="changed since this ensembler started"):
        train(DATASET, "both", "3d_ensembler", num_epochs=1, iterations_per_epoch=1, continue_training=True, **fusion)


# ------------------------------------------------------------------ overfitting one fixed batch


@pytest.fixture(scope="module")
def overfit_plans():
    """Tiny plans on an 8^3 crop (2 levels): nets small enough for hundreds of CPU steps in seconds."""
    intensity = {"percentile_00_5": 0.0, "percentile_99_5": 1.0}
    fingerprint = {"spacings": [[1.0, 1.0, 1.0]] * 2, "shapes_after_crop": [[8, 8, 8]] * 2,
                   "foreground_intensity_properties_per_channel": {"0": intensity, "1": intensity}}
    tasks = {"mt": {"target": 1, "inputs": [0]}}
    return plan_experiment(fingerprint, tasks, {0: "T1", 1: "FLAIR"}, "Dataset901_Tiny", preset="tiny")


def _smooth(shape, generator):
    x = torch.randn(shape, generator=generator)
    pool = torch.nn.functional.avg_pool2d if len(shape) == 4 else torch.nn.functional.avg_pool3d
    return pool(x, 3, 1, 1)


def _steps_to_fall_tenfold(trainer, batch, t, noise, max_steps=500):
    first = trainer.step(batch, t, noise)
    for step in range(2, max_steps + 1):
        if trainer.step(batch, t, noise) < first / 10:
            return step
    return None


def _trainer(model, objective, plans, shape, tmp_path, lr):
    stage = Stage("train", 1, shape, 1)
    return Trainer(model, objective, NoiseSchedule.from_plans(plans["diffusion"]),
                   EpochSchedule((stage,), 1, 0, 1, stage), loaders=None, output_folder=tmp_path, lr=lr,
                   ema_decay=0.99, echo=False)


def test_expert_overfits_one_batch(overfit_plans, tmp_path):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    network = network_for_task(overfit_plans, "2d_axial", "mt")
    model = build_expert(network)
    trainer = _trainer(model, ExpertObjective(), overfit_plans, (8, 8), tmp_path, lr=2e-3)
    # a sampler's expert batch: the condition with its context slices, then the position channels
    batch = {"y0": _smooth((2, 1, 8, 8), generator),
             "condition": _smooth((2, network["in_channels"] - 1, 8, 8), generator)}
    noise = torch.randn((2, 1, 8, 8), generator=generator)
    assert _steps_to_fall_tenfold(trainer, batch, torch.tensor([50, 400]), noise) is not None


def test_ensembler_overfits_one_batch(overfit_plans, tmp_path):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    plans, experts = overfit_plans, []
    names = plans["configurations"]["3d_ensembler"]["experts"]
    for name in names:      # frozen, untrained experts: the ensembler must learn what they miss
        expert = build_expert(network_for_task(plans, name, "mt")).eval().requires_grad_(False)
        runner = ExpertRunner.from_network(expert, network_for_task(plans, name, "mt"),
                                           plans["configurations"][name]["slice_axis"], 16, name=name)
        experts.append(FrozenExpert(runner, {}))
    network = dict(network_for_task(plans, "3d_ensembler", "mt"), gradient_checkpointing=False)
    assert network["feature_injection"]
    model = Ensembler(network, names, ["epsilon_target"] * len(names))
    trainer = _trainer(model, EnsemblerObjective(experts, want_features=True), plans, (8, 8, 8), tmp_path, lr=2e-3)
    batch = {"y0": _smooth((1, 1, 8, 8, 8), generator), "condition": _smooth((1, 1, 8, 8, 8), generator),
             # the mt experts' frame: coordinates and the condition's non-zero mask (all of the patch)
             "positions": expert_frame(position_channels((8, 8, 8)), torch.ones(1, 1, 8, 8, 8))}
    noise = torch.randn((1, 1, 8, 8, 8), generator=generator)
    assert _steps_to_fall_tenfold(trainer, batch, torch.tensor([300]), noise) is not None


def test_a_v_predicting_trainer_regresses_on_the_velocity(overfit_plans, tmp_path):
    from diffens_auto.diffusion.prediction import training_target

    class Velocity:
        """An 'objective' that returns a fixed guess, so the loss can be checked by hand."""
        kind = "expert"

        def __init__(self, guess):
            self.guess = guess

        def __call__(self, model, batch, y_t, t):
            return self.guess
    generator = torch.Generator().manual_seed(0)
    batch = {"y0": torch.randn((2, 1, 8, 8), generator=generator), "condition": torch.zeros((2, 1, 8, 8))}
    noise, t = torch.randn((2, 1, 8, 8), generator=generator), torch.tensor([10, 900])
    schedule = NoiseSchedule.from_plans(overfit_plans["diffusion"])
    v = training_target(schedule, "v", batch["y0"], noise, t)
    stage = Stage("train", 1, (8, 8), 1)
    trainer = Trainer(torch.nn.Conv2d(1, 1, 1), Velocity(v), schedule, EpochSchedule((stage,), 1, 0, 1, stage),
                      loaders=None, output_folder=tmp_path, lr=1e-3, ema_decay=0.99, echo=False, prediction="v")
    assert float(trainer.loss(trainer.model, batch, t, noise)) == 0.0        # the exact velocity: no loss
    eps_trainer = Trainer(torch.nn.Conv2d(1, 1, 1), Velocity(noise), schedule, EpochSchedule((stage,), 1, 0, 1, stage),
                          loaders=None, output_folder=tmp_path / "eps", lr=1e-3, ema_decay=0.99, echo=False)
    assert float(eps_trainer.loss(eps_trainer.model, batch, t, noise)) == 0.0  # the default predicts the noise
    with pytest.raises(ValueError, match="Unknown prediction"):
        Trainer(torch.nn.Conv2d(1, 1, 1), Velocity(v), schedule, EpochSchedule((stage,), 1, 0, 1, stage),
                loaders=None, output_folder=tmp_path / "x", lr=1e-3, ema_decay=0.99, echo=False, prediction="x0")
