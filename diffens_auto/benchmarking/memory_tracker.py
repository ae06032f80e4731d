"""Measured peak memory of one training step, to check the planner's memory model (documentation/networks.md).

`PeakMemoryTracker` is a TorchDispatchMode that sees every tensor an aten op returns. It counts each
tensor STORAGE once (a view or an in-place result shares its input's storage), from the op that
allocates it until its last reference dies (a weakref finalizer on the storage), and keeps the peak
of the live total. Memory an op uses only internally (oneDNN/cuDNN workspaces) is invisible, as are
tensors that existed before the block unless `track` registers them — which is what the planner's
`workspace` allowance and its parameter/optimizer components stand for.

`measure_training_step` runs one step of the project's own `Trainer.step` (forward, MSE loss on the noise,
backward, Adam step, EMA update) for a plans configuration in float32 on the CPU and returns the tracked peak,
including the parameters, gradients, Adam moments and EMA copy, and for an ensembler the frozen experts, their
slice-batch forward and the restacked features they hand to the injection convs. Its phases are marked with
PyTorch's module and optimizer hooks, so nothing of the step is re-implemented here.
"""
import tempfile
import weakref
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from diffens_auto.diffusion import NoiseSchedule
from diffens_auto.diffusion.slicing import ExpertRunner, expert_frame, position_channels
from diffens_auto.networks import Ensembler, build_expert, expert_input_channels
from diffens_auto.planning.planner import task_mask_channels
from diffens_auto.training.experts import FrozenExpert
from diffens_auto.training.objectives import EnsemblerObjective, ExpertObjective
from diffens_auto.training.schedule import EpochSchedule, Stage
from diffens_auto.training.trainer import Trainer


class PeakMemoryTracker(TorchDispatchMode):
    """Context manager tracking the bytes of live tensor storages allocated in its block, and their peak."""

    def __init__(self):
        super().__init__()
        self._live = {}          # storage data_ptr -> (generation, nbytes)
        self._generation = 0
        self.live_bytes = 0
        self.peak_bytes = 0
        self.phase_peaks = {}    # label -> peak since the previous lap
        self._phase_peak = 0

    def _add(self, storage) -> None:
        pointer, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0 or pointer in self._live:
            return
        self._generation += 1
        self._live[pointer] = (self._generation, nbytes)
        self.live_bytes += nbytes
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        self._phase_peak = max(self._phase_peak, self.live_bytes)
        weakref.finalize(storage, self._release, pointer, self._generation)

    def _release(self, pointer: int, generation: int) -> None:
        entry = self._live.get(pointer)
        if entry is not None and entry[0] == generation:
            del self._live[pointer]
            self.live_bytes -= entry[1]

    def track(self, *tensors) -> None:
        """Count already existing tensors (or iterables of them), e.g. parameters and optimizer state, as live."""
        for item in tensors:
            if isinstance(item, torch.Tensor):
                self._add(item.untyped_storage())
            elif isinstance(item, dict):
                self.track(*item.values())
            elif hasattr(item, "__iter__") and not isinstance(item, (str, bytes)):
                self.track(*item)

    def lap(self, label: str) -> int:
        """Record the peak since the previous lap under `label` and start the next phase at the current level."""
        self.phase_peaks[label] = self._phase_peak
        self._phase_peak = self.live_bytes
        return self.phase_peaks[label]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                # a view or in-place result of a tensor that was never tracked existed before the block
                if storage.data_ptr() not in inputs:
                    self._add(storage)
        return out


@dataclass
class StepMeasurement:
    """Peak live bytes of one training step, overall and per phase, with what was alive before it began."""

    peak_bytes: int
    resident_bytes: int                            # parameters, Adam moments, EMA, frozen experts (tracked at entry)
    phase_peaks: dict = field(default_factory=dict)


def _optimizer_state(optimizer) -> list:
    return [value for state in optimizer.state.values() for value in state.values() if isinstance(value, torch.Tensor)]


def _frozen_experts(configuration: dict, experts: dict, slice_batch_size: int) -> tuple[list[FrozenExpert], int]:
    """Untrained frozen experts of an ensembler configuration, and the number of condition channels they share."""
    network, names = configuration["network"], configuration["experts"]
    n_cond = network["in_channels"] - 1 - len(names)
    frozen = []
    for name in names:
        # a configuration's network has the largest in_channels over the tasks; match the ensembler's n_cond
        expert_network = experts[name]["network"]
        mask = task_mask_channels(expert_network.get("mask_channels", 0), n_cond)
        expert_network = {**expert_network, "mask_channels": mask, "in_channels": expert_input_channels(
            n_cond, expert_network.get("context_slices", 0), expert_network.get("position_channels", 0), mask)}
        expert = build_expert(expert_network).eval().requires_grad_(False)
        runner = ExpertRunner.from_network(expert, expert_network, experts[name]["slice_axis"], slice_batch_size,
                                           name=name)
        frozen.append(FrozenExpert(runner, {"name": name}))
    return frozen, n_cond


