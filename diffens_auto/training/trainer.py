"""Training of the 2D experts and the 3D ensembler: one loop, two objectives (documentation/training.md).

Both are trained with the epsilon-prediction loss of DDPM (Ho et al. 2020, Eq. 14):
    L = || eps - eps_hat(y_t, condition, t) ||^2,   y_t = sqrt(alpha_bar_t) y0 + sqrt(1 - alpha_bar_t) eps,
with t uniform in [0, T) and eps ~ N(0, I). An expert predicts eps from cat([y_t, condition]) on slices; the
ensembler fuses the frozen experts' estimates over a 3D patch (Diff-Ensembler Eq. 5-6).

`Trainer` is built from parts (model, objective, schedule, a loader factory) so tests can drive it with
in-memory batches; `build_trainer` assembles those parts from a plans file and the preprocessed data, and
`train` is the API of the `diffens_train` command. Data-parallel training (training/distributed.py) runs one
Trainer per rank with `rank`, `world_size` and a DistributedDataParallel-wrapped `model`: each rank trains on
its share of the batch, logged losses are averaged over the ranks, validation batches are shared out, and only
rank 0 writes files (with barriers around checkpoint writes, reads and the fresh-start cleanup).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from diffens_auto import devices, paths
from diffens_auto.dataset.naming import resolve_dataset_name
from diffens_auto.diffusion import NoiseSchedule
from diffens_auto.networks import Ensembler, build_expert
from diffens_auto.planning import network_for_task
from diffens_auto.planning.plans_file import load_plans
from diffens_auto.training import checkpoints as ckpt
from diffens_auto.training import distributed
from diffens_auto.training.ema import EMA, unwrap
from diffens_auto.training.experts import (ExpertMismatchError, FrozenExpert, check_expert_hashes,
                                           check_experts_trained, ensembler_network, expert_specs, fold_folder,
                                           load_frozen_experts, run_experts)
from diffens_auto.training.model_folder import write_model_files
from diffens_auto.training.progress import Progress


class TrainingSetupError(ValueError):
    """A training request that cannot run as given (unknown configuration, fold, device ...)."""


# ------------------------------------------------------------------ schedule


@dataclass(frozen=True)
class Stage:
    """A run of epochs on one patch shape: "train" (experts), "pretrain" / "finetune" (ensembler, Alg. 1)."""

    name: str
    num_epochs: int
    patch_size: tuple
    batch_size: int


@dataclass(frozen=True)
class Schedule:
    """Stages in order, iterations per epoch, validation batches per epoch and the checkpoint interval."""

    stages: tuple
    iterations_per_epoch: int
    val_iterations: int
    checkpoint_every: int
    val_stage: Stage          # validation always on this stage's shape, so its loss is comparable across epochs

    @property
    def num_epochs(self) -> int:
        return sum(s.num_epochs for s in self.stages)

    def stage_at(self, epoch: int) -> Stage:
        for stage in self.stages:
            if epoch < stage.num_epochs:
                return stage
            epoch -= stage.num_epochs
        return self.stages[-1]


# A loader factory: (split "train" | "val", stage, seed, epoch) -> iterable of batch dicts of float32 tensors.
LoaderFactory = Callable[[str, Stage, int, int], Iterable[dict]]


# ------------------------------------------------------------------ objectives: eps_hat from (model, batch, y_t, t)


class ExpertObjective:
    """A 2D expert: eps_hat = expert(cat([y_t, condition]), t)."""

    kind = "expert"

    def __call__(self, model, batch: dict, y_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps, _features = model(torch.cat([y_t, batch["condition"]], dim=1), t)
        return eps


class EnsemblerObjective:
    """The ensembler on the frozen experts' estimates over every slice of the patch (Eq. 5-6)."""

    kind = "ensembler"

    def __init__(self, experts: list[FrozenExpert], want_features: bool):
        self.experts = experts
        self.want_features = want_features

    def __call__(self, model, batch: dict, y_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps_list, features = run_experts(self.experts, y_t, batch["condition"], t, self.want_features,
                                         batch.get("positions"))
        return model(batch["condition"], y_t, eps_list, t, features)


# ------------------------------------------------------------------ the loop


def close_loader(loader) -> None:
    """Stop a loader's worker processes, if it has any."""
    close = getattr(loader, "close", None)
    if callable(close):
        close()


def seed_for(*parts: int) -> int:
    """A 63-bit seed mixing integers (seed, rank, epoch ...) without collisions between nearby tuples."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class Trainer:
    """Epochs of noise-prediction steps with EMA, validation loss, checkpoints, log and progress.png."""

    def __init__(self, model, objective, noise_schedule: NoiseSchedule, schedule: Schedule, loaders: LoaderFactory,
                 output_folder: str | Path, *, lr: float, ema_decay: float, metadata: dict | None = None,
                 device="cpu", seed: int = 0, rank: int = 0, world_size: int = 1, echo: bool = True,
                 on_resume: Callable[[dict], None] | None = None):
        self.device = torch.device(device)
        self.model = model
        self.objective = objective
        self.noise_schedule = noise_schedule
        self.schedule = schedule
        self.loaders = loaders
        self.output_folder = Path(output_folder)
        self.metadata = dict(metadata or {})
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.optimizer = torch.optim.Adam(unwrap(model).parameters(), lr=lr)
        self.ema = EMA(model, ema_decay)
        self.progress = Progress(self.output_folder, writer=rank == 0, echo=echo)
        self.on_resume = on_resume
        self.epoch, self.iteration, self.best_val_loss = 0, 0, float("inf")

    # -------------------------------------------------------------- one step

    def draw_t_and_noise(self, y0: torch.Tensor, generator: torch.Generator):
        """t uniform in [0, T) per batch element and eps ~ N(0, I), drawn on the CPU (same on every device)."""
        t = torch.randint(0, self.noise_schedule.num_train_steps, (y0.shape[0],), generator=generator)
        noise = torch.randn(y0.shape, generator=generator, dtype=torch.float32)
        return t.to(self.device), noise.to(self.device, y0.dtype)

    def _autocast(self):
        # bf16 autocast on CUDA only; CPU and MPS train in float32
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def loss(self, model, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """MSE(eps_hat, eps) for y_t = q_sample(y0, t, eps) (DDPM Eq. 14, 'simple' loss)."""
        y_t = self.noise_schedule.q_sample(batch["y0"], t, noise)
        with self._autocast():
            eps_hat = self.objective(model, batch, y_t, t)
        return F.mse_loss(eps_hat.float(), noise)

    def step(self, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> float:
        """One optimizer step (and EMA update) on a batch with given (t, eps); returns the loss."""
        self.model.train()
        loss = self.loss(self.model, batch, t, noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.ema.update(self.model)
        self.iteration += 1
        return float(loss.detach())

    def to_device(self, batch: dict) -> dict:
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()}

    # -------------------------------------------------------------- epochs

    def train_epoch(self, epoch: int) -> float:
        """iterations_per_epoch steps on batches of a loader built with (seed + rank, epoch)."""
        stage = self.schedule.stage_at(epoch)
        loader = iter(self.loaders("train", stage, self.seed + self.rank, epoch))
        generator = torch.Generator().manual_seed(seed_for(self.seed, self.rank, epoch))
        losses = []
        try:
            for _ in range(self.schedule.iterations_per_epoch):
                batch = self.to_device(next(loader))
                losses.append(self.step(batch, *self.draw_t_and_noise(batch["y0"], generator)))
        finally:
            close_loader(loader)
        return distributed.all_reduce_mean(float(np.mean(losses)))     # the mean over the ranks' equal shares

    @torch.no_grad()
    def validation_loss(self) -> float:
        """Mean loss of the EMA weights on the validation cases; batches, t and eps are the same every epoch.

        With several ranks every rank reads the same batches and draws the same (t, eps), evaluates batches
        rank, rank + world_size, ... of them, and the sums are all-reduced: the same loss as one process.
        """
        model = self.ema.model.eval()
        loader = iter(self.loaders("val", self.schedule.val_stage, self.seed, 0))
        generator = torch.Generator().manual_seed(seed_for(self.seed, 2 ** 31 - 1))
        losses = []
        try:
            for i in range(self.schedule.val_iterations):
                batch = next(loader)
                t, noise = self.draw_t_and_noise(batch["y0"], generator)
                if i % self.world_size == self.rank:
                    losses.append(float(self.loss(model, self.to_device(batch), t, noise)))
        finally:
            close_loader(loader)
        total, count = distributed.all_reduce_sum([sum(losses), len(losses)])
        return total / count if count else float("nan")

    def run_epoch(self, epoch: int) -> None:
        started = time.perf_counter()
        stage = self.schedule.stage_at(epoch)
        train_loss = self.train_epoch(epoch)
        val_loss = self.validation_loss()
        self.epoch = epoch + 1
        self.progress.record(train_loss, val_loss, self.optimizer.param_groups[0]["lr"], time.perf_counter() - started)
        improved = val_loss < self.best_val_loss
        if improved:
            self.best_val_loss = val_loss
        self.progress.log(f"epoch {epoch + 1}/{self.schedule.num_epochs} ({stage.name}, patch "
                          f"{'x'.join(map(str, stage.patch_size))}): train loss {train_loss:.5f}, val loss "
                          f"{val_loss:.5f}{' (best)' if improved else ''}, "
                          f"{self.progress.curves['epoch_time'][-1]:.2f} s")
        if improved:
            self.save(ckpt.BEST)
        if self.epoch % self.schedule.checkpoint_every == 0 and self.epoch < self.schedule.num_epochs:
            self.save(ckpt.LATEST)
        self.progress.plot()

    def fit(self, continue_training: bool = False) -> Path:
        """Train to the schedule's last epoch (resuming from the fold's checkpoint with --c); return the folder."""
        resumed_from = self.resume() if continue_training else None
        if resumed_from is not None:
            self.progress.log(f"resumed after epoch {self.epoch} from {resumed_from}")
            if resumed_from.name == ckpt.FINAL and self.epoch >= self.schedule.num_epochs:
                self.progress.log(f"nothing to do: {ckpt.FINAL} has {self.epoch} of {self.schedule.num_epochs} epochs")
                return self.output_folder
        else:
            self.start_fresh()
        distributed.barrier()       # every rank has read the resume point / rank 0 has removed an earlier run's files
        self.log_setup()
        for epoch in range(self.epoch, self.schedule.num_epochs):
            self.run_epoch(epoch)
        self.save(ckpt.FINAL)
        if self.rank == 0:
            (self.output_folder / ckpt.LATEST).unlink(missing_ok=True)
        distributed.barrier()
        self.progress.log(f"done: {self.epoch} epochs, best val loss {self.best_val_loss:.5f}, "
                          f"{ckpt.FINAL} written")
        return self.output_folder

    def start_fresh(self) -> None:
        """A run from scratch owns its fold folder: an earlier run's checkpoints are moved to `previous_run/`
        (replacing what an even older run left there), so `--c` cannot pick them up and nothing is lost yet."""
        stale = [self.output_folder / n for n in (ckpt.LATEST, ckpt.BEST, ckpt.FINAL)]
        stale = [p for p in stale if p.is_file()]
        if self.rank == 0 and stale:
            previous = self.output_folder / "previous_run"
            self.progress.log(f"training from scratch: moving the earlier run's {[p.name for p in stale]} to "
                              f"{previous} (use --c to continue a run instead)")
            previous.mkdir(exist_ok=True)
            for path in stale:
                path.replace(previous / path.name)
        else:
            self.progress.log(f"training from scratch in {self.output_folder}")

    def log_setup(self) -> None:
        parameters = sum(p.numel() for p in unwrap(self.model).parameters())
        info = {k: self.metadata.get(k) for k in ("kind", "dataset_name", "task", "configuration", "plans_name",
                                                   "fold", "parametrization")}
        self.progress.log(f"{json.dumps(info)}; {parameters:,} parameters; device {self.device}; "
                          f"rank {self.rank}/{self.world_size}; seed {self.seed}")
        ranks = f" per rank x {self.world_size} ranks" if self.world_size > 1 else ""
        for stage in self.schedule.stages:
            self.progress.log(f"stage {stage.name}: {stage.num_epochs} epochs x {self.schedule.iterations_per_epoch} "
                              f"iterations, batch {stage.batch_size}{ranks}, patch {list(stage.patch_size)}")

    # -------------------------------------------------------------- state

    def state_dict(self) -> dict:
        """The checkpoint: metadata plus everything an exact resume needs (tensors and plain types only)."""
        return {**self.metadata, "format_version": ckpt.FORMAT_VERSION,
                "model": unwrap(self.model).state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "epoch": self.epoch, "iteration": self.iteration,
                "best_val_loss": self.best_val_loss, "progress": self.progress.state_dict(),
                "rng": ckpt.rng_state(), "seed": self.seed, "world_size": self.world_size,
                "num_epochs": self.schedule.num_epochs,
                "iterations_per_epoch": self.schedule.iterations_per_epoch}

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.iteration = int(state["epoch"]), int(state["iteration"])
        self.best_val_loss = float(state["best_val_loss"])
        self.progress.load_state_dict(state["progress"])
        ckpt.set_rng_state(state["rng"])

    def save(self, name: str) -> None:
        """Rank 0 writes the checkpoint (atomically); the other ranks wait until it is there."""
        if self.rank == 0:
            ckpt.save_checkpoint(self.state_dict(), self.output_folder / name)
        distributed.barrier()

    def resume(self) -> Path | None:
        """Load the fold's newest checkpoint (final or latest) and return its path; None if there is none."""
        path = ckpt.resume_checkpoint(self.output_folder)
        if path is None:
            return None
        state = ckpt.load_checkpoint(path)   # on the CPU: load_state_dict moves weights and Adam state to the device
        ours = {**self.metadata, "seed": self.seed}
        for key in ("kind", "task", "configuration", "plans_name", "fold", "seed"):
            if key in ours and state.get(key) != ours[key]:
                raise ckpt.CheckpointError(f"{path} belongs to another run ({key} {state.get(key)!r}, this run "
                                           f"{ours[key]!r}). Fix: train without --c, or resume with its settings.")
        if self.on_resume is not None:
            self.on_resume(state)
        self.load_state_dict(state)
        if int(state.get("world_size", 1)) != self.world_size:
            self.progress.log(f"note: {path.name} was trained with {state.get('world_size')} process(es), this run has "
                              f"{self.world_size}: the per-rank batches differ from an uninterrupted run's")
        return path


