"""The training loop of the 2D experts and the 3D ensembler: one loop, two objectives (documentation/training.md).

Both are trained with the "simple" loss of DDPM (Ho et al. 2020, Eq. 14) on what the task's networks predict
(plans `prediction`, diffusion/prediction.py):
    L = || target - f(y_t, condition, t) ||^2,   y_t = sqrt(alpha_bar_t) y0 + sqrt(1 - alpha_bar_t) eps,
target = eps ("epsilon") or v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) y0 ("v"), with t uniform in [0, T)
and eps ~ N(0, I). An expert predicts eps from cat([y_t, condition]) on slices; the
ensembler fuses the frozen experts' estimates over a 3D patch (Diff-Ensembler Eq. 5-6); see objectives.py.

`Trainer` is built from parts (model, objective, noise schedule, epoch schedule, a loader factory) so tests can
drive it with in-memory batches; assembly.py builds those parts from a plans file and the preprocessed data.
Data-parallel training (distributed.py) runs one Trainer per rank with `rank`, `world_size` and a
DistributedDataParallel-wrapped `model`: each rank trains on its share of the batch, logged losses are averaged
over the ranks, validation batches are shared out, and only rank 0 writes files (with barriers around checkpoint
writes, reads and the fresh-start cleanup).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from diffens_auto import paths
from diffens_auto.devices import autocast_for
from diffens_auto.diffusion import NoiseSchedule
from diffens_auto.diffusion.prediction import check_prediction, training_target
from diffens_auto.model_folder import checkpoints as ckpt
from diffens_auto.training import distributed, rng
from diffens_auto.training.ema import EMA, unwrap
from diffens_auto.training.errors import TrainingSetupError
from diffens_auto.training.progress import Progress
from diffens_auto.training.schedule import EpochSchedule, Stage

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}

# A loader factory: (split "train" | "val", stage, seed, epoch) -> iterable of batch dicts of float32 tensors.
LoaderFactory = Callable[[str, Stage, int, int], Iterable[dict]]


def close_loader(loader) -> None:
    """Stop a loader's worker processes, if it has any."""
    close = getattr(loader, "close", None)
    if callable(close):
        close()


def make_optimizer(name: str, parameters, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The plans' optimizer ("adam" or "adamw") over `parameters` with its learning rate and weight decay."""
    if name not in OPTIMIZERS:
        raise TrainingSetupError(f"training.optimizer {name!r} in the plans: use one of {sorted(OPTIMIZERS)}. Fix: "
                                 "edit the plans file (its training section) or plan again.")
    return OPTIMIZERS[name](parameters, lr=lr, weight_decay=weight_decay)


def seed_for(*parts: int) -> int:
    """A 63-bit seed mixing integers (seed, rank, epoch ...) without collisions between nearby tuples."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class Trainer:
    """Epochs of noise-prediction steps with EMA, validation loss, checkpoints, log and progress.png."""

    def __init__(self, model, objective, noise_schedule: NoiseSchedule, schedule: EpochSchedule, loaders: LoaderFactory,
                 *, output_folder: str | Path, lr: float, ema_decay: float, optimizer: str = "adam",
                 weight_decay: float = 0.0, metadata: dict | None = None,
                 device="cpu", seed: int = 0, rank: int = 0, world_size: int = 1, echo: bool = True,
                 on_resume: Callable[[dict], None] | None = None, prediction: str = "epsilon",
                 dtype: str | None = None):
        """`dtype`: the plans' activation dtype, which the forward passes autocast to where devices.autocast_for says."""
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model
        self.objective = objective
        self.noise_schedule = noise_schedule
        self.prediction = check_prediction(prediction)
        self.schedule = schedule
        self.loaders = loaders
        self.output_folder = Path(output_folder)
        self.metadata = dict(metadata or {})
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.optimizer = make_optimizer(optimizer, unwrap(model).parameters(), lr, weight_decay)
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
        return autocast_for(self.dtype, self.device, force=paths.force_autocast())

    def loss(self, model, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """MSE(output, eps or v) for y_t = q_sample(y0, t, eps) (DDPM Eq. 14, 'simple' loss)."""
        y_t = self.noise_schedule.q_sample(batch["y0"], t, noise)
        with self._autocast():
            output = self.objective(model, batch, y_t, t)
        return F.mse_loss(output.float(), training_target(self.noise_schedule, self.prediction, batch["y0"], noise, t))

    def step(self, batch: dict, t: torch.Tensor, noise: torch.Tensor) -> float:
        """One optimizer step (and EMA update) on a batch with given (t, eps); returns the loss."""
        self.model.train()
        # the previous step's gradients go before the forward: the planner's memory model never holds both
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.model, batch, t, noise)
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
                "rng": rng.rng_state(), "seed": self.seed, "world_size": self.world_size,
                "num_epochs": self.schedule.num_epochs,
                "iterations_per_epoch": self.schedule.iterations_per_epoch}

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.model).load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.iteration = int(state["epoch"]), int(state["iteration"])
        self.best_val_loss = float(state["best_val_loss"])
        self.progress.load_state_dict(state["progress"])
        rng.set_rng_state(state["rng"])

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