def _trainer(configuration: dict, experts: dict | None, slice_batch_size: int, output_folder: str):
    """The Trainer of one configuration (untrained networks) and the number of its condition channels."""
    network = configuration["network"]
    if configuration.get("kind") == "ensembler":
        frozen, n_cond = _frozen_experts(configuration, experts, slice_batch_size)
        names = configuration["experts"]
        model = Ensembler(network, names, ["epsilon_target"] * len(names))
        objective = EnsemblerObjective(frozen, want_features=bool(model.feature_injection))
    else:
        model, objective, n_cond = build_expert(network), ExpertObjective(), network["in_channels"] - 1
    stage = Stage("measure", 1, tuple(configuration["patch_size"]), int(configuration["batch_size"]))
    trainer = Trainer(model, objective, NoiseSchedule.linear(), EpochSchedule((stage,), 1, 0, 1, stage), None,
                      output_folder=output_folder, lr=1e-4, ema_decay=0.999, echo=False)
    return trainer, n_cond


def _resident(trainer: Trainer) -> list:
    """Tensors alive when a step starts: weights, their gradients, Adam moments, EMA, frozen experts' weights."""
    experts = [p for e in getattr(trainer.objective, "experts", []) for p in e.runner.expert.parameters()]
    parameters = list(trainer.model.parameters())
    gradients = [p.grad for p in parameters if p.grad is not None]
    return [*parameters, *gradients, *_optimizer_state(trainer.optimizer), *trainer.ema.model.parameters(), *experts]


def _mark_phases(trainer: Trainer, tracker: "PeakMemoryTracker") -> list:
    """Hooks that lap the tracker: inputs, expert_forward, forward, backward; returns their handles."""
    marked = set()

    def lap_once(label: str):
        def hook(*_):
            if label not in marked:            # an expert runs once per slice batch: mark its first call only
                marked.add(label)
                tracker.lap(label)
        return hook

    experts = getattr(trainer.objective, "experts", [])
    first_network = experts[0].runner.expert if experts else trainer.model
    handles = [first_network.register_forward_pre_hook(lap_once("inputs"))]
    if experts:
        handles.append(trainer.model.register_forward_pre_hook(lap_once("expert_forward")))
    handles.append(trainer.model.register_forward_hook(lap_once("forward")))
    handles.append(trainer.optimizer.register_step_pre_hook(lap_once("backward")))
    return handles


def _batch(trainer: Trainer, n_cond: int, generator: torch.Generator):
    """A random batch of the configuration's shape with (t, eps) drawn as the Trainer draws them."""
    stage = trainer.schedule.stages[0]
    shape = (stage.batch_size, 1, *stage.patch_size)
    batch = {"y0": torch.randn(shape, generator=generator),
             "condition": torch.randn((shape[0], n_cond, *shape[2:]), generator=generator)}
    experts = getattr(trainer.objective, "experts", [])
    if experts:     # an ensembler's batches carry the experts' frame, as the loader makes them
        mask = torch.ones(shape) if any(e.runner.mask_channels for e in experts) else None
        batch["positions"] = expert_frame(position_channels(shape[2:]).expand(shape[0], -1, *shape[2:]), mask)
    return (batch, *trainer.draw_t_and_noise(batch["y0"], generator))


def measure_training_step(configuration: dict, *, experts: dict | None = None, shape=None,
                          slice_batch_size: int | None = None, seed: int = 0) -> StepMeasurement:
    """Peak live bytes of one steady-state float32 CPU `Trainer.step` of a plans configuration.

    A first (untracked) step creates the Adam moments; the measured second step counts them, the
    weights and the EMA copy as resident, and everything the step allocates (inputs, frozen experts'
    slice batches and restacked outputs, activations, gradients) while it is alive. `shape` and
    `slice_batch_size` default as in `estimate_training_memory`.
    """
    if shape is None:
        shape = configuration.get("fine_tune_shape") or configuration["patch_size"]
    if slice_batch_size is None:
        slice_batch_size = configuration.get("expert_slice_batch_size", 1)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="diffens_memory_") as folder:
        trainer, n_cond = _trainer({**configuration, "patch_size": list(shape)}, experts, slice_batch_size, folder)
        trainer.step(*_batch(trainer, n_cond, generator))      # warm-up: Adam's moments exist in every later step
        tracker = PeakMemoryTracker()
        tracker.track(_resident(trainer))
        resident = tracker.live_bytes
        handles = _mark_phases(trainer, tracker)
        with tracker:
            trainer.step(*_batch(trainer, n_cond, generator))
            tracker.lap("optimizer_step")
        for handle in handles:
            handle.remove()
    return StepMeasurement(peak_bytes=tracker.peak_bytes, resident_bytes=resident,
                           phase_peaks=dict(tracker.phase_peaks))
