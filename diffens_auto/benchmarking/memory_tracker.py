"""Measured peak memory of one training step, to check the planner's memory model (documentation/networks.md).

`PeakMemoryTracker` is a TorchDispatchMode that sees every tensor an aten op returns. It counts each
tensor STORAGE once (a view or an in-place result shares its input's storage), from the op that
allocates it until its last reference dies (a weakref finalizer on the storage), and keeps the peak
of the live total. Memory an op uses only internally (oneDNN/cuDNN workspaces) is invisible, as are
tensors that existed before the block unless `track` registers them — which is what the planner's
`workspace` allowance and its parameter/optimizer components stand for.

`measure_training_step` runs one real training step (forward, MSE loss on the noise, backward, Adam
step, EMA update) of a plans configuration in float32 on the CPU and returns the tracked peak,
including the parameters, gradients, Adam moments and EMA copy, and for an ensembler the frozen
experts, their slice-batch forward and the restacked features they hand to the injection convs.
"""
import weakref
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from diffens_auto.diffusion import NoiseSchedule
from diffens_auto.diffusion.slicing import ExpertRunner
from diffens_auto.networks import Ensembler, build_expert, expert_input_channels


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


def _ema_update(ema: list, parameters: list, decay: float = 0.999) -> None:
    with torch.no_grad():
        for average, parameter in zip(ema, parameters):
            average.lerp_(parameter, 1 - decay)


class _Step:
    """The pieces of one training step of a configuration: model, optimizer, EMA and a step function."""

    def __init__(self, configuration: dict, experts: dict | None, shape, slice_batch_size: int, seed: int):
        torch.manual_seed(seed)
        self.configuration, self.network = configuration, configuration["network"]
        self.batch = configuration["batch_size"]
        self.shape = list(shape)
        self.schedule = NoiseSchedule.linear()
        self.ensembler = configuration.get("kind") == "ensembler"
        self.runners = []
        if self.ensembler:
            names = configuration["experts"]
            self.model = Ensembler(self.network, names, ["epsilon_target"] * len(names))
            n_cond = self.network["in_channels"] - 1 - len(names)
            for name in names:
                # a configuration's network has the largest in_channels over the tasks; match the ensembler's n_cond
                network = experts[name]["network"]
                network = {**network, "in_channels": expert_input_channels(
                    n_cond, network.get("context_slices", 0), network.get("position_channels", 0))}
                expert = build_expert(network).eval()
                expert.requires_grad_(False)
                self.runners.append(ExpertRunner.from_network(expert, network, experts[name]["slice_axis"],
                                                              slice_batch_size, name=name))
            self.condition_channels = n_cond
        else:
            self.model = build_expert(self.network)
            self.condition_channels = self.network["in_channels"] - 1
        self.model.train()
        self.parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.parameters, lr=1e-4)
        self.ema = [p.detach().clone() for p in self.parameters]

    def resident(self) -> list:
        """Tensors alive across steps: weights, Adam moments, EMA, frozen experts' weights."""
        experts = [p for runner in self.runners for p in runner.expert.parameters()]
        return [*self.model.parameters(), *_optimizer_state(self.optimizer), *self.ema, *experts]

    def __call__(self, tracker: PeakMemoryTracker | None = None) -> None:
        """Forward, MSE on the noise, backward, Adam step, EMA update (Diff-Ensembler Alg. 1 for an ensembler)."""
        lap = tracker.lap if tracker is not None else (lambda label: None)
        self.optimizer.zero_grad(set_to_none=True)
        y0 = torch.randn(self.batch, 1, *self.shape)
        condition = torch.randn(self.batch, self.condition_channels, *self.shape)
        noise = torch.randn_like(y0)
        t = torch.randint(0, self.schedule.num_train_steps, (self.batch,))
        y_t = self.schedule.q_sample(y0, t, noise)
        lap("inputs")
        if self.ensembler:
            want = bool(self.model.feature_injection)       # the small ensembler takes no features
            outputs = [runner(y_t, condition, t, want_features=want) for runner in self.runners]
            lap("expert_forward")
            features = {runner.name: f for runner, (_, f) in zip(self.runners, outputs)} if want else None
            eps_hat = self.model(condition, y_t, [eps for eps, _ in outputs], t, features)
        else:
            eps_hat, _ = self.model(torch.cat([y_t, condition], dim=1), t)
        loss = F.mse_loss(eps_hat, noise)
        lap("forward")
        loss.backward()
        lap("backward")
        self.optimizer.step()
        _ema_update(self.ema, self.parameters)
        lap("optimizer_step")


def measure_training_step(configuration: dict, *, experts: dict | None = None, shape=None,
                          slice_batch_size: int | None = None, seed: int = 0) -> StepMeasurement:
    """Peak live bytes of one steady-state float32 CPU training step of a plans configuration.

    A first (untracked) step creates the Adam moments; the measured second step counts them, the
    weights and the EMA copy as resident, and everything the step allocates (inputs, frozen experts'
    slice batches and restacked outputs, activations, gradients) while it is alive. `shape` and
    `slice_batch_size` default as in `estimate_training_memory`.
    """
    if shape is None:
        shape = configuration.get("fine_tune_shape") or configuration["patch_size"]
    if slice_batch_size is None:
        slice_batch_size = configuration.get("expert_slice_batch_size", 1)
    step = _Step(configuration, experts, shape, slice_batch_size, seed)
    step()                                     # warm-up: Adam's moments exist in every later step
    tracker = PeakMemoryTracker()
    tracker.track(step.resident())
    resident = tracker.live_bytes
    with tracker:
        step(tracker)
    return StepMeasurement(peak_bytes=tracker.peak_bytes, resident_bytes=resident,
                           phase_peaks=dict(tracker.phase_peaks))