# ------------------------------------------------------------------ assembling a trainer from plans and data


@dataclass
class RunSpec:
    """What `diffens_train DATASET TASK CONFIG ...` trains, resolved against the plans and folders."""

    dataset_name: str
    plans: dict
    plans_name: str
    task: str
    configuration: str            # plans configuration of the topology
    name: str                     # configuration name the results are saved under (fusion: --name)
    fold: int | str
    kind: str                     # "expert" | "ensembler"
    preprocessed_dataset_folder: Path
    output_folder: Path
    train_cases: list = field(default_factory=list)
    val_cases: list = field(default_factory=list)
    experts: list | None = None   # ensembler: the --experts TASK:CONFIG list (None: the plans' own)


def parse_fold(fold) -> int | str:
    """0, "0" -> 0; "all" -> "all" (train on every case, validate on every case, as nnU-Net)."""
    if str(fold) == "all":
        return "all"
    try:
        return int(fold)
    except (TypeError, ValueError):
        raise TrainingSetupError(f"-f {fold!r}: give a fold number (0, 1, ...) or 'all'.") from None


def fold_cases(preprocessed_dataset_folder: Path, fold) -> tuple[list, list]:
    """(train case ids, validation case ids) of a fold of splits_final.json ("all": every case for both)."""
    from diffens_auto.training.data_loading import split_case_ids
    try:
        return split_case_ids(preprocessed_dataset_folder, fold)
    except ValueError as e:
        raise TrainingSetupError(f"-f {fold}: {e}") from None


