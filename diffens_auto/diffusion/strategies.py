"""Ensembling strategies: volume denoisers eps_hat = f(y_t, condition, t) built from 2D experts (Diff-Ensembler Tab. 1).

Every strategy is a callable `strategy(y_t (B, 1, X, Y, Z), condition (B, n_cond, X, Y, Z), t) -> eps (B, 1, X, Y, Z)`
with `t` an integer training step (or a (B,) tensor), and has `.reset()`, to be called before each new sampling
run (only TPDM keeps state: its call counter).

- `SingleExpert`: one expert over every slice of its plane (Palette 2D / 2.5D).
- `TPDM`: one expert per call, switching between calls (TPDM's released sampler, see the class).
- `Average`: the weighted mean of the experts' eps (TOSM with three planes, MADM with 2.5D experts).
- `Learned`: the 3D ensembler fed with every expert's eps (and restacked features) (Diff-Ensembler Eq. 5-6),
  optionally over Gaussian sliding windows (patch_wise plans).

Experts run without autograd (see `ExpertRunner`); `Learned` runs the ensembler under the caller's grad mode
unless `grad=False` (the default), which switches autograd off for sampling.
"""
from collections.abc import Mapping, Sequence

import torch

from .slicing import ExpertRunner, position_channels, timesteps_for
from .sliding_window import sliding_window

EXPERT_CONFIGURATIONS = ("2d_axial", "2d_coronal", "2d_sagittal")


class SingleExpert:
    """One expert's eps volume (Eq. 4: every slice of its plane, restacked)."""

    def __init__(self, runner: ExpertRunner):
        """Wrap one `ExpertRunner`."""
        self.runner = runner
        self.runners = [runner]

    def __call__(self, y_t, condition, t):
        """eps (B, 1, X, Y, Z) of the expert."""
        return self.runner(y_t, condition, t)[0]

    def reset(self):
        """Nothing to reset (stateless)."""


class TPDM:
    """One expert per call, switching between them from call to call (TPDM's released sampler).

    TPDM's code (`is_primary_tern(i, K)`) uses the primary expert on call i unless i % K == K - 1, when the
    auxiliary expert runs; K = 2 (the default here, and what Diff-Ensembler's baseline does) is strict
    alternation: calls 0, 2, 4, ... -> runners[0], calls 1, 3, 5, ... -> runners[1]. With more than two runners
    and period None they take turns in order (call i -> runners[i % N]). Call `.reset()` before each sampling
    run so that its first step uses runners[0]; `.history` records the runner index of every call.
    """

    def __init__(self, runners: Sequence[ExpertRunner], period: int | None = None):
        """Two runners (primary, auxiliary) with TPDM's period K >= 2, or N runners in turn (period None)."""
        runners = list(runners.values()) if isinstance(runners, Mapping) else list(runners)
        if len(runners) < 2:
            raise ValueError(f"TPDM alternates between at least two experts, got {len(runners)}.")
        if period is not None and (len(runners) != 2 or int(period) != period or period < 2):
            raise ValueError(f"TPDM period K needs exactly two experts and an integer K >= 2, got K={period!r} "
                             f"with {len(runners)} experts.")
        self.runners = runners
        self.period = period
        self.calls = 0
        self.history: list[int] = []

    def expert_index(self, call: int) -> int:
        """Which runner serves call number `call` (0-based since the last reset)."""
        if self.period is None:
            return call % len(self.runners)
        return 1 if call % self.period == self.period - 1 else 0

    def __call__(self, y_t, condition, t):
        """eps of this call's expert; advances the call counter."""
        index = self.expert_index(self.calls)
        self.calls += 1
        self.history.append(index)
        return self.runners[index](y_t, condition, t)[0]

    def reset(self):
        """Start again with runners[0] on the next call."""
        self.calls = 0
        self.history = []


