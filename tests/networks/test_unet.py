"""DiffusionUNet: typed and plans constructors, exact parameter counts, shapes in 2D and 3D, features, injection,
checkpointing."""
import math

import pytest
import torch
import torch.nn.functional as F

from diffens_auto.networks import DiffusionUNet, timestep_embedding
from diffens_auto.planning import count_parameters, network_for_task
from diffens_auto.planning.memory import training_activations


def make_network(**overrides) -> dict:
    network = {"architecture": "diffusion_unet", "spatial_dims": 2, "in_channels": 3, "out_channels": 1,
               "channels": [8, 16, 32], "num_res_blocks": 2, "attention_levels": [1, 2], "mid_attention": True,
               "num_head_channels": 8, "time_embed_dim": 32, "dropout": 0.0, "norm_num_groups": 4, "kernel_size": 3,
               "gradient_checkpointing": False, "zero_init_output": False}
    network.update(overrides)
    return network


HAND_MADE = [
    make_network(),
    make_network(num_res_blocks=1, attention_levels=[], mid_attention=False, channels=[4, 8, 8, 16]),
    make_network(spatial_dims=3, in_channels=5, out_channels=2, channels=[8, 16, 24], attention_levels=[2],
                 zero_init_output=True, gradient_checkpointing=True),
]


@pytest.mark.parametrize("network", HAND_MADE)
def test_parameter_count_equals_the_memory_model(network):
    model = DiffusionUNet.from_plans(network)
    assert sum(p.numel() for p in model.parameters()) == count_parameters(network)


@pytest.mark.parametrize("configuration", ["2d_axial", "2d_sagittal", "3d_ensembler_small"])
@pytest.mark.parametrize("task", ["sr", "mt"])
def test_parameter_count_of_tiny_plan_networks(tiny_plans, configuration, task):
    network = network_for_task(tiny_plans, configuration, task)
    assert sum(p.numel() for p in DiffusionUNet.from_plans(network).parameters()) == count_parameters(network)


def test_tiny_plan_networks_have_attention_where_the_plan_says(tiny_plans):
    network = tiny_plans["configurations"]["2d_axial"]["network"]
    assert network["attention_levels"] == [2] and network["mid_attention"]
    model = DiffusionUNet.from_plans(network)
    assert model.encoder[2].attentions is not None and model.encoder[0].attentions is None
    assert model.middle.attention is not None


@pytest.mark.parametrize("shape", [(32, 24), (31, 17)])
def test_2d_shapes_and_features(shape, randomize):
    network = make_network()
    model = randomize(DiffusionUNet.from_plans(network))
    out, features = model(torch.randn(2, 3, *shape), torch.tensor([0, 999]))
    assert out.shape == (2, 1, *shape)
    assert [tuple(f.shape) for f in features] == [
        (2, c, *(math.ceil(s / 2 ** level) for s in shape)) for level, c in enumerate(network["channels"])]


def test_3d_shapes_and_features(randomize):
    network = HAND_MADE[2]
    model = randomize(DiffusionUNet.from_plans(network)).eval()
    out, features = model(torch.randn(1, 5, 16, 12, 8), torch.tensor([10]))
    assert out.shape == (1, 2, 16, 12, 8)
    assert [tuple(f.shape[1:]) for f in features] == [(8, 16, 12, 8), (16, 8, 6, 4), (24, 4, 3, 2)]


def test_zero_init_output_gives_zero_output():
    model = DiffusionUNet.from_plans(HAND_MADE[2])
    out, _ = model(torch.randn(1, 5, 8, 8, 8), torch.tensor([3]))
    assert torch.count_nonzero(out) == 0


def test_timestep_changes_the_output(randomize):
    model = randomize(DiffusionUNet.from_plans(make_network())).eval()
    x = torch.randn(1, 3, 16, 16)
    assert not torch.allclose(model(x, torch.tensor([1]))[0], model(x, torch.tensor([900]))[0])


