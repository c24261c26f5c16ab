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


def _distance(norm: nn.Module, v: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (_apply(norm, v) - target).norm(dim=0)


@pytest.mark.parametrize("zero_gains", [False, True])
def test_an_unreachable_target_goes_to_the_nearest_output_the_norm_can_give(zero_gains):
    """Nearer than the old output, than the target's own direction rescaled, and than any of 4000
    random outputs; the new value keeps the old one's scale. Real gains reach 0 (Gemma 3 270M)."""
    norm = _norms()["gemma3"]
    if zero_gains:
        with torch.no_grad():
            norm.weight[:3] = -1.0  # gain 1 + w = 0 on three channels
            norm.weight[3] = 30.0
    gain = rms_gain(norm, D, torch.device("cpu"))
    v = torch.randn(D, N, dtype=torch.float64) * 3
    residual = 5.0 * torch.randn(D, N, dtype=torch.float64)  # almost surely off the norm's image
    new = v + through_post_norm(v, residual, gain)
    assert torch.isfinite(new).all()
    assert torch.allclose(new.pow(2).mean(0), v.pow(2).mean(0), rtol=1e-10)
    target = _apply(norm, v) + residual
    got = _distance(norm, new, target)
    assert (got <= _distance(norm, v, target) + 1e-6).all()  # never farther than leaving it
    g = gain[:, None]
    ray = target / g.where(g.abs() > 1e-3, torch.full_like(g, 1e-3))  # the old rule: divide by g, rescale
    assert (got <= _distance(norm, ray, target) + 1e-6).all()
    samples = torch.randn(D, 4000, dtype=torch.float64)
    for column in range(N):
        others = (_apply(norm, samples) - target[:, column:column + 1]).norm(dim=0)
        assert got[column] <= others.min() + 1e-6
    assert (got > 0.1).all()  # and it is not the asked change


def test_a_reachable_target_is_exact_with_zero_gains_too():
    norm = _norms()["gemma3"]
    with torch.no_grad():
        norm.weight[:3] = -1.0
    gain = rms_gain(norm, D, torch.device("cpu"))
    v, other = torch.randn(D, N, dtype=torch.float64) * 3, torch.randn(D, N, dtype=torch.float64)
    residual = _apply(norm, other) - _apply(norm, v)
    reached = _apply(norm, v + through_post_norm(v, residual, gain)) - _apply(norm, v)
    assert torch.allclose(reached, residual, atol=1e-5)


# -- the MEMIT family's update on post-norm blocks --------------------------------------------------


from helpers import tiny_model  # noqa: E402
from test_editor_contract import REQUESTS, TINY_HPARAMS  # noqa: E402

from experiments.algorithms import get_algorithm  # noqa: E402
from util.architectures import get_module  # noqa: E402
from util.requests import normalize_request  # noqa: E402
from util.rewrite_weights import weight_d_by_f  # noqa: E402

LAYER = 1


@pytest.fixture(scope="module")
def tok(tiny_llama_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_path)


def _editor(kind: str, tok, tmp_path):
    model = tiny_model(kind)
    alg = get_algorithm("MEMIT")
    # One layer, almost no regulariser: the solve then makes W_out k what it is asked to, so the only
    # thing between the target and the block output is the mapping under test.
    hp = alg.hparams_class(**dict(TINY_HPARAMS["MEMIT"], layers=[LAYER], mom2_update_weight=1e-6))
    editor = alg.make_editor(model, tok, hp, stats_dir=tmp_path, progress=False)
    editor.context_templates = [["{}"]]  # keys at the plain prompt, where the block output is read
    editor.prepare()
    return editor


def _reachable_target(editor, requests) -> tuple[torch.Tensor, torch.Tensor]:
    """The block output now and a target it can take: the MLP's normed output moved to the normed
    output of another W_out output (so a correct mapping reaches it exactly)."""
    hp = editor.hparams
    keys, h = editor._keys_and_z_layer_output(requests, [LAYER], [["{}"]])
    weight = weight_d_by_f(get_module(editor.model, hp.rewrite_module(LAYER))).detach()
    v = (keys[hp.rewrite_module(LAYER)].float() @ weight.T.float()).T.double()  # (d, n)
    norm = get_module(editor.model, hp.layer_module(LAYER) + ".post_feedforward_layernorm")
    other = v + 0.8 * v.pow(2).mean(0).sqrt() * torch.randn(v.shape, generator=torch.Generator().manual_seed(1),
                                                            dtype=torch.float64)
    return h.double(), h.double() + (_apply(norm, other) - _apply(norm, v)).T


@pytest.mark.parametrize("kind", ["gemma2", "gemma3_text", "olmo2"])
def test_after_the_update_the_block_output_reaches_a_reachable_target_and_the_identity_mapping_does_not(
        kind, tok, tmp_path):
    requests = [normalize_request(r) for r in REQUESTS[:2]]
    reached = {}
    for mapping in ("through the norm", "identity"):
        editor = _editor(kind, tok, tmp_path)
        assert set(editor.post_norm_gains) == {LAYER}
        if mapping == "identity":
            editor.post_norm_gains = {}  # the known-wrong mapping: the residual change as W_out's change
        h, z = _reachable_target(editor, requests)
        editor._update_layers(requests, z.float())
        _, after = editor._keys_and_z_layer_output(requests, [], [["{}"]])
        reached[mapping] = float((after.double() - z).norm() / (z - h).norm())
    assert reached["through the norm"] < 1e-3, reached
    assert reached["identity"] > 0.1, reached


def test_norm_anchoring_is_refused_on_a_post_norm_model(tok, tmp_path):
    alg = get_algorithm("MEMIT")
    hp = alg.hparams_class(**dict(TINY_HPARAMS["MEMIT"], norm_anchor=True))
    with pytest.raises(Exception, match="norm_anchor cannot be used on this olmo2 model"):
        alg.make_editor(tiny_model("olmo2"), tok, hp, stats_dir=tmp_path, progress=False)


def test_a_model_without_a_post_norm_maps_nothing(tok, tmp_path):
    editor = _editor("llama", tok, tmp_path)
    assert editor.post_norm_gains == {}
    residual = torch.randn(32, 2)
    assert editor._as_output_change(LAYER, torch.randn(96, 2), residual) is residual