def resolve_run(dataset, task: str, configuration: str, fold=0, plans_name: str | None = None,
                experts: list | None = None, name: str | None = None) -> RunSpec:
    """Check the request against the plans and find its folders (no training, no files written)."""
    dataset_name = resolve_dataset_name(dataset)
    preprocessed = paths.preprocessed_folder() / dataset_name
    plans = load_plans(preprocessed, plans_name)
    if task not in plans["tasks"]:
        raise TrainingSetupError(f"No task '{task}' in the plans (tasks: {sorted(plans['tasks'])}).")
    config = plans["configurations"].get(configuration)
    if config is None:
        raise TrainingSetupError(f"No configuration '{configuration}' in plans {plans['plans_name']} "
                                 f"(configurations: {sorted(plans['configurations'])}).")
    if experts and config["kind"] != "ensembler":
        raise TrainingSetupError(f"--experts builds a fusion ensembler from an ensembler topology; '{configuration}'"
                                 f" is an expert. Use e.g. 3d_ensembler --experts sr:2d_axial mt:2d_axial --name ...")
    if bool(experts) != bool(name):
        raise TrainingSetupError("--experts and --name go together: a fusion ensembler (--experts TASK:CONFIG ...) "
                                 "is saved under its own configuration name (--name, e.g. 3d_fusion).")
    if name and name in plans["configurations"]:
        raise TrainingSetupError(f"--name {name}: choose a name that is not a plans configuration "
                                 f"({sorted(plans['configurations'])}), e.g. 3d_fusion.")
    fold = parse_fold(fold)
    train_cases, val_cases = fold_cases(preprocessed, fold)
    output = fold_folder(paths.results_folder() / dataset_name, task, name or configuration, plans["plans_name"], fold)
    return RunSpec(dataset_name, plans, plans["plans_name"], task, configuration, name or configuration, fold,
                   config["kind"], preprocessed, output, train_cases, val_cases, list(experts) if experts else None)


