"""The memory model: exact parameter counts, saved-tensor counts against autograd, monotonicity."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffens_auto.planning.memory import (KSPACE_BYTES_PER_VOXEL, MemoryEstimate, count_parameters,
                                          estimate_inference_memory, estimate_training_memory, forward_peak,
                                          training_activations, unet_layers)


def make_network(**overrides) -> dict:
    network = {"spatial_dims": 2, "in_channels": 3, "out_channels": 1, "channels": [8, 16, 32],
               "num_res_blocks": 2, "attention_levels": [2], "mid_attention": True, "num_head_channels": 8,
               "time_embed_dim": 32, "norm_num_groups": 4, "dropout": 0.0, "kernel_size": 3,
               "gradient_checkpointing": False}
    network.update(overrides)
    return network


# ------------------------------------------------ a reference guided-diffusion-style U-Net (test only)


class RefResBlock(nn.Module):
    def __init__(self, ci, co, emb, dims, groups, dropout):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.norm1, self.conv1 = nn.GroupNorm(groups, ci), conv(ci, co, 3, padding=1)
        self.emb = nn.Linear(emb, 2 * co)
        self.norm2, self.conv2 = nn.GroupNorm(groups, co), conv(co, co, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = conv(ci, co, 1) if ci != co else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb)).view(emb.shape[0], -1, *([1] * (x.dim() - 2))).chunk(2, dim=1)
        h = self.conv2(self.drop(F.silu(self.norm2(h) * (1 + scale) + shift)))
        return self.skip(x) + h


class RefAttention(nn.Module):
    def __init__(self, c, groups, head_channels):
        super().__init__()
        self.norm, self.qkv, self.proj = nn.GroupNorm(groups, c), nn.Conv1d(c, 3 * c, 1), nn.Conv1d(c, c, 1)
        self.heads = max(1, c // head_channels)

    def forward(self, x, emb):
        b, c, *spatial = x.shape
        qkv = self.qkv(self.norm(x.reshape(b, c, -1)))
        q, k, v = qkv.reshape(b * self.heads, 3 * c // self.heads, -1).chunk(3, dim=1)
        scale = (c // self.heads) ** -0.25
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale).float(), dim=-1)
        out = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, -1)
        return x + self.proj(out).reshape(b, c, *spatial)


class RefUNet(nn.Module):
    """Built from the same network dict, written independently of the memory model's walk."""

    def __init__(self, net):
        super().__init__()
        dims, ch, emb, groups = net["spatial_dims"], net["channels"], net["time_embed_dim"], net["norm_num_groups"]
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        att, heads = set(net["attention_levels"]), net["num_head_channels"]
        res = lambda ci, co: RefResBlock(ci, co, emb, dims, groups, net["dropout"])  # noqa: E731
        self.base = ch[0]
        self.time = nn.Sequential(nn.Linear(ch[0], emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = conv(net["in_channels"], ch[0], 3, padding=1)
        self.enc, skips, c = nn.ModuleList(), [ch[0]], ch[0]
        for level, cl in enumerate(ch):
            for _ in range(net["num_res_blocks"]):
                mods = [res(c, cl)] + ([RefAttention(cl, groups, heads)] if level in att else [])
                c = cl
                self.enc.append(nn.ModuleList(mods))
                skips.append(c)
            if level < len(ch) - 1:
                self.enc.append(nn.ModuleList([conv(c, c, 3, stride=2, padding=1)]))
                skips.append(c)
        self.mid = nn.ModuleList([res(c, c)] + ([RefAttention(c, groups, heads)] if net["mid_attention"] else [])
                                 + [res(c, c)])
        self.dec = nn.ModuleList()
        for level in reversed(range(len(ch))):
            for i in range(net["num_res_blocks"] + 1):
                mods = [res(c + skips.pop(), ch[level])]
                c = ch[level]
                mods += [RefAttention(c, groups, heads)] if level in att else []
                mods += [conv(c, c, 3, padding=1)] if level > 0 and i == net["num_res_blocks"] else []
                self.dec.append(nn.ModuleList(mods))
        self.out = nn.Sequential(nn.GroupNorm(groups, c), nn.SiLU(), conv(c, net["out_channels"], 3, padding=1))

    @staticmethod
    def _run(mods, h, emb, upsample=False):
        for module in mods:
            if isinstance(module, (RefResBlock, RefAttention)):
                h = module(h, emb)
            else:
                h = module(F.interpolate(h, scale_factor=2, mode="nearest") if upsample else h)
        return h

    def forward(self, x, t):
        freqs = torch.exp(-math.log(10000) * torch.arange(self.base // 2) / (self.base // 2))
        emb = self.time(torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], 1))
        h = self.inp(x)
        hs = [h]
        for mods in self.enc:
            h = self._run(mods, h, emb)
            hs.append(h)
        h = self._run(self.mid, h, emb)
        for mods in self.dec:
            h = self._run(mods, torch.cat([h, hs.pop()], 1), emb, upsample=True)
        return self.out(h)


def measured_saved_bytes(model, network, shape, batch):
    """Bytes of the distinct non-parameter storages autograd keeps for backward in one MSE training step."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    x = torch.randn(batch, network["in_channels"], *shape)
    target = torch.randn(batch, network["out_channels"], *shape)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        F.mse_loss(model(x, torch.rand(batch) * 999), target)
    return sum(kept.values())


NETWORKS = [
    make_network(),
    make_network(num_res_blocks=1, attention_levels=[1, 2]),
    make_network(spatial_dims=3, in_channels=4, out_channels=2, channels=[8, 16, 24], attention_levels=[],
                 mid_attention=False),
]


@pytest.mark.parametrize("network", NETWORKS)
def test_parameter_count_matches_a_reference_torch_unet(network):
    torch.manual_seed(0)
    model = RefUNet(network)
    assert count_parameters(network) == sum(p.numel() for p in model.parameters())


def test_parameter_count_of_a_one_level_network_by_hand():
    network = make_network(in_channels=2, channels=[4], num_res_blocks=1, attention_levels=[], mid_attention=False,
                           time_embed_dim=8)
    c, e, k = 4, 8, 9
    time_embedding = (c * e + e) + (e * e + e)
    input_conv = k * 2 * c + c
    res_same = 2 * c + (k * c * c + c) + (e * 2 * c + 2 * c) + 2 * c + (k * c * c + c)
    res_concat = 2 * 2 * c + (k * 2 * c * c + c) + (e * 2 * c + 2 * c) + 2 * c + (k * c * c + c) + (2 * c * c + c)
    output = 2 * c + (k * c * 1 + 1)
    # encoder 1 ResBlock, middle 2, decoder 2 on concat(h, skip) (skips: input conv and the encoder block)
    expected = time_embedding + input_conv + res_same + 2 * res_same + 2 * res_concat + output
    assert expected == 2529
    assert count_parameters(network) == expected


def test_feature_injection_convs_are_counted():
    network = make_network(spatial_dims=3, attention_levels=[], mid_attention=False)
    entry = {"kernel_size": [1, 1, 4], "in_channels": 32, "out_channels": 16}
    assert count_parameters({**network, "feature_injection": [entry]}) == count_parameters(network) + 4 * 32 * 16 + 16


@pytest.mark.parametrize("network", NETWORKS)
def test_float32_saved_activations_match_autograd(network):
    """Without autocast every saved tensor is float32, so the model must match what autograd keeps."""
    torch.manual_seed(0)
    shape, batch = ((32, 24), 2) if network["spatial_dims"] == 2 else ((16, 16, 24), 1)
    measured = measured_saved_bytes(RefUNet(network), network, shape, batch)
    saved, _ = training_activations(network, shape, batch, "float32")
    assert saved == pytest.approx(measured, rel=0.03)


def test_layer_walk_uses_every_skip_once():
    layers = unet_layers(make_network())
    pushed = sum(layer.pushes_skip for layer in layers)
    popped = sum(1 for layer in layers if layer.pops_skip)
    assert pushed == popped == 1 + 3 * 2 + 2


def _expert_configuration(batch=2, channels=(8, 16, 32), **overrides):
    return {"kind": "expert", "slice_axis": 2, "patch_size": [48, 40], "batch_size": batch,
            "network": make_network(channels=list(channels), **overrides)}


def test_training_memory_grows_with_batch_and_channels():
    totals = [estimate_training_memory(_expert_configuration(batch=b), "bfloat16").total_bytes for b in (1, 2, 4)]
    assert totals[0] < totals[1] < totals[2]
    wider = [estimate_training_memory(_expert_configuration(channels=c), "bfloat16")
             for c in ((8, 16, 32), (16, 32, 64), (32, 64, 128))]
    assert wider[0].total_bytes < wider[1].total_bytes < wider[2].total_bytes
    assert wider[0].activations < wider[1].activations < wider[2].activations


def test_gradient_checkpointing_reduces_activations():
    plain = _expert_configuration(num_res_blocks=2)
    checkpointed = _expert_configuration(num_res_blocks=2, gradient_checkpointing=True)
    for dtype in ("float32", "bfloat16"):
        a = estimate_training_memory(plain, dtype).activations
        b = estimate_training_memory(checkpointed, dtype).activations
        assert b < 0.7 * a


def test_lower_precision_saves_less_than_float32():
    configuration = _expert_configuration()
    assert (estimate_training_memory(configuration, "bfloat16").activations
            < estimate_training_memory(configuration, "float32").activations)


def test_inference_memory_grows_with_slice_batch_and_is_below_training():
    configuration = _expert_configuration(batch=4)
    volume = [48, 40, 32]
    small, large = (estimate_inference_memory(configuration, "bfloat16", volume_shape=volume, slice_batch_size=s)
                    for s in (1, 8))
    assert small.total_bytes < large.total_bytes
    assert estimate_inference_memory(configuration, "bfloat16", volume_shape=volume, slice_batch_size=4).total_bytes \
        < estimate_training_memory(configuration, "bfloat16").total_bytes


def test_forward_peak_is_linear_in_batch():
    network = make_network()
    assert forward_peak(network, (32, 32), 4, "bfloat16") == pytest.approx(4 * forward_peak(network, (32, 32), 1,
                                                                                             "bfloat16"), rel=1e-6)


def _ensembler_configuration(shape, injection=True):
    experts = {"2d_axial": {"slice_axis": 2, "network": make_network(in_channels=2)},
               "2d_sagittal": {"slice_axis": 0, "network": make_network(in_channels=2)}}
    entries = []
    for name, expert in experts.items():
        for level, channels in enumerate([8, 16, 24]):
            kernel = [2 ** level if i == expert["slice_axis"] else 1 for i in range(3)]
            entries.append({"expert": name, "expert_level": level, "stack_axis": expert["slice_axis"],
                            "kernel_size": kernel, "in_channels": [8, 16, 32][level], "out_channels": channels})
    network = make_network(spatial_dims=3, in_channels=4, out_channels=2, channels=[8, 16, 24], attention_levels=[],
                           mid_attention=False, gradient_checkpointing=True,
                           feature_injection=entries if injection else [])
    configuration = {"kind": "ensembler", "experts": list(experts), "patch_size": list(shape),
                     "fine_tune_shape": list(shape), "patch_wise": False, "batch_size": 1, "network": network}
    return configuration, experts


def test_ensembler_estimate_counts_experts_and_injected_features():
    configuration, experts = _ensembler_configuration([32, 32, 24])
    estimate = estimate_training_memory(configuration, "bfloat16", experts=experts, slice_batch_size=4)
    assert estimate.expert_parameters == 4 * sum(count_parameters(e["network"]) for e in experts.values())
    assert estimate.expert_forward > 0
    # axial expert: 8 x 32x32x24 + 16 x 16x16x24 + 32 x 8x8x24, bf16; the sagittal one likewise
    axial = (8 * 32 * 32 * 24 + 16 * 16 * 16 * 24 + 32 * 8 * 8 * 24) * 2
    sagittal = (8 * 32 * 32 * 24 + 16 * 32 * 16 * 12 + 32 * 32 * 8 * 6) * 2
    assert estimate.injected_features == axial + sagittal
    plain, _ = _ensembler_configuration([32, 32, 24], injection=False)
    assert estimate_training_memory(plain, "bfloat16", experts=experts).injected_features == 0
    with pytest.raises(ValueError, match="2d_axial"):
        estimate_training_memory(configuration, "bfloat16", experts={})


def test_ensembler_memory_grows_with_volume():
    small, experts = _ensembler_configuration([32, 32, 24])
    large, _ = _ensembler_configuration([64, 64, 48])
    assert (estimate_training_memory(small, "bfloat16", experts=experts).total_bytes
            < estimate_training_memory(large, "bfloat16", experts=experts).total_bytes)


@pytest.mark.parametrize("kind", ["expert", "ensembler"])
def test_a_kspace_task_adds_its_measurement_and_cg_state_to_inference_only(kind):
    if kind == "expert":
        configuration, experts = _expert_configuration(in_channels=4), None     # y_t + 3 positions, no condition
    else:
        configuration, experts = _ensembler_configuration([32, 32, 24])
    volume = [48, 40, 32]
    plain, recon = (estimate_inference_memory(configuration, "bfloat16", volume_shape=volume, experts=experts,
                                              kspace=kspace) for kspace in (False, True))
    # complex64 y and FFT input/output, float32 CG right-hand side and four vectors, over the whole volume
    assert KSPACE_BYTES_PER_VOXEL == 3 * 8 + 5 * 4
    assert recon.measurement_buffers == KSPACE_BYTES_PER_VOXEL * math.prod(volume)
    assert recon.total_bytes - plain.total_bytes == recon.measurement_buffers and plain.measurement_buffers == 0
    assert "measurement_buffers" in recon.as_gb() and "measurement_buffers" not in plain.as_gb()


def test_estimate_total_is_the_sum_of_its_parts_and_includes_workspace():
    estimate = estimate_training_memory(_expert_configuration(), "bfloat16", workspace_gb=0.5)
    assert estimate.workspace == 2 ** 29
    assert estimate.total_bytes == sum(v for k, v in vars(estimate).items())
    assert estimate.as_gb()["total"] == pytest.approx(estimate.total_gb, abs=1e-3)
    assert MemoryEstimate(parameters=2 ** 30).total_gb == 1.0


def test_unknown_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="bfloat16"):
        estimate_training_memory(_expert_configuration(), "int8")


class _ProjectUNet(nn.Module):
    """The project's own U-Net with the memory test's (x, t) -> out call."""

    def __init__(self, network):
        super().__init__()
        from diffens_auto.networks.unet import DiffusionUNet
        self.net = DiffusionUNet.from_plans(network)

    def forward(self, x, t):
        return self.net(x, t)[0]


@pytest.mark.parametrize("network", NETWORKS[:2])
def test_fused_attention_saves_what_the_model_says_and_no_score_matrix(network):
    torch.manual_seed(0)
    fused = {**network, "attention": "sdpa"}
    measured = measured_saved_bytes(_ProjectUNet(fused), fused, (32, 24), 2)
    saved, _ = training_activations(fused, (32, 24), 2, "float32")
    assert saved == pytest.approx(measured, rel=0.03)
    assert saved < training_activations(network, (32, 24), 2, "float32")[0]
    assert forward_peak(fused, (32, 24), 2, "float32") <= forward_peak(network, (32, 24), 2, "float32")
