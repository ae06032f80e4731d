"""LoRA: zero update keeps the output, only LoRA trains, merge equals the wrapped model, remove restores."""
import pytest
import torch
from torch import nn

from diffens_auto.networks import (AttentionBlock, DiffusionUNet, LoRAConv, LoRALinear, ResBlock, build_expert,
                                   inject_lora, lora_parameters, merge_lora, remove_lora)
from diffens_auto.planning import network_for_task

CONVS_AND_LINEARS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@pytest.fixture
def expert(tiny_plans, randomize):
    return randomize(build_expert(network_for_task(tiny_plans, "2d_axial", "mt")), std=0.1).eval()


def run(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, model.in_channels, 16, 16, generator=generator)
    return model(x, torch.tensor([5, 700]))[0]


def block_layers(model):
    """Names of the conv and linear layers inside ResBlocks and attention blocks."""
    blocks = [name for name, module in model.named_modules() if isinstance(module, (ResBlock, AttentionBlock))]
    return {name for name, module in model.named_modules()
            if isinstance(module, CONVS_AND_LINEARS) and any(name.startswith(b + ".") for b in blocks)}


def test_default_target_is_every_conv_and_linear_of_res_and_attention_blocks(expert):
    expected = block_layers(expert)
    wrapped = inject_lora(expert, rank=4)
    names = {name for name, module in expert.named_modules() if isinstance(module, (LoRALinear, LoRAConv))}
    assert names == expected and len(wrapped) == len(expected)
    assert not isinstance(expert.input_conv, LoRAConv) and not isinstance(expert.time_embedding.linear_1, LoRALinear)
    assert any(isinstance(layer.base, nn.Conv1d) for layer in wrapped)   # attention's qkv / proj


def test_zero_up_weights_leave_the_output_unchanged(expert):
    before = run(expert)
    inject_lora(expert, rank=4, scale=2.0)
    assert torch.equal(run(expert), before)


def test_only_lora_parameters_get_gradients(expert):
    inject_lora(expert, rank=2)
    trainable = [p for p in expert.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in lora_parameters(expert)}
    run(expert).square().mean().backward()
    for name, parameter in expert.named_parameters():
        is_lora = ".down." in name or ".up." in name
        assert (parameter.grad is not None) == is_lora, name
    # the zero "up" weights receive a gradient, so adaptation starts at once
    assert any(p.grad.abs().max() > 0 for p in lora_parameters(expert))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_merge_equals_the_wrapped_model(spatial_dims, randomize):
    network = {"spatial_dims": spatial_dims, "in_channels": 2, "out_channels": 1, "channels": [4, 8],
               "num_res_blocks": 1, "attention_levels": [1], "mid_attention": True, "num_head_channels": 4,
               "time_embed_dim": 16, "norm_num_groups": 2}
    model = randomize(DiffusionUNet.from_plans(network), std=0.1).eval()
    inject_lora(model, rank=3, alpha=6.0, target=lambda name, module: True)   # every conv, strided ones too
    for layer in [m for m in model.modules() if isinstance(m, (LoRALinear, LoRAConv))]:
        assert layer.scale == 2.0
        randomize(layer.up, seed=1, std=0.1)
    x = torch.randn(1, 2, *([8] * spatial_dims))
    t = torch.tensor([50])
    with torch.no_grad():
        wrapped, _ = model(x, t)
        merge_lora(model)
        merged, _ = model(x, t)
    assert not any(isinstance(m, (LoRALinear, LoRAConv)) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert (merged - wrapped).abs().max() <= 1e-5
    assert (wrapped - run_base(network, model, x, t)).abs().max() <= 1e-5


def run_base(network, merged_model, x, t):
    """The merged model's output computed again from a plain network loaded with the merged weights."""
    fresh = DiffusionUNet.from_plans(network).eval()
    fresh.load_state_dict(merged_model.state_dict())
    with torch.no_grad():
        return fresh(x, t)[0]


def test_remove_restores_the_original_model_exactly(expert, randomize):
    state = {k: v.clone() for k, v in expert.state_dict().items()}
    flags = {name: p.requires_grad for name, p in expert.named_parameters()}
    expert.output.conv.weight.requires_grad_(False)           # a flag the user set must come back as it was
    flags["output.conv.weight"] = False
    types = {name: type(m) for name, m in expert.named_modules()}
    before = run(expert)
    for layer in inject_lora(expert, rank=4):
        randomize(layer.up, std=0.1)
    assert not torch.allclose(run(expert), before)
    remove_lora(expert)
    assert {name: type(m) for name, m in expert.named_modules()} == types
    assert {name: p.requires_grad for name, p in expert.named_parameters()} == flags
    assert all(torch.equal(state[k], v) for k, v in expert.state_dict().items())
    assert torch.equal(run(expert), before)


def test_custom_target_and_errors(expert):
    wrapped = inject_lora(expert, rank=1, target=lambda name, module: isinstance(module, nn.Linear))
    assert wrapped and all(isinstance(layer, LoRALinear) for layer in wrapped)
    with pytest.raises(ValueError, match="already"):
        inject_lora(expert)
    remove_lora(expert)
    with pytest.raises(ValueError, match="rank"):
        inject_lora(expert, rank=0)