class Average:
    """Weighted mean of the experts' eps: sum_i w_i eps_i / sum_i w_i (TOSM: three planes; MADM: 2.5D experts)."""

    def __init__(self, runners: Sequence[ExpertRunner], weights: Sequence[float] | None = None):
        """Runners and optional non-negative weights (default equal); the weights are normalised to sum 1."""
        runners = list(runners.values()) if isinstance(runners, Mapping) else list(runners)
        if not runners:
            raise ValueError("Average needs at least one expert.")
        weights = [1.0] * len(runners) if weights is None else [float(w) for w in weights]
        if len(weights) != len(runners) or any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"Average needs one non-negative weight per expert with a positive sum, got {weights} "
                             f"for {len(runners)} experts.")
        self.runners = runners
        self.weights = [w / sum(weights) for w in weights]

    def __call__(self, y_t, condition, t):
        """The weighted mean eps volume, accumulated in place (one extra volume)."""
        total = None
        for runner, weight in zip(self.runners, self.weights):
            eps = runner(y_t, condition, t)[0]
            total = eps * weight if total is None else total.add_(eps, alpha=weight)
        return total

    def reset(self):
        """Nothing to reset (stateless)."""


def _ensembler_uses_features(ensembler) -> bool:
    """Whether the ensembler has feature-injection entries (then the experts must return their features)."""
    network = getattr(ensembler, "network", None)
    if isinstance(network, Mapping):
        return bool(network.get("feature_injection"))
    return bool(getattr(ensembler, "feature_injection", None))


class Learned:
    """Diff-Ensembler: the 3D ensembler fuses every expert's eps (and restacked features) (Eq. 5-6).

    `runners` maps the ensembler's expert names (plans configuration names) to runners; a sequence is matched
    to `ensembler.experts` in order. With `window` (patch_wise plans) experts and ensembler run together on
    Gaussian-weighted sliding windows of that size; the experts then see the window's slices, and position
    channels are the window's crop of the whole volume's coordinates.
    """

    def __init__(self, ensembler, runners, window=None, overlap: float = 0.5, sigma_scale: float = 0.125,
                 want_features: bool | None = None, grad: bool = False):
        """Ensembler, runners, optional sliding window; want_features None: as the ensembler's feature injection."""
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
        self.window = None if window is None else tuple(int(w) for w in window)
        self.overlap = overlap
        self.sigma_scale = sigma_scale
        self.want_features = _ensembler_uses_features(ensembler) if want_features is None else want_features
        self.grad = grad

    def __call__(self, y_t, condition, t):
        """The ensembler's eps volume (B, 1, X, Y, Z), over sliding windows when a window is set."""
        with torch.set_grad_enabled(self.grad and torch.is_grad_enabled()):
            positions = None
            if any(r.position_channels for r in self.runners):
                positions = position_channels(y_t.shape[2:], device=y_t.device, dtype=y_t.dtype)
            if self.window is None:
                return self._fuse(y_t, condition, t, positions)
            inputs = [y_t, condition] + ([positions] if positions is not None else [])
            return sliding_window(lambda y, c, *p: self._fuse(y, c, t, p[0] if p else None), inputs, self.window,
                                  overlap=self.overlap, sigma_scale=self.sigma_scale, out_channels=1)

    def _fuse(self, y_t, condition, t, positions):
        """Experts on every slice of (a window of) the volume, then the ensembler (Eq. 5 input, Eq. 6 output)."""
        eps_list, features = [], {}
        for name, runner in zip(self.names, self.runners):
            eps, feature_maps = runner(y_t, condition, t, want_features=self.want_features, positions=positions)
            eps_list.append(eps)
            if self.want_features:
                features[name] = feature_maps
        t_batch = timesteps_for(t, y_t.shape[0], y_t.device)
        return self.ensembler(condition, y_t, eps_list, t_batch, features if self.want_features else None)

    def reset(self):
        """Nothing to reset (stateless)."""


def build_strategy(name: str, runners, ensembler=None, *, weights=None, tpdm_period: int | None = None,
                   window=None, overlap: float = 0.5, sigma_scale: float = 0.125):
    """A strategy by name: "single" or an expert configuration ("2d_axial", ...), "tpdm", "average",
    "learned" (or an ensembler configuration "3d_ensembler", "3d_ensembler_small")."""
    named = dict(runners) if isinstance(runners, Mapping) else None
    listed = list(runners.values()) if named is not None else list(runners)
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
        return Learned(ensembler, named if named is not None else listed, window=window, overlap=overlap,
                       sigma_scale=sigma_scale)
    raise ValueError(f"Unknown strategy '{name}'; known: 'single', {', '.join(map(repr, EXPERT_CONFIGURATIONS))}, "
                     "'tpdm', 'average', 'learned' (or '3d_ensembler', '3d_ensembler_small').")
