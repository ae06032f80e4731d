"""Ensembling strategies: volume denoisers eps_hat = f(y_t, condition, t) built from 2D experts (Diff-Ensembler Tab. 1).

Every strategy is a callable `strategy(y_t (B, 1, X, Y, Z), condition (B, n_cond, X, Y, Z), t, positions=None)
-> eps (B, 1, X, Y, Z)` with `t` an integer training step (or a (B,) tensor), has `.runners` and `.reset()`, to be
called before each new sampling run (only TPDM keeps state: whose turn it is). `positions` is the experts' frame
(1 or B, 3 [+ 1], X, Y, Z) (`slicing.expert_frame`): the coordinates that experts with position channels see,
then the condition's non-zero mask for experts planned with a mask channel; None means the coordinates of y_t's
own grid (and no mask, which such experts refuse).

- `SingleExpert`: one expert over every slice of its plane (Palette 2D / 2.5D).
- `TPDM`: one expert per timestep, switching when t changes (TPDM's released sampler, see the class).
- `Average`: the weighted mean of the experts' eps (TOSM with three planes, MADM with 2.5D experts).
- `Learned`: the 3D ensembler fed with every expert's eps (and restacked features) (Diff-Ensembler Eq. 5-6).
- `Windowed`: any of them over Gaussian sliding windows (patch_wise plans, volumes larger than the crop), each
  window seeing its crop of the whole volume's position channels.

Experts run without autograd (see `ExpertRunner`); `Learned` runs the ensembler under the caller's grad mode
unless `grad=False` (the default), which switches autograd off for sampling.
"""
import contextlib
from collections.abc import Mapping, Sequence

import torch

from .slicing import ExpertRunner, full_precision, needs_frame, position_channels, timesteps_for
from .sliding_window import sliding_window

EXPERT_CONFIGURATIONS = ("2d_axial", "2d_coronal", "2d_sagittal")


def _runner_list(runners) -> list:
    """Runners given as a mapping (name -> runner) or a sequence, as a list in their order."""
    return list(runners.values()) if isinstance(runners, Mapping) else list(runners)


class SingleExpert:
    """One expert's eps volume (Eq. 4: every slice of its plane, restacked)."""

    def __init__(self, runner: ExpertRunner):
        """Wrap one `ExpertRunner`."""
        self.runner = runner
        self.runners = [runner]

    def __call__(self, y_t, condition, t, positions=None):
        """eps (B, 1, X, Y, Z) of the expert."""
        return self.runner(y_t, condition, t, positions=positions)[0]

    def reset(self):
        """Nothing to reset (stateless)."""


def _timestep_key(t) -> tuple:
    """t (int or tensor) as a hashable tuple of ints, to notice when the sampler moves on."""
    return tuple(int(v) for v in torch.as_tensor(t).reshape(-1).tolist())


class TPDM:
    """One expert per timestep, switching to the next turn when t changes (TPDM's released sampler).

    TPDM's code (`is_primary_tern(i, K)`) uses the primary expert at step i unless i % K == K - 1, when the
    auxiliary expert runs; K = 2 (the default here, and what Diff-Ensembler's baseline does) is strict
    alternation: steps 0, 2, 4, ... -> runners[0], steps 1, 3, 5, ... -> runners[1]. With more than two runners
    and period None they take turns in order (step i -> runners[i % N]). A step is a timestep, not a call:
    further calls with the same t (sliding windows, test-time adaptation) use the same expert, and the next
    turn starts when t changes. Call `.reset()` before each sampling run so that its first step uses
    runners[0]; `.history` records the runner index of every step.
    """

    def __init__(self, runners: Sequence[ExpertRunner], period: int | None = None):
        """Two runners (primary, auxiliary) with TPDM's period K >= 2, or N runners in turn (period None)."""
        runners = _runner_list(runners)
        if len(runners) < 2:
            raise ValueError(f"TPDM alternates between at least two experts, got {len(runners)}.")
        if period is not None and (len(runners) != 2 or int(period) != period or period < 2):
            raise ValueError(f"TPDM period K needs exactly two experts and an integer K >= 2, got K={period!r} "
                             f"with {len(runners)} experts.")
        self.runners = runners
        self.period = period
        self.reset()

    def expert_index(self, turn: int) -> int:
        """Which runner serves step number `turn` (0-based since the last reset)."""
        if self.period is None:
            return turn % len(self.runners)
        return 1 if turn % self.period == self.period - 1 else 0

    def __call__(self, y_t, condition, t, positions=None):
        """eps of this step's expert; a t other than the last call's starts the next step."""
        key = _timestep_key(t)
        if key != self._last_t:
            self.turn = self.turn + 1 if self._last_t is not None else 0
            self._last_t = key
            self.history.append(self.expert_index(self.turn))
        return self.runners[self.history[-1]](y_t, condition, t, positions=positions)[0]

    def reset(self):
        """Start again with runners[0] on the next call."""
        self.turn = 0
        self._last_t = None
        self.history = []


