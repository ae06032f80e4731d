"""The ensembler: untrained = plain average, zero-sum weights, feature injection, parametrisation guard."""
import pytest
import torch

from diffens_auto.networks import Ensembler, combine_expert_eps
from diffens_auto.planning import count_parameters, network_for_task
from diffens_auto.planning.topology import feature_injection

EXPERTS = ["2d_axial", "2d_sagittal"]


def restacked_features(plans, network, shape, batch=1, seed=0):
    """Random restacked expert features in the shapes the ensembler's feature_injection entries expect."""
    generator = torch.Generator().manual_seed(seed)
    features = {}
    for entry in network["feature_injection"]:
        axis, factor = entry["stack_axis"], 2 ** entry["expert_level"]
        spatial = [s if i == axis else s // factor for i, s in enumerate(shape)]
        features.setdefault(entry["expert"], {})[entry["expert_level"]] = torch.randn(
            batch, entry["in_channels"], *spatial, generator=generator)
    return {name: [levels[level] for level in sorted(levels)] for name, levels in features.items()}


def inputs(network, shape, num_experts, batch=1, seed=1):
    generator = torch.Generator().manual_seed(seed)
    n_cond = network["in_channels"] - 1 - num_experts
    condition = torch.randn(batch, n_cond, *shape, generator=generator)
    y_t = torch.randn(batch, 1, *shape, generator=generator)
    eps = [torch.randn(batch, 1, *shape, generator=generator) for _ in range(num_experts)]
    return condition, y_t, eps, torch.full((batch,), 321)


SHAPE = [16, 16, 8]     # smaller than the plan's 32 x 32 x 24 crop (fast), still divisible by the stride 4


@pytest.fixture(scope="module")
def tiny_ensembler(tiny_plans):
    return network_for_task(tiny_plans, "3d_ensembler", "sr"), SHAPE


def test_restacked_feature_shapes_are_the_plans(tiny_plans):
    configuration = tiny_plans["configurations"]["3d_ensembler"]
    network = configuration["network"]
    features = restacked_features(tiny_plans, network, configuration["fine_tune_shape"])
    for entry in network["feature_injection"]:
        assert list(features[entry["expert"]][entry["expert_level"]].shape[2:]) == entry["restacked_shape"]


def test_parameter_count_includes_the_injection_convs(tiny_ensembler, tiny_plans):
    network, _ = tiny_ensembler
    assert len(network["feature_injection"]) == 6
    model = Ensembler(network, EXPERTS, ["epsilon_residual"] * 2)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(network)
    small = network_for_task(tiny_plans, "3d_ensembler_small", "mt")
    assert small["feature_injection"] == []
    model = Ensembler(small, EXPERTS, ["epsilon_target"] * 2)
    assert len(model.injection_convs) == 0
    assert sum(p.numel() for p in model.parameters()) == count_parameters(small)


def test_untrained_ensembler_is_the_average_of_two_experts_bitwise(tiny_ensembler, tiny_plans, randomize):
    network, shape = tiny_ensembler
    model = Ensembler(network, EXPERTS, ["epsilon_residual"] * 2, ensembler_lambda=1.0)
    for name, parameter in model.named_parameters():    # everything but the zero-initialised layers trained
        if not name.startswith(("unet.output.conv", "injection_convs")):
            randomize(parameter, seed=len(name))
    condition, y_t, eps, t = inputs(network, shape, 2, batch=2)
    with torch.no_grad():
        eps_hat = model(condition, y_t, eps, t, restacked_features(tiny_plans, network, shape, batch=2))
    assert eps_hat.shape == (2, 1, *shape)
    assert torch.equal(eps_hat, (eps[0] + eps[1]) / 2)


def test_untrained_ensembler_is_the_average_of_three_experts(tiny_plans):
    experts = {name: tiny_plans["configurations"][name] for name in ["2d_axial", "2d_coronal", "2d_sagittal"]}
    shape = SHAPE
    network = network_for_task(tiny_plans, "3d_ensembler", "mt")
    network.update(in_channels=1 + 1 + 3, out_channels=3, output_heads={"weights": 2, "residual": 1})
    network["feature_injection"] = feature_injection(experts, network, shape)
    model = Ensembler(network, list(experts), ["epsilon_target"] * 3)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(network)
    condition, y_t, eps, t = inputs(network, shape, 3)
    with torch.no_grad():
        eps_hat = model(condition, y_t, eps, t, restacked_features(tiny_plans, network, shape))
    assert (eps_hat - (eps[0] + eps[1] + eps[2]) / 3).abs().max() <= 1e-6


def test_weights_are_zero_sum_and_combine_as_eq6(tiny_ensembler, tiny_plans, randomize):
    network, shape = tiny_ensembler
    model = randomize(Ensembler(network, EXPERTS, ["epsilon_residual"] * 2, ensembler_lambda=0.5), std=0.1)
    condition, y_t, eps, t = inputs(network, shape, 2)
    features = restacked_features(tiny_plans, network, shape)
    with torch.no_grad():
        weights, residual = model.weights_and_residual(condition, y_t, eps, t, features)
        eps_hat = model(condition, y_t, eps, t, features)
    assert weights.shape == (1, 2, *shape) and residual.shape == (1, 1, *shape)
    assert weights.abs().max() > 0 and residual.abs().max() > 0
    torch.testing.assert_close(weights.sum(dim=1), torch.zeros(1, *shape), atol=1e-6, rtol=0)
    w = weights[:, :1]
    torch.testing.assert_close(eps_hat, (0.5 + w) * eps[0] + (0.5 - w) * eps[1] + 0.5 * residual)


def test_combine_expert_eps_for_n_experts():
    eps = [torch.randn(1, 1, 4, 4, 4) for _ in range(3)]
    free = torch.randn(1, 2, 4, 4, 4)
    weights = torch.cat([free, -free.sum(1, keepdim=True)], 1)
    residual = torch.randn(1, 1, 4, 4, 4)
    expected = sum((1 / 3 + weights[:, i:i + 1]) * eps[i] for i in range(3)) + 2.0 * residual
    torch.testing.assert_close(combine_expert_eps(eps, weights, residual, 2.0), expected)


def test_injected_features_change_the_output_once_the_injection_conv_is_trained(tiny_ensembler, tiny_plans,
                                                                                   randomize):
    network, shape = tiny_ensembler
    model = Ensembler(network, EXPERTS, ["epsilon_residual"] * 2)
    for name, parameter in model.named_parameters():
        if not name.startswith("injection_convs"):
            randomize(parameter, seed=len(name), std=0.1)
    condition, y_t, eps, t = inputs(network, shape, 2)
    first, second = (restacked_features(tiny_plans, network, shape, seed=s) for s in (1, 2))
    with torch.no_grad():
        assert torch.equal(model(condition, y_t, eps, t, first), model(condition, y_t, eps, t, second))
        randomize(model.injection_convs["2d_sagittal_level2"], std=0.1)
        assert not torch.allclose(model(condition, y_t, eps, t, first), model(condition, y_t, eps, t, second))


def test_untrained_ensembler_learns_from_the_first_step(tiny_ensembler, tiny_plans):
    network, shape = tiny_ensembler
    model = Ensembler(network, EXPERTS, ["epsilon_residual"] * 2).train()
    condition, y_t, eps, t = inputs(network, shape, 2)
    loss = (model(condition, y_t, eps, t, restacked_features(tiny_plans, network, shape)) - y_t).pow(2).mean()
    loss.backward()
    assert model.unet.output.conv.weight.grad.abs().max() > 0


def test_ensembler_refuses_mixed_parametrizations_and_exposes_the_common_one(tiny_ensembler):
    network, _ = tiny_ensembler
    with pytest.raises(ValueError, match=r"2d_axial: epsilon_target, 2d_sagittal: epsilon_residual"):
        Ensembler(network, EXPERTS, ["epsilon_target", "epsilon_residual"])
    model = Ensembler(network, EXPERTS, ["epsilon_residual"] * 2)
    assert model.parametrization == "epsilon_residual" and model.experts == EXPERTS


def test_ensembler_checks_the_plans_output_heads(tiny_ensembler):
    network, _ = tiny_ensembler
    assert network["output_heads"] == {"weights": 1, "residual": 1}
    Ensembler(network, EXPERTS, ["epsilon_target"] * 2)
    with pytest.raises(ValueError, match="output_heads"):
        Ensembler({**network, "output_heads": {"weights": 2, "residual": 1}}, EXPERTS, ["epsilon_target"] * 2)
    with pytest.raises(ValueError, match="output_heads"):
        Ensembler({**network, "output_heads": {"weights": 1}}, EXPERTS, ["epsilon_target"] * 2)


def test_bfloat16_ensembler_runs_on_cpu(tiny_ensembler, tiny_plans):
    network, shape = tiny_ensembler
    model = Ensembler(network, EXPERTS, ["epsilon_target"] * 2).to(torch.bfloat16).eval()
    condition, y_t, eps, t = inputs(network, shape, 2)
    features = restacked_features(tiny_plans, network, shape)
    cast = [tensor.to(torch.bfloat16) for tensor in (condition, y_t, *eps)]
    features = {name: [f.to(torch.bfloat16) for f in levels] for name, levels in features.items()}
    with torch.no_grad():
        eps_hat = model(cast[0], cast[1], cast[2:], t, features)
    assert eps_hat.dtype == torch.bfloat16 and eps_hat.shape == (1, 1, *shape)
    assert torch.equal(eps_hat, 0.5 * cast[2] + 0.5 * cast[3])       # untrained: the average, in bfloat16 too


def test_ensembler_input_errors(tiny_ensembler, tiny_plans):
    network, shape = tiny_ensembler
    model = Ensembler(network, EXPERTS, ["epsilon_residual"] * 2)
    condition, y_t, eps, t = inputs(network, shape, 2)
    with pytest.raises(ValueError, match="expert_features"):
        model(condition, y_t, eps, t)
    with pytest.raises(ValueError, match="2 experts"):
        model(condition, y_t, eps[:1], t, restacked_features(tiny_plans, network, shape))
    features = restacked_features(tiny_plans, network, shape)
    features["2d_axial"][1] = features["2d_axial"][1][..., :4]
    with pytest.raises(ValueError, match=r"level 1 differ in shape \('2d_axial' level 1 -> \(1, 16, 8, 8, 2\)"):
        model(condition, y_t, eps, t, features)
    other_volume = restacked_features(tiny_plans, network, [16, 16, 16])     # consistent, but not this input's
    with pytest.raises(ValueError, match=r"injected\[0\] has shape \(1, 8, 16, 16, 16\)"):
        model(condition, y_t, eps, t, other_volume)
    with pytest.raises(ValueError, match="out_channels"):
        Ensembler(network, ["2d_axial"], ["epsilon_residual"])
    with pytest.raises(ValueError, match="2d_sagittal"):
        Ensembler({**network, "out_channels": 2}, ["2d_axial", "2d_coronal"], ["epsilon_residual"] * 2)


def test_an_ensembler_without_conditions_fuses_its_experts(tiny_ensembler, tiny_plans, randomize):
    network, shape = tiny_ensembler
    unconditional = dict(network, in_channels=0 + 1 + 2)             # a recon task: n_cond = 0
    model = Ensembler(unconditional, EXPERTS, ["epsilon_target"] * 2).eval()
    condition, y_t, eps, t = inputs(unconditional, shape, 2)
    assert condition.shape[1] == 0
    features = restacked_features(tiny_plans, unconditional, shape)
    with torch.no_grad():
        assert torch.equal(model(condition, y_t, eps, t, features), 0.5 * eps[0] + 0.5 * eps[1])   # untrained
        randomize(model)
        eps_hat = model(condition, y_t, eps, t, features)
    assert eps_hat.shape == (1, 1, *shape) and torch.isfinite(eps_hat).all()