def test_timestep_embedding_is_cosines_then_sines():
    embedding = timestep_embedding(torch.tensor([0, 5]), 8)
    assert embedding.shape == (2, 8)
    assert torch.equal(embedding[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert embedding[1, 0] == pytest.approx(math.cos(5.0)) and embedding[1, 4] == pytest.approx(math.sin(5.0))
    assert timestep_embedding(torch.tensor([3]), 7).shape == (1, 7)


def test_injected_features_are_added_before_the_skip(randomize):
    model = randomize(DiffusionUNet.from_plans(make_network())).eval()
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([4, 4])
    out, features = model(x, t)
    extra = torch.randn_like(features[1])
    out_injected, features_injected = model(x, t, [None, extra, None])
    torch.testing.assert_close(features_injected[1], features[1] + extra)
    torch.testing.assert_close(features_injected[0], features[0])
    assert not torch.allclose(out, out_injected)
    with pytest.raises(ValueError, match=r"injected\[1\]"):
        model(x, t, [None, extra[:, :, :4], None])
    with pytest.raises(ValueError, match=r"injected\[1\]"):        # broadcastable, still refused
        model(x, t, [None, extra[:, :, :1], None])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_a_cast_network_runs_in_its_dtype(dtype, spatial_dims):
    """model.to(bfloat16 / float16): the float32 timestep sinusoid follows the weights (CPU runs both dtypes)."""
    model = DiffusionUNet.from_plans(make_network(spatial_dims=spatial_dims)).to(dtype).eval()
    x = torch.randn(1, 3, *[8] * spatial_dims, dtype=dtype)
    with torch.no_grad():
        out, features = model(x, torch.tensor([999]))
    assert out.dtype == dtype and all(f.dtype == dtype for f in features)
    assert torch.isfinite(out).all()


def test_missing_network_keys_are_named():
    with pytest.raises(ValueError, match="channels"):
        DiffusionUNet.from_plans({"spatial_dims": 2, "in_channels": 1, "out_channels": 1})


def typed_arguments(network: dict) -> tuple[tuple, dict]:
    """The typed constructor's positional and keyword arguments for a network dict, spelled out by name."""
    positional = tuple(network[key] for key in ("spatial_dims", "in_channels", "out_channels", "channels",
                                                "num_res_blocks"))
    keywords = {key: network[key] for key in ("time_embed_dim", "norm_num_groups", "kernel_size", "dropout",
                                              "attention_levels", "num_head_channels", "mid_attention",
                                              "gradient_checkpointing", "zero_init_output") if key in network}
    return positional, keywords


@pytest.mark.parametrize("network", HAND_MADE + [make_network(dropout=0.1, kernel_size=5, attention_levels=[0])])
def test_the_typed_constructor_builds_what_from_plans_builds(network):
    """Same seed: the same state-dict keys, shapes and values, and the same outputs and features."""
    positional, keywords = typed_arguments(network)
    torch.manual_seed(0)
    typed = DiffusionUNet(*positional, **keywords).eval()
    torch.manual_seed(0)
    planned = DiffusionUNet.from_plans(network).eval()
    typed_state, planned_state = typed.state_dict(), planned.state_dict()
    assert list(typed_state) == list(planned_state)
    assert all(typed_state[key].shape == planned_state[key].shape for key in typed_state)
    assert all(torch.equal(typed_state[key], planned_state[key]) for key in typed_state)
    x, t = torch.randn(1, network["in_channels"], *[8] * network["spatial_dims"]), torch.tensor([5])
    with torch.no_grad():
        typed_out, typed_features = typed(x, t)
        planned_out, planned_features = planned(x, t)
    assert torch.equal(typed_out, planned_out)
    assert all(torch.equal(a, b) for a, b in zip(typed_features, planned_features, strict=True))
    assert (typed.in_channels, typed.out_channels, typed.channels) == (
        network["in_channels"], network["out_channels"], tuple(network["channels"]))


def test_the_typed_constructor_defaults_are_the_plans_defaults():
    """Keys a plans dict leaves out and arguments left out give the same network (num_head_channels: max(C))."""
    network = {key: make_network()[key] for key in ("spatial_dims", "in_channels", "out_channels", "channels",
                                                     "num_res_blocks", "time_embed_dim", "norm_num_groups")}
    torch.manual_seed(0)
    planned = DiffusionUNet.from_plans({**network, "attention_levels": [2]})
    torch.manual_seed(0)
    typed = DiffusionUNet(2, 3, 1, [8, 16, 32], 2, time_embed_dim=32, norm_num_groups=4, attention_levels=[2],
                          num_head_channels=None)
    assert all(torch.equal(a, b) for a, b in zip(planned.state_dict().values(), typed.state_dict().values(),
                                                 strict=True))
    assert typed.encoder[2].attentions[0].heads == 1 and typed.middle.attention is None
    assert typed.output.conv.weight.abs().sum() > 0 and not typed.gradient_checkpointing


def test_the_typed_constructor_takes_at_most_five_positional_arguments():
    """time_embed_dim and the rest are keyword-only."""
    with pytest.raises(TypeError):
        DiffusionUNet(2, 3, 1, [8, 16], 1, 32, 4)


def test_from_plans_names_every_missing_required_key():
    """The message lists the missing keys and where the dict must come from."""
    network = {key: value for key, value in make_network().items() if key not in ("channels", "time_embed_dim")}
    with pytest.raises(ValueError, match=r"lacks \['channels', 'time_embed_dim'\].*plans.*documentation/planning.md"):
        DiffusionUNet.from_plans(network)


def test_from_plans_refuses_an_unknown_key_and_names_it():
    """A misspelt key is refused rather than silently replaced by a default."""
    with pytest.raises(ValueError, match="'num_res_block'"):
        DiffusionUNet.from_plans({**make_network(), "num_res_block": 3})


def test_from_plans_ignores_the_keys_other_builders_read(tiny_plans):
    """The plans' informational keys (experts' and ensembler's) do not change the U-Net."""
    for configuration in ("2d_axial", "3d_ensembler"):
        network = network_for_task(tiny_plans, configuration, "sr")
        informational = {"architecture", "context_slices", "position_channels", "returns_features", "output_heads",
                         "feature_injection"}
        assert informational & set(network)
        torch.manual_seed(0)
        full = DiffusionUNet.from_plans(network)
        torch.manual_seed(0)
        bare = DiffusionUNet.from_plans({key: value for key, value in network.items() if key not in informational})
        assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), bare.state_dict().values(),
                                                     strict=True))