def make_schedule(plans: dict, configuration: str, num_epochs: int | None = None,
                  iterations_per_epoch: int | None = None) -> Schedule:
    """The plans' training schedule, with --epochs / --iterations_per_epoch overrides.

    An ensembler's --epochs N keeps the plans' pretrain : fine-tune proportion (N pretrain / total, rounded down).
    """
    config = plans["configurations"][configuration]
    kind = config["kind"]
    training = plans["training"][kind]
    iterations = int(iterations_per_epoch or training["iterations_per_epoch"])
    val_iterations, every = int(training["val_iterations"]), int(training["checkpoint_every"])
    if kind == "expert":
        epochs = num_epochs if num_epochs is not None else training["num_epochs"]
        stage = Stage("train", int(epochs), tuple(config["patch_size"]),
                      int(config["batch_size"]))
        return Schedule((stage,), iterations, val_iterations, every, stage)
    pretrain, finetune = int(training["pretrain_epochs"]), int(training["finetune_epochs"])
    if num_epochs is not None:
        pretrain, finetune = num_epochs * pretrain // max(pretrain + finetune, 1), num_epochs
        finetune -= pretrain
    # fine_tune_shape is the whole crop, or (patch_wise plans) the largest patch that fits the memory budget
    fine = Stage("finetune", finetune, tuple(config["fine_tune_shape"]), int(config["batch_size"]))
    stages = [Stage("pretrain", pretrain, tuple(config["patch_size"]), int(config["batch_size"])), fine]
    return Schedule(tuple(s for s in stages if s.num_epochs > 0) or (fine,), iterations, val_iterations, every, fine)