class Average:
    """Weighted mean of the experts' eps: sum_i w_i eps_i / sum_i w_i (TOSM: three planes; MADM: 2.5D experts)."""

    def __init__(self, runners: Sequence[ExpertRunner], weights: Sequence[float] | None = None):
        """Runners and optional non-negative weights (default equal); the weights are normalised to sum 1."""
        runners = _runner_list(runners)
        if not runners:
            raise ValueError("Average needs at least one expert.")
        weights = [1.0] * len(runners) if weights is None else [float(w) for w in weights]
        if len(weights) != len(runners) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"Average needs one non-negative weight per expert with a positive sum, got {weights} "
                             f"for {len(runners)} experts.")
        self.runners = runners
        self.weights = [w / sum(weights) for w in weights]

    def __call__(self, y_t, condition, t, positions=None):
        """The weighted mean eps volume, accumulated in place (one extra volume)."""
        total = None
        for runner, weight in zip(self.runners, self.weights):
            eps = runner(y_t, condition, t, positions=positions)[0]
            total = eps * weight if total is None else total.add_(eps, alpha=weight)
        return total

    def reset(self):
        """Nothing to reset (stateless)."""


class Learned:
    """Diff-Ensembler: the 3D ensembler fuses every expert's eps (and restacked features) (Eq. 5-6).

    `runners` maps the ensembler's expert names (plans configuration names) to runners; a sequence is matched
    to `ensembler.experts` in order. For patch_wise plans wrap it in `Windowed` (build_strategy's `window`):
    experts and ensembler then run together on each window.
    """

    def __init__(self, ensembler, runners, want_features: bool | None = None, grad: bool = False):
        """Ensembler and runners; want_features None: whether the ensembler has feature-injection entries."""
        names = list(getattr(ensembler, "experts", None) or [])
        if isinstance(runners, Mapping):
            names = names or list(runners)
            missing = [n for n in names if n not in runners]
            if missing:
                raise ValueError(f"Learned: no runner for the ensembler's experts {missing}; got {list(runners)}.")
            runners = [runners[n] for n in names]
        else:
            runners = list(runners)
            names = names or [r.name or f"expert_{i}" for i, r in enumerate(runners)]
            if len(names) != len(runners):
                raise ValueError(f"Learned: the ensembler fuses {names} but {len(runners)} runners were given.")
        self.ensembler = ensembler
        self.names = names
        self.runners = runners
        if want_features is None:
            want_features = bool(getattr(ensembler, "feature_injection", None))
        self.want_features = want_features
        self.grad = grad
        self.autocast = contextlib.nullcontext      # the plans' precision (devices.autocast_for) or none
        self.compiled = None                        # torch.compile(ensembler) (paths.compile_networks)

    def __call__(self, y_t, condition, t, positions=None):
        """Experts on every slice of the volume, then the ensembler (Eq. 5 input, Eq. 6 output): eps (B, 1, X, Y, Z)."""
        with torch.set_grad_enabled(self.grad and torch.is_grad_enabled()):
            eps_list, features = [], {}
            for name, runner in zip(self.names, self.runners):
                eps, feature_maps = runner(y_t, condition, t, want_features=self.want_features, positions=positions)
                eps_list.append(eps)
                features[name] = feature_maps
            t_batch = timesteps_for(t, y_t.shape[0], y_t.device)
            with self.autocast():
                ensembler = self.ensembler if self.compiled is None else self.compiled
                output = ensembler(condition, y_t, eps_list, t_batch, features if self.want_features else None)
            return full_precision(output)

    def reset(self):
        """Nothing to reset (stateless)."""


