"""Data-parallel training (training/distributed.py) on the CPU with gloo, in spawned processes.

The spawning tests are marked slow (each start of two processes imports torch twice: ~5 s on 2 cores) but run by
default: two half-batches give the full batch's update, the ranks draw different cases, sharded validation equals
one process's, `diffens_train -num_gpus 2 -device cpu` and torchrun write one set of files.
"""
import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffens_auto import paths
from diffens_auto.diffusion import NoiseSchedule
from diffens_auto.diffusion.slicing import ExpertRunner, expert_frame, position_channels
from diffens_auto.model_folder.checkpoints import FINAL, load_checkpoint
from diffens_auto.networks import Ensembler, build_expert
from diffens_auto.planning import network_for_task, plan_experiment
from diffens_auto.run.train import train_entry
from diffens_auto.training import distributed
from diffens_auto.training.api import check_data_parallel
from diffens_auto.training.assembly import TrainingOptions, build_trainer, default_loaders
from diffens_auto.training.ema import unwrap
from diffens_auto.training.errors import TrainingSetupError
from diffens_auto.training.experts import ExpertsNotTrainedError, FrozenExpert
from diffens_auto.training.objectives import EnsemblerObjective, ExpertObjective
from diffens_auto.training.run_spec import resolve_run
from diffens_auto.training.schedule import EpochSchedule, Stage
from diffens_auto.training.trainer import Trainer
from diffens_auto.workflows.train import train

DATASET, PLANS = "Dataset900_DemoBrain", "diffensPlans_tiny"
NETWORK = {"architecture": "diffusion_unet", "spatial_dims": 2, "in_channels": 2, "out_channels": 1,
           "channels": [4, 8], "num_res_blocks": 1, "attention_levels": [], "num_head_channels": 4,
           "time_embed_dim": 16, "dropout": 0.0, "norm_num_groups": 4, "kernel_size": 3}
SGD_LR = 0.1
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def demo_env(demo_data, tmp_path, monkeypatch):
    """The preprocessed demo data, a fresh results folder, zero augmentation workers (inherited by the ranks)."""
    monkeypatch.setenv(paths.PREPROCESSED_VARIABLE, str(demo_data.dataset_folder.parent))
    monkeypatch.setenv(paths.RESULTS_VARIABLE, str(tmp_path / "results"))
    monkeypatch.delenv(paths.RAW_VARIABLE, raising=False)
    monkeypatch.setenv(paths.AUGMENTATION_WORKERS_VARIABLE, "0")
    for variable in paths.DISTRIBUTED_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.syspath_prepend(str(REPO))     # spawned ranks import this module by its name (tests.training...)
    return tmp_path


# ------------------------------------------------------------------ what each spawned rank does


def fixed_batch():
    """A batch of 4 expert slices with fixed t and eps (the same in every process)."""
    generator = torch.Generator().manual_seed(7)
    batch = {"y0": torch.randn(4, 1, 8, 8, generator=generator), "condition": torch.randn(4, 1, 8, 8,
                                                                                        generator=generator)}
    return batch, torch.tensor([10, 300, 600, 900]), torch.randn(4, 1, 8, 8, generator=generator)