def per_rank_schedule(schedule: Schedule, world_size: int) -> Schedule:
    """The schedule one of `world_size` ranks trains: each training stage's (global) batch split evenly.

    Validation keeps the global batch: the ranks share out its batches (Trainer.validation_loss).
    """
    if world_size == 1:
        return schedule
    try:
        stages = tuple(dataclasses.replace(s, batch_size=distributed.per_rank_batch_size(
            s.batch_size, world_size, f"stage '{s.name}'")) for s in schedule.stages)
    except distributed.DistributedSetupError as e:
        raise TrainingSetupError(str(e)) from None
    return dataclasses.replace(schedule, stages=stages)


def check_device(device) -> torch.device:
    """The training device, TrainingSetupError with the fix when this machine lacks it."""
    return devices.check_device(device, TrainingSetupError)


def default_loaders(run: RunSpec) -> LoaderFactory:
    """The training data loaders (training/data_loading.py) of a run as a LoaderFactory.

    Training batches use `diffens_n_proc_DA` augmentation workers; validation batches (few, not augmented) are
    made in-process.
    """
    from diffens_auto.training.data_loading import EnsemblerDataLoader, ExpertDataLoader

    data_folder = run.preprocessed_dataset_folder / run.plans["data_identifier"]

    def factory(split: str, stage: Stage, seed: int, epoch: int):
        validation = split == "val"
        cases = run.val_cases if validation else run.train_cases
        common = dict(validation=validation, batch_size=stage.batch_size, num_workers=0 if validation else None)
        if run.kind == "expert":
            return ExpertDataLoader(data_folder, cases, run.plans, run.task, run.configuration, seed, epoch, **common)
        return EnsemblerDataLoader(data_folder, cases, run.plans, run.task, run.configuration, seed, epoch,
                                   patch_size=list(stage.patch_size), **common)
    return factory


