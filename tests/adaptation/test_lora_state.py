"""The LoRA set of one sample: it starts as the prior, is kilobytes, saves, loads, interpolates and comes out."""
import io

import pytest
import torch

from diffens_auto.adaptation import LoRAState
from diffens_auto.planning import network_for_task


def test_a_fresh_set_is_the_prior_and_removing_it_restores_the_expert(recon_plans, make_runner):
    runner = make_runner(recon_plans)
    expert = runner.expert
    before = {k: v.clone() for k, v in expert.state_dict().items()}
    in_channels = network_for_task(recon_plans, "2d_axial", "recon")["in_channels"]
    x, t = torch.randn(3, in_channels, 16, 16), torch.tensor([5] * 3)
    reference = expert(x, t)[0]
    with LoRAState(expert, 4, 1.0, torch.Generator().manual_seed(0)) as state:
        assert torch.equal(expert(x, t)[0], reference)          # up = 0: bitwise the prior
        assert all(p.requires_grad for p in state.parameters)
        assert not any(p.requires_grad for n, p in expert.named_parameters() if ".base." in n)
        parameters = sum(p.numel() for p in expert.parameters())
        assert state.num_bytes() < 0.2 * 4 * parameters        # a small fraction of the network
    assert expert.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in expert.state_dict().items())
    assert torch.equal(expert(x, t)[0], reference)


def test_saved_weights_load_with_weights_only_and_reptile_interpolates(recon_plans, make_runner):
    expert = make_runner(recon_plans).expert
    state = LoRAState(expert, 2, 1.0, torch.Generator().manual_seed(1))
    start = state.snapshot()
    with torch.no_grad():
        for p in state.parameters:
            p.add_(1.0)
    state.reptile(start, 0.25)
    assert all(torch.allclose(p, p0 + 0.25) for p, p0 in zip(state.parameters, start))
    buffer = io.BytesIO()
    torch.save(state.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    state.remove()
    again = LoRAState(expert, 2, 1.0, torch.Generator().manual_seed(7), initial=saved)
    assert all(torch.equal(p, q) for p, q in zip(again.parameters, state.parameters))
    again.remove()
    with pytest.raises(ValueError, match="another --lora_rank"):
        LoRAState(expert, 3, 1.0, torch.Generator().manual_seed(7), initial=saved)
    assert not any(".base." in name for name, _ in expert.named_parameters())   # no half-made set left