@pytest.mark.parametrize("build", [lambda: DiffusionUNet.from_plans(make_network(num_res_blocks=0)),
                                   lambda: DiffusionUNet(2, 3, 1, [8, 16], 0, time_embed_dim=32, norm_num_groups=4)])
def test_num_res_blocks_below_one_is_refused(build):
    """Both constructors: features are taken after a level's last block, so a level needs one."""
    with pytest.raises(ValueError, match="num_res_blocks must be at least 1"):
        build()


def _saved_bytes(model, x, t):
    kept = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in params:
            kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out, _ = model(x, t)
    return sum(kept.values()), out


@pytest.mark.parametrize("network", [make_network(), make_network(spatial_dims=3, attention_levels=[2])])
def test_saved_tensors_match_the_memory_model(network):
    """In float32 the tensors autograd keeps are what planning.memory.training_activations counts."""
    shape, batch = ((32, 24), 2) if network["spatial_dims"] == 2 else ((16, 16, 8), 1)
    saved, _ = _saved_bytes(DiffusionUNet.from_plans(network), torch.randn(batch, 3, *shape),
                            torch.tensor([9] * batch))
    assert training_activations(network, shape, batch, "float32")[0] == pytest.approx(saved, rel=0.01)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_gradient_checkpointing_gives_the_same_outputs_and_gradients(spatial_dims, randomize):
    shape = (16, 12) if spatial_dims == 2 else (8, 8, 8)
    network = make_network(spatial_dims=spatial_dims, dropout=0.2, attention_levels=[1])
    plain = randomize(DiffusionUNet.from_plans(network)).train()
    checkpointed = DiffusionUNet.from_plans({**network, "gradient_checkpointing": True}).train()
    checkpointed.load_state_dict(plain.state_dict())
    x, t = torch.randn(2, 3, *shape), torch.tensor([7, 300])
    target = torch.randn(2, 1, *shape)
    results = []
    for model in (plain, checkpointed):
        torch.manual_seed(123)          # the same dropout masks; checkpoint replays the RNG state
        saved, out = _saved_bytes(model, x, t)
        F.mse_loss(out, target).backward()
        results.append((saved, out, {name: p.grad.clone() for name, p in model.named_parameters()}))
    (saved_a, out_a, grads_a), (saved_b, out_b, grads_b) = results
    torch.testing.assert_close(out_b, out_a, rtol=0, atol=1e-6)
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], rtol=1e-5, atol=1e-6)
    assert saved_b < 0.6 * saved_a


def test_checkpointing_is_off_in_eval_mode():
    model = DiffusionUNet.from_plans(make_network(gradient_checkpointing=True)).eval()
    saved, _ = _saved_bytes(model, torch.randn(1, 3, 8, 8), torch.tensor([1]))
    plain_saved, _ = _saved_bytes(DiffusionUNet.from_plans(make_network()).eval(), torch.randn(1, 3, 8, 8),
                                  torch.tensor([1]))
    assert saved == plain_saved


@pytest.mark.parametrize("spatial_dims, shape", [(2, (12, 10)), (3, (8, 6, 6))])
def test_fused_attention_computes_what_the_score_matrix_does(spatial_dims, shape, randomize):
    network = make_network(spatial_dims=spatial_dims, attention_levels=[1], mid_attention=True)
    torch.manual_seed(0)
    plain = randomize(DiffusionUNet.from_plans(network))
    fused = DiffusionUNet.from_plans({**network, "attention": "sdpa"})
    fused.load_state_dict(plain.state_dict())       # the same weights: the switch is not in the state dict
    x, t = torch.randn(2, network["in_channels"], *shape), torch.tensor([3, 700])
    out_plain, out_fused = plain(x, t)[0], fused(x, t)[0]
    assert torch.allclose(out_plain, out_fused, atol=1e-5, rtol=1e-4)
    out_plain.square().mean().backward()
    out_fused.square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), fused.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-5, rtol=1e-3), name
    with pytest.raises(ValueError, match="attention 'flash'"):
        DiffusionUNet.from_plans({**network, "attention": "flash"})


def test_new_plans_use_fused_attention_and_old_ones_keep_the_score_matrix(tiny_plans):
    for configuration in tiny_plans["configurations"].values():
        assert configuration["network"]["attention"] == "sdpa"
    old = {k: v for k, v in make_network(attention_levels=[1]).items() if k != "attention"}
    blocks = [m for m in DiffusionUNet.from_plans(old).modules() if hasattr(m, "heads")]
    assert blocks and all(block.attention == "materialised" for block in blocks)