def _metadata(run: RunSpec, network: dict) -> dict:
    plans, config = run.plans, run.plans["configurations"][run.configuration]
    task_plans = plans["tasks"][run.task]
    metadata = {"kind": run.kind, "dataset_name": run.dataset_name, "plans_name": run.plans_name, "task": run.task,
                "configuration": run.name, "base_configuration": run.configuration, "fold": run.fold,
                "network": network, "parametrization": task_plans["parametrization"],
                "task_plans": json.loads(json.dumps(task_plans)), "patch_size": list(config["patch_size"])}
    if run.kind == "expert":
        metadata["slice_axis"] = int(config["slice_axis"])
    else:
        metadata.update(fine_tune_shape=list(config["fine_tune_shape"]), patch_wise=bool(config.get("patch_wise")),
                        expert_slice_batch_size=int(config["expert_slice_batch_size"]),
                        ensembler_lambda=float(task_plans.get("ensembler_lambda", 1.0)))
    return metadata


def _ensembler_parts(run: RunSpec, device):
    """Frozen experts (checked to exist), the ensembler network dict and the ensembler itself."""
    specs = expert_specs(run.plans, run.configuration, run.task, run.experts)
    checkpoint_paths = check_experts_trained(specs, run.output_folder.parents[2], run.dataset_name,
                                             run.plans_name, run.fold)
    frozen = load_frozen_experts(specs, checkpoint_paths, run.plans, run.configuration, run.task, device)
    parametrization = run.plans["tasks"][run.task]["parametrization"]
    for expert in frozen:
        if expert.record["parametrization"] != parametrization:
            record = expert.record
            raise ExpertMismatchError(f"Expert {record['name']} predicts eps of '{record['parametrization']}' but "
                                      f"task '{run.task}' uses '{parametrization}'. Fix: retrain the expert with the "
                                      "current plans.")
    network = ensembler_network(run.plans, run.configuration, run.task, specs)
    model = Ensembler(network, [s.name for s in specs], [e.record["parametrization"] for e in frozen],
                      run.plans["tasks"][run.task].get("ensembler_lambda", 1.0))
    return frozen, network, model


