"""The 3D ensembler (Diff-Ensembler Sec. 3.3, Eq. 5-6): fuses the experts' noise estimates voxel-wise.

Input concat(conditions, y_t, eps_1, ..., eps_N) (Eq. 5). The experts' restacked encoder features enter
at every level through one aligning Conv3d each (kernel = stride = 2^l along the expert's stacking axis,
1 in-plane, zero-initialised as in the public code) and are added after the level's ResBlocks. The output
head gives N - 1 free weight maps and one residual map R; w_N = -(w_1 + ... + w_{N-1}) keeps the weights
zero-sum, so with the zero-initialised output conv an untrained ensembler returns the plain average.
"""
import torch
from torch import nn

from .blocks import zero_
from .unet import DiffusionUNet


def combine_expert_eps(expert_eps: list, weights: torch.Tensor, residual: torch.Tensor,
                       ensembler_lambda: float) -> torch.Tensor:
    """eps_hat = sum_i (1/N + w_i) eps_i + lambda R with zero-sum w (B, N, ...) and R (B, 1, ...)."""
    n = len(expert_eps)
    eps_hat = None
    # Diff-Ensembler Eq. 6 generalised to N experts; summed term by term so that with w = 0 and two
    # experts it is 0.5 a + 0.5 b, which equals (a + b) / 2 bitwise (halving is exact in binary floats)
    for i, eps in enumerate(expert_eps):
        term = (1.0 / n + weights[:, i:i + 1]) * eps
        eps_hat = term if eps_hat is None else eps_hat + term
    return eps_hat + ensembler_lambda * residual


class Ensembler(nn.Module):
    """Diff-Ensembler's 3D network: weight maps and residual from (conditions, y_t, experts' eps, features).

    `experts` names the experts in input order; `parametrization` is their common target parametrization
    (experts trained with different ones are refused), for training and prediction to check a loaded
    ensembler's experts against.
    """

    def __init__(self, network: dict, experts: list, parametrizations: list, ensembler_lambda: float = 1.0):
        super().__init__()
        experts, parametrizations = list(experts), list(parametrizations)
        if len(experts) != len(parametrizations):
            raise ValueError(f"{len(experts)} experts {experts} but {len(parametrizations)} parametrizations.")
        if len(set(parametrizations)) > 1:
            listing = ", ".join(f"{name}: {p}" for name, p in zip(experts, parametrizations))
            raise ValueError(f"The ensembler fuses noise estimates of one quantity, but its experts were trained "
                             f"with different parametrizations ({listing}); retrain them with the same one.")
        if network.get("spatial_dims") != 3:
            raise ValueError(f"The ensembler is a 3D network; this network dict has spatial_dims "
                             f"{network.get('spatial_dims')}.")
        if network["out_channels"] != len(experts):
            raise ValueError(f"The ensembler's out_channels ({network['out_channels']}) must equal its number of "
                             f"experts ({len(experts)}: N - 1 weight maps and one residual).")
        heads = {"weights": len(experts) - 1, "residual": 1}
        if "output_heads" in network and network["output_heads"] != heads:
            raise ValueError(f"The ensembler's output_heads {network['output_heads']} must be {heads} for its "
                             f"{len(experts)} experts (N - 1 free weight maps, then the residual R).")
        self.experts = experts
        self.parametrization = parametrizations[0] if parametrizations else None    # the experts' common one
        self.ensembler_lambda = float(ensembler_lambda)
        self.unet = DiffusionUNet.from_plans(network)
        self.feature_injection = [dict(entry) for entry in network.get("feature_injection", [])]
        self.injection_convs = nn.ModuleDict()
        for entry in self.feature_injection:
            if entry["expert"] not in experts:
                raise ValueError(f"feature_injection names expert '{entry['expert']}', which is not among the "
                                 f"ensembler's experts {experts}.")
            self.injection_convs[self._key(entry)] = zero_(nn.Conv3d(
                entry["in_channels"], entry["out_channels"], entry["kernel_size"], stride=entry["stride"]))

    @staticmethod
    def _key(entry: dict) -> str:
        return f"{entry['expert']}_level{entry['expert_level']}"

    def _injected(self, expert_features: dict | None) -> list | None:
        """Per ensembler level, the sum of the aligned expert features landing there (None where none).

        DiffusionUNet checks each sum against its level's shape; here only the summands must agree.
        """
        if not self.feature_injection:
            return None
        if expert_features is None:
            names = sorted({entry["expert"] for entry in self.feature_injection})
            raise ValueError(f"This ensembler injects features of {names}; pass expert_features (restacked "
                             f"per-level maps of each expert).")
        injected, sources = [None] * self.unet.num_levels, [[] for _ in range(self.unet.num_levels)]
        for entry in self.feature_injection:
            name, level = entry["expert"], entry["ensembler_level"]
            if name not in expert_features or len(expert_features[name]) <= entry["expert_level"]:
                raise ValueError(f"expert_features lacks level {entry['expert_level']} of expert '{name}'.")
            aligned = self.injection_convs[self._key(entry)](expert_features[name][entry["expert_level"]])
            sources[level].append(f"'{name}' level {entry['expert_level']} -> {tuple(aligned.shape)}")
            if injected[level] is not None and injected[level].shape != aligned.shape:
                raise ValueError(f"The expert features aligned to ensembler level {level} differ in shape "
                                 f"({', '.join(sources[level])}); restack every expert's features from one volume.")
            injected[level] = aligned if injected[level] is None else injected[level] + aligned
        return injected

    def weights_and_residual(self, condition: torch.Tensor, y_t: torch.Tensor, expert_eps: list, t: torch.Tensor,
                             expert_features: dict | None = None):
        """Zero-sum weight maps w (B, N, X, Y, Z) and the residual R (B, 1, X, Y, Z)."""
        if len(expert_eps) != len(self.experts):
            raise ValueError(f"Expected noise estimates of {len(self.experts)} experts {self.experts}, "
                             f"got {len(expert_eps)}.")
        x = torch.cat([condition, y_t, *expert_eps], dim=1)    # Eq. 5 input order
        if x.shape[1] != self.unet.in_channels:
            raise ValueError(f"concat(condition, y_t, eps...) has {x.shape[1]} channels; the network expects "
                             f"{self.unet.in_channels} (conditions + 1 + {len(self.experts)}).")
        out, _ = self.unet(x, t, self._injected(expert_features))
        free, residual = out[:, :-1], out[:, -1:]
        weights = torch.cat([free, -free.sum(dim=1, keepdim=True)], dim=1)
        return weights, residual

    def forward(self, condition: torch.Tensor, y_t: torch.Tensor, expert_eps: list, t: torch.Tensor,
                expert_features: dict | None = None) -> torch.Tensor:
        """The fused noise estimate eps_hat (B, 1, X, Y, Z) (Eq. 6 generalised to N experts)."""
        weights, residual = self.weights_and_residual(condition, y_t, expert_eps, t, expert_features)
        return combine_expert_eps(expert_eps, weights, residual, self.ensembler_lambda)
