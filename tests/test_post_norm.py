"""Residual targets mapped through the RMS norm after the MLP (Gemma 2/3, OLMo 2): util/post_norm.py."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
from transformers.models.olmo2.modeling_olmo2 import Olmo2RMSNorm

from util.post_norm import reachable_change, rms_gain, through_post_norm

D, N = 16, 5


def _norms() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    gemma, olmo = Gemma3RMSNorm(D, eps=1e-6), Olmo2RMSNorm(D, eps=1e-6)
    with torch.no_grad():
        gemma.weight.copy_(0.5 * torch.randn(D))         # Gemma: gain 1 + w
        olmo.weight.copy_(1.0 + 0.5 * torch.randn(D))    # OLMo 2: gain w
    return {"gemma3": gemma, "olmo2": olmo}


def _apply(norm: nn.Module, v: torch.Tensor) -> torch.Tensor:
    """The norm on columns (d, n) as the block applies it to each position's vector."""
    with torch.no_grad():
        return norm(v.T.float()).T.double()


@pytest.mark.parametrize("family", ["gemma3", "olmo2"])
def test_the_gain_is_read_from_the_norm_whatever_its_parametrisation(family):
    norm = _norms()[family]
    expected = 1.0 + norm.weight.double() if family == "gemma3" else norm.weight.double()
    assert torch.allclose(rms_gain(norm, D, torch.device("cpu")), expected, rtol=1e-5, atol=1e-6)


def test_a_norm_that_is_not_an_rms_norm_is_refused():
    with pytest.raises(ValueError, match="not an RMS norm"):
        rms_gain(nn.LayerNorm(D), D, torch.device("cpu"))  # subtracts the mean: not g * x / rms(x)


@pytest.mark.parametrize("family", ["gemma3", "olmo2"])
def test_a_reachable_residual_target_is_reached_exactly_and_the_identity_mapping_misses_it(family):
    norm = _norms()[family]
    gain = rms_gain(norm, D, torch.device("cpu"))
    v, other = torch.randn(D, N, dtype=torch.float64) * 3, torch.randn(D, N, dtype=torch.float64)
    residual = _apply(norm, other) - _apply(norm, v)  # a change the norm can make: to norm(other)
    change = through_post_norm(v, residual, gain)
    reached = _apply(norm, v + change) - _apply(norm, v)
    assert torch.allclose(reached, residual, atol=1e-5), (reached - residual).abs().max()
    assert torch.allclose(reachable_change(v, residual, gain), residual, atol=1e-5)
    wrong = _apply(norm, v + residual) - _apply(norm, v)  # the down-projection output moved by r itself
    assert (wrong - residual).abs().max() > 0.1


def test_the_new_value_keeps_the_old_scale_and_an_unreachable_target_goes_to_the_nearest_output_on_its_ray():
    norm = _norms()["gemma3"]
    gain = rms_gain(norm, D, torch.device("cpu"))
    v = torch.randn(D, N, dtype=torch.float64) * 3
    residual = 5.0 * torch.randn(D, N, dtype=torch.float64)  # almost surely off the norm's image
    change = through_post_norm(v, residual, gain)
    new = v + change
    assert torch.allclose(new.pow(2).mean(0), v.pow(2).mean(0), rtol=1e-10)
    reached = _apply(norm, new) - _apply(norm, v)
    assert torch.allclose(reached, reachable_change(v, residual, gain), atol=1e-5)
    target_direction = (_apply(norm, v) + residual) / gain[:, None]
    got_direction = (_apply(norm, new)) / gain[:, None]
    cosine = torch.nn.functional.cosine_similarity(target_direction, got_direction, dim=0)
    assert torch.allclose(cosine, torch.ones(N, dtype=torch.float64), atol=1e-6)
    assert (reached - residual).abs().max() > 0.1  # and it is not the asked change