def sgd_step(rank: int, world_size: int, wrap, folder) -> dict:
    """One trainer step with plain SGD on this rank's share of the fixed batch; gradients, weights, loss."""
    torch.manual_seed(0)
    stage = Stage("train", 1, (8, 8), 4 // world_size)
    trainer = Trainer(wrap(build_expert(NETWORK)), ExpertObjective(), NoiseSchedule.linear(),
                      EpochSchedule((stage,), 1, 0, 1, stage), loaders=None, output_folder=folder, lr=1e-3,
                      ema_decay=0.9, rank=rank, world_size=world_size, echo=False)
    trainer.optimizer = torch.optim.SGD(unwrap(trainer.model).parameters(), lr=SGD_LR)  # Adam's 1st step ~ sign(g)
    batch, t, noise = fixed_batch()
    share = slice(rank * stage.batch_size, (rank + 1) * stage.batch_size)
    loss = trainer.step({k: v[share] for k, v in batch.items()}, t[share], noise[share])
    model = unwrap(trainer.model)
    return {"grads": [p.grad.clone() for p in model.parameters()],
            "weights": [p.detach().clone() for p in model.parameters()],
            "loss": distributed.all_reduce_mean(loss)}


class RecordingLoaders:
    """A LoaderFactory that keeps the case ids of every training batch it hands out."""

    def __init__(self, factory):
        self.factory, self.case_ids, self.batch_sizes = factory, [], []

    def __call__(self, split, stage, seed, epoch):
        loader = self.factory(split, stage, seed, epoch)
        if split == "val":
            return loader
        recorder = self

        class Recorded:
            def __iter__(self):
                return self

            def __next__(self):
                batch = next(loader)
                recorder.case_ids.append(list(loader.last_case_ids))   # what the real loader drew
                recorder.batch_sizes.append(int(batch["y0"].shape[0]))
                return batch

            def close(self):
                loader.close()
        return Recorded()


def rank_job(context: distributed.RankContext, folder: str) -> None:
    """Rank `context.rank` of 2: an SGD step on half the fixed batch, then an epoch on the demo data's loaders."""
    results = {"sgd": sgd_step(context.rank, context.world_size, context.wrap, Path(folder) / "sgd")}
    run = resolve_run(DATASET, "sr", "2d_axial", plans_name=PLANS)
    loaders = RecordingLoaders(default_loaders(run))
    options = TrainingOptions(device=context.device, num_epochs=1, iterations_per_epoch=3, loaders=loaders, echo=False)
    trainer = build_trainer(run, options, rank=context.rank, world_size=context.world_size, wrap_model=context.wrap)
    results["val_loss_before"] = trainer.validation_loss()      # EMA = initial weights, the same in every process
    results["train_loss"] = trainer.train_epoch(0)
    results.update(case_ids=loaders.case_ids, batch_sizes=loaders.batch_sizes,
                   weights=[p.detach().clone() for p in unwrap(trainer.model).parameters()])
    torch.save(results, Path(folder) / f"rank_{context.rank}.pt")


def failing_job(context: distributed.RankContext) -> None:
    distributed.barrier()
    if context.rank == 1:
        raise ExpertsNotTrainedError("rank 1 says: train the experts first")
    distributed.barrier()                      # rank 0 waits here until the launcher stops it


@pytest.fixture(scope="module")
def two_ranks(demo_data, tmp_path_factory):
    """The results of `rank_job` on ranks 0 and 1 of a gloo group (one spawn for the module's tests)."""
    folder = tmp_path_factory.mktemp("two_ranks")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(paths.PREPROCESSED_VARIABLE, str(demo_data.dataset_folder.parent))
        monkeypatch.setenv(paths.RESULTS_VARIABLE, str(folder / "results"))
        monkeypatch.setenv(paths.AUGMENTATION_WORKERS_VARIABLE, "0")
        monkeypatch.syspath_prepend(str(REPO))
        for variable in paths.DISTRIBUTED_VARIABLES:
            monkeypatch.delenv(variable, raising=False)
        distributed.launch(rank_job, 2, "cpu", str(folder))
        return [torch.load(folder / f"rank_{r}.pt", weights_only=True) for r in (0, 1)]


# ------------------------------------------------------------------ acceptance: -num_gpus 2 -device cpu


@pytest.mark.slow
def test_two_half_batches_give_the_full_batch_update(two_ranks, tmp_path):
    full = sgd_step(0, 1, lambda model: model, tmp_path)
    for rank in two_ranks:
        for name in ("grads", "weights"):
            for a, b in zip(rank["sgd"][name], full[name]):
                assert torch.allclose(a, b, rtol=0, atol=1e-6), name
        assert abs(rank["sgd"]["loss"] - full["loss"]) < 1e-6        # the logged loss: mean over the ranks
    # not vacuous: the SGD step (unlike Adam's first, ~ lr * sign(grad)) moves each weight by lr * grad
    torch.manual_seed(0)
    initial = [p.detach() for p in build_expert(NETWORK).parameters()]
    assert max(float((w - i).abs().max()) for w, i in zip(full["weights"], initial)) > 1e-3


@pytest.mark.slow
def test_ranks_draw_different_cases_with_half_batches(two_ranks, demo_data):
    rank0, rank1 = two_ranks
    batch = demo_data.plans["configurations"]["2d_axial"]["batch_size"]
    assert rank0["batch_sizes"] == rank1["batch_sizes"] == [batch // 2] * 3
    assert rank0["case_ids"] != rank1["case_ids"]
    assert {c for ids in rank0["case_ids"] + rank1["case_ids"] for c in ids} <= set(demo_data.train)
    for a, b in zip(rank0["weights"], rank1["weights"]):             # DDP keeps the replicas identical
        assert torch.equal(a, b)
    assert rank0["train_loss"] == rank1["train_loss"]                # all-reduced


@pytest.mark.slow
def test_sharded_validation_equals_one_process(two_ranks, demo_env):
    run = resolve_run(DATASET, "sr", "2d_axial", plans_name=PLANS)
    single = build_trainer(run, TrainingOptions(device="cpu", num_epochs=1, iterations_per_epoch=1,
                                                echo=False)).validation_loss()
    for rank in two_ranks:
        assert abs(rank["val_loss_before"] - single) < 1e-6


def _diffens_train(monkeypatch, results, *extra):
    monkeypatch.setenv(paths.RESULTS_VARIABLE, str(results))
    monkeypatch.setattr(sys, "argv", ["diffens_train", "900", "sr", "2d_axial", "-p", PLANS, "-num_gpus", "2",
                                      "-device", "cpu", "--iterations_per_epoch", "2", *extra])
    train_entry()
    return results / DATASET / "sr" / f"2d_axial__{PLANS}" / "fold_0"


@pytest.mark.slow
def test_diffens_train_num_gpus_2_on_cpu_writes_its_files_and_resumes_exactly(demo_env, monkeypatch, capsys):
    folder = _diffens_train(monkeypatch, demo_env / "split", "--epochs", "1")
    assert f"Trained model in {folder}" in capsys.readouterr().out
    assert sorted(p.name for p in folder.glob("*.pth")) == ["checkpoint_best.pth", FINAL]
    logs = list(folder.glob("training_log_*.txt"))
    assert len(logs) == 1
    log = logs[0].read_text()
    assert "rank 0/2" in log and "batch 2 per rank x 2 ranks" in log and "rank 1/2" not in log
    checkpoint = load_checkpoint(folder / FINAL)
    assert checkpoint["world_size"] == 2 and checkpoint["epoch"] == 1 and checkpoint["iteration"] == 2
    assert not list(folder.glob(".*tmp*"))
    # --c with the same number of processes continues each rank's streams: bitwise an uninterrupted run
    _diffens_train(monkeypatch, demo_env / "split", "--epochs", "2", "--c")
    whole = _diffens_train(monkeypatch, demo_env / "whole", "--epochs", "2")
    resumed, uninterrupted = load_checkpoint(folder / FINAL), load_checkpoint(whole / FINAL)
    assert resumed["epoch"] == uninterrupted["epoch"] == 2
    assert all(torch.equal(resumed["model"][k], v) for k, v in uninterrupted["model"].items())
    assert all(torch.equal(resumed["ema"]["weights"][k], v) for k, v in uninterrupted["ema"]["weights"].items())
    assert resumed["progress"]["train_loss"] == uninterrupted["progress"]["train_loss"]


@pytest.mark.slow
def test_torchrun_runs_the_same_trainer_with_env_initialisation(demo_env):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node",
               "2", "-m", "diffens_auto.run.train", "900", "sr", "2d_sagittal", "-p", PLANS, "-device", "cpu",
               "--epochs", "1", "--iterations_per_epoch", "2"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = demo_env / "results" / DATASET / "sr" / f"2d_sagittal__{PLANS}" / "fold_0"
    assert done.stdout.count("Trained model in") == 1                 # rank 0 reports, rank 1 only trains
    assert len(list(folder.glob("training_log_*.txt"))) == 1
    checkpoint = load_checkpoint(folder / FINAL)
    assert checkpoint["world_size"] == 2 and checkpoint["iteration"] == 2


@pytest.mark.slow
def test_an_error_in_a_rank_reaches_the_caller_as_itself(demo_env):
    with pytest.raises(ExpertsNotTrainedError, match="rank 1 says"):
        distributed.launch(failing_job, 2, "cpu")


# ------------------------------------------------------------------ requests refused before any process starts


def test_requests_that_cannot_run_are_clear_errors(demo_env, monkeypatch):
    quick = dict(plans_name=PLANS, num_epochs=1, iterations_per_epoch=1, echo=False, device="cpu", validate=False)
    with pytest.raises(TrainingSetupError, match=r"batch size 4 .* divisible by the number of processes \(3\)"):
        train(DATASET, "sr", "2d_axial", num_gpus=3, **quick)
    with pytest.raises(TrainingSetupError, match="give 1 or more"):
        train(DATASET, "sr", "2d_axial", num_gpus=0, **quick)
    with pytest.raises(TrainingSetupError, match="batch size 1 of stage 'pretrain'"):   # ensembler: batch 1
        check_data_parallel(resolve_run(DATASET, "sr", "3d_ensembler", plans_name=PLANS),
                            TrainingOptions(device="cpu"), 2)
    with pytest.raises(TrainingSetupError, match="mps"):
        check_data_parallel(resolve_run(DATASET, "sr", "2d_axial", plans_name=PLANS), TrainingOptions(device="mps"), 2)
    if not torch.cuda.is_available():
        with pytest.raises(TrainingSetupError, match="no CUDA device"):
            train(DATASET, "sr", "2d_axial", num_gpus=2, **{**quick, "device": "cuda"})
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(TrainingSetupError, match="MASTER_ADDR"):
        train(DATASET, "sr", "2d_axial", **quick)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    with pytest.raises(TrainingSetupError, match="under torchrun"):
        train(DATASET, "sr", "2d_axial", num_gpus=2, **quick)
    assert not (demo_env / "results").exists() or not list((demo_env / "results").rglob("*.pth"))


def test_distributed_environment_is_read_in_paths(monkeypatch):
    for variable in paths.DISTRIBUTED_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    assert paths.distributed_environment() is None and distributed.torchrun_context("cpu") is None
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("MASTER_ADDR", "node0")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert paths.distributed_environment() == {"world_size": 8, "rank": 5, "local_rank": 1, "local_world_size": 4,
                                               "master_addr": "node0", "master_port": "29500"}
    context = distributed.torchrun_context("cpu")
    assert (context.rank, context.world_size, context.local_rank, context.is_main) == (5, 8, 1, False)
    monkeypatch.setenv("WORLD_SIZE", "1")                     # torchrun with one process: a plain run
    assert distributed.torchrun_context("cpu") is None
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ValueError, match="'RANK'"):
        paths.distributed_environment()


def test_batch_split_and_backends():
    assert distributed.per_rank_batch_size(8, 4) == 2 and distributed.per_rank_batch_size(4, 1) == 4
    with pytest.raises(distributed.DistributedSetupError, match=r"\[1, 2, 3, 6\] processes"):
        distributed.per_rank_batch_size(6, 4)
    assert distributed.backend_for("cpu") == "gloo" and distributed.backend_for("cuda") == "nccl"
    with pytest.raises(distributed.DistributedSetupError):
        distributed.backend_for("mps")
    # outside a process group the collectives are no-ops
    assert not distributed.is_active()
    assert distributed.all_reduce_sum([1.5, 2]) == [1.5, 2.0] and distributed.all_reduce_mean(3.0) == 3.0
    distributed.barrier()


def test_every_parameter_gets_a_gradient_so_ddp_needs_no_unused_parameter_search():
    """Why wrap_model keeps find_unused_parameters off: expert and ensembler use all their weights in a step."""
    intensity = {"percentile_00_5": 0.0, "percentile_99_5": 1.0}
    fingerprint = {"spacings": [[1.0] * 3] * 2, "shapes_after_crop": [[8, 8, 8]] * 2,
                   "foreground_intensity_properties_per_channel": {"0": intensity, "1": intensity}}
    plans = plan_experiment(fingerprint, {"mt": {"target": 1, "inputs": [0]}}, {0: "T1", 1: "FLAIR"},
                            "Dataset901_Tiny", preset="tiny")
    torch.manual_seed(0)
    t, experts = torch.tensor([5]), {}
    for name in ("2d_axial", "2d_sagittal", "2d_coronal"):
        network = network_for_task(plans, name, "mt")
        experts[name] = expert = build_expert(network)
        condition = torch.randn(1, network["in_channels"] - 1, 8, 8)
        ExpertObjective()(expert, {"condition": condition}, torch.randn(1, 1, 8, 8), t).sum().backward()
        assert all(p.grad is not None for p in expert.parameters()), name
    for configuration in ("3d_ensembler", "3d_ensembler_small"):
        names = plans["configurations"][configuration]["experts"]
        frozen = [FrozenExpert(ExpertRunner.from_network(copy.deepcopy(experts[n]).eval().requires_grad_(False),
                                                         network_for_task(plans, n, "mt"),
                                                         plans["configurations"][n]["slice_axis"], 8, name=n), {})
                  for n in names]
        network = network_for_task(plans, configuration, "mt")
        ensembler = Ensembler(network, names, ["epsilon_target"] * len(names))
        objective = EnsemblerObjective(frozen, want_features=bool(network.get("feature_injection")))
        # the mt experts take the condition's non-zero mask in their frame, as the loader sends it
        frame = expert_frame(position_channels((8, 8, 8)), torch.ones(1, 1, 8, 8, 8))
        eps = objective(ensembler, {"condition": torch.randn(1, 1, 8, 8, 8), "positions": frame},
                        torch.randn(1, 1, 8, 8, 8), t)
        eps.sum().backward()
        assert all(p.grad is not None for p in ensembler.parameters()), configuration