class WithPositions:
    """A strategy run with a given expert frame (a prepared case's coordinates and mask) instead of its volume's."""

    def __init__(self, strategy, positions: torch.Tensor):
        self.strategy, self.positions = strategy, positions
        self.runners = getattr(strategy, "runners", [])

    def __call__(self, y_t, condition, t, positions=None):
        return self.strategy(y_t, condition, t, positions=self.positions if positions is None else positions)

    def reset(self) -> None:
        """Reset the wrapped strategy (TPDM's turn), if it keeps any state."""
        reset = getattr(self.strategy, "reset", None)
        if callable(reset):
            reset()


class Windowed:
    """A strategy run on Gaussian-weighted sliding windows and blended (`sliding_window`).

    Experts with position channels see, in every window, the window's crop of the WHOLE volume's coordinates
    (built once per call, or the frame given, with its mask), so a window's slices are where they are in the volume.
    A single window covering the volume is a plain call of the strategy.
    """

    def __init__(self, strategy, window, overlap: float = 0.5, sigma_scale: float = 0.125):
        """Wrap `strategy`; window (wx, wy, wz), overlap and sigma_scale as the plans' inference entry."""
        self.strategy = strategy
        self.window = tuple(int(w) for w in window)
        self.overlap = overlap
        self.sigma_scale = sigma_scale
        self.runners = strategy.runners
        self.uses_positions = any(needs_frame(r) for r in self.runners)

    def __call__(self, y_t, condition, t, positions=None):
        """The strategy's eps, blended over windows of the volume."""
        if positions is None and self.uses_positions:
            positions = position_channels(y_t.shape[2:], device=y_t.device, dtype=y_t.dtype)
        inputs = [y_t, condition] + ([positions] if positions is not None else [])

        def on_window(y, c, *p):
            return self.strategy(y, c, t, positions=p[0] if p else None)

        return sliding_window(on_window, inputs, self.window, overlap=self.overlap, sigma_scale=self.sigma_scale,
                              out_channels=y_t.shape[1])

    def reset(self):
        """Reset the wrapped strategy."""
        self.strategy.reset()


def build_strategy(name: str, runners, ensembler=None, *, weights=None, tpdm_period: int | None = None,
                   window=None, overlap: float = 0.5, sigma_scale: float = 0.125):
    """A strategy by name: "single" or an expert configuration ("2d_axial", ...), "tpdm", "average",
    "learned" (or an ensembler configuration "3d_ensembler", "3d_ensembler_small"); with `window` wrapped
    in `Windowed(strategy, window, overlap, sigma_scale)`."""
    strategy = _strategy(name, runners, ensembler, weights, tpdm_period)
    return strategy if window is None else Windowed(strategy, window, overlap=overlap, sigma_scale=sigma_scale)


def _strategy(name: str, runners, ensembler, weights, tpdm_period):
    """The unwindowed strategy `name` (see build_strategy)."""
    named = dict(runners) if isinstance(runners, Mapping) else None
    listed = _runner_list(runners)
    if name in EXPERT_CONFIGURATIONS or (named is not None and name in named and not name.startswith("3d_")):
        if named is None or name not in named:
            raise ValueError(f"Strategy '{name}' needs a runner named '{name}'; got "
                             f"{list(named) if named is not None else 'an unnamed list'}.")
        return SingleExpert(named[name])
    if name == "single":
        if len(listed) != 1:
            raise ValueError(f"Strategy 'single' needs exactly one expert, got {len(listed)}; "
                             "name the expert configuration instead (e.g. '2d_axial').")
        return SingleExpert(listed[0])
    if name == "tpdm":
        return TPDM(listed, period=tpdm_period)
    if name == "average":
        return Average(listed, weights=weights)
    if name == "learned" or name.startswith("3d_ensembler"):
        if ensembler is None:
            raise ValueError(f"Strategy '{name}' needs a trained ensembler.")
        return Learned(ensembler, named if named is not None else listed)
    raise ValueError(f"Unknown strategy '{name}'; known: 'single', {', '.join(map(repr, EXPERT_CONFIGURATIONS))}, "
                     "'tpdm', 'average', 'learned' (or '3d_ensembler', '3d_ensembler_small').")