def build_trainer(run: RunSpec, device="cpu", num_epochs: int | None = None, iterations_per_epoch: int | None = None,
                  seed: int = 0, rank: int = 0, world_size: int = 1, loaders: LoaderFactory | None = None,
                  wrap_model: Callable | None = None, echo: bool = True) -> Trainer:
    """A Trainer for a resolved run: model (seeded init), objective, schedule, loaders and checkpoint metadata.

    `wrap_model(model) -> model` is where DistributedDataParallel wraps the network (after it is on `device`);
    with world_size > 1 each rank trains on its share of every stage's batch (`per_rank_schedule`).
    """
    device = check_device(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True     # fixed shapes per stage: let cuDNN pick its fastest kernels
    ckpt.seed_everything(seed)
    on_resume = None
    if run.kind == "expert":
        network = network_for_task(run.plans, run.configuration, run.task)
        model, objective = build_expert(network), ExpertObjective()
    else:
        frozen, network, model = _ensembler_parts(run, device)
        objective = EnsemblerObjective(frozen, want_features=bool(network.get("feature_injection")))

        def on_resume(state):
            check_expert_hashes(state["experts"], frozen)
    metadata = _metadata(run, network)
    if run.kind == "ensembler":
        metadata["experts"] = [e.record for e in objective.experts]
    model = model.to(device)
    if wrap_model is not None:
        model = wrap_model(model)
    training = run.plans["training"][run.kind]
    schedule = per_rank_schedule(make_schedule(run.plans, run.configuration, num_epochs, iterations_per_epoch),
                                 world_size)
    return Trainer(model, objective, NoiseSchedule.from_plans(run.plans["diffusion"]), schedule,
                   loaders or default_loaders(run), run.output_folder, lr=float(training["lr"]),
                   ema_decay=float(training["ema_decay"]), metadata=metadata, device=device, seed=seed, rank=rank,
                   world_size=world_size, echo=echo, on_resume=on_resume)


def train(dataset, task: str, configuration: str, fold=0, plans_name: str | None = None,
          continue_training: bool = False, device="cpu", num_epochs: int | None = None,
          iterations_per_epoch: int | None = None, experts: list | None = None, name: str | None = None,
          seed: int = 0, loaders: LoaderFactory | None = None, echo: bool = True, num_gpus: int = 1) -> Path:
    """Train one configuration of one task and fold; return its output folder (API of diffens_train).

    dataset: id or DatasetXXX_Name; fold: int or "all"; experts: ["TASK:CONFIG", ...] with name: a fusion
    ensembler from experts of other tasks. Results: diffens_results/DatasetXXX/TASK/CONFIG__PLANS/fold_F/.
    num_gpus > 1: that many data-parallel processes on this machine (`loaders`, if given, must pickle); under
    torchrun this process is one rank of the job torchrun started (leave num_gpus at 1).
    """
    run = resolve_run(dataset, task, configuration, fold, plans_name, experts, name)
    options = (num_epochs, iterations_per_epoch, seed, continue_training, loaders, echo)
    try:
        torchrun = distributed.torchrun_context(device)
    except distributed.DistributedSetupError as e:
        raise TrainingSetupError(str(e)) from None
    if torchrun is None and num_gpus == 1:
        return _train_rank(distributed.RankContext(0, 1, 0, torch.device(device)), run, *options)
    if torchrun is not None and num_gpus != 1:
        raise TrainingSetupError(f"-num_gpus {num_gpus} under torchrun: the processes are torchrun's "
                                 "(--nnodes, --nproc_per_node); leave -num_gpus out.")
    world_size = torchrun.world_size if torchrun is not None else num_gpus
    check_data_parallel(run, device, world_size, torchrun is None, num_epochs, iterations_per_epoch)
    distributed.launch(_train_rank, num_gpus, device, run, *options)
    return run.output_folder


def check_data_parallel(run: RunSpec, device, world_size: int, on_this_machine: bool = True,
                        num_epochs: int | None = None, iterations_per_epoch: int | None = None) -> None:
    """Refuse a data-parallel request before any process starts (device, process count, batch split)."""
    try:
        distributed.check_world(world_size, check_device(device), on_this_machine)
    except distributed.DistributedSetupError as e:
        raise TrainingSetupError(str(e)) from None
    per_rank_schedule(make_schedule(run.plans, run.configuration, num_epochs, iterations_per_epoch), world_size)


def _train_rank(context: distributed.RankContext, run: RunSpec, num_epochs, iterations_per_epoch, seed,
                continue_training, loaders, echo) -> Path:
    """One rank's training (all of it in a single process); module-level so that spawned ranks can import it."""
    trainer = build_trainer(run, context.device, num_epochs, iterations_per_epoch, seed, context.rank,
                            context.world_size, loaders=loaders, wrap_model=context.wrap, echo=echo)
    if context.rank == 0:
        write_model_files(run.output_folder.parent, run.plans, run.preprocessed_dataset_folder)
    return trainer.fit(continue_training)
