"""The suffix-only value path (util/prefix_cache.py) gives today's z on every architecture in the
module table, and really skips the work it claims to skip."""
import dataclasses
import logging

import pytest
import torch
from helpers import REQUESTS, tiny_hparams, tiny_model

import util.prefix_cache as prefix_cache
from util.architectures import MODULE_LAYOUTS, get_module
from util.hooks import capture, edit_output, forward_until
from util.requests import normalize_request
from util.tokens import pad
import util.values as values
from util.values import compute_values

TEMPLATES = [["{}"], ["Once upon a time. {}", "The sun was up and the birds sang. {}"]]
# Fact tokens at many positions: mid-prompt, first word (right after BOS) and the prompt's last token.
EXTRA = [
    {"case_id": 4, "prompt": "{} was very", "subject": "Tom", "target_new": {"str": "big"},
     "target_true": {"str": "sad"}},
    {"case_id": 5, "prompt": "She gave the ball to {}", "subject": "Ben", "target_new": {"str": "and then she ran"},
     "target_true": {"str": "her"}},
]
ARCHITECTURES = sorted(MODULE_LAYOUTS)
# Measured (float32, 10 steps): max over requests of |z_fast - z_full| / |z_full| is 2e-7 .. 2.2e-4
# across the table. The largest is Qwen2 at the MLP-output site, a request whose loss does not go
# down (15.3 -> 15.2): Adam amplifies round-off step after step there (2.5e-6 after 5 steps); a
# wrong mask or position gives errors of order 1.
REL_TOL = 1e-3


def _requests():
    return [normalize_request(r) for r in REQUESTS + EXTRA]


def _spec(model, site: str, **overrides):
    hp = tiny_hparams(v_num_grad_steps=10, **overrides).resolved_for(model)
    spec = hp.value_spec(model)
    if site == "mlp_output":  # ROME's site
        spec = dataclasses.replace(spec, site=hp.mlp_module_tmp.format(hp.layers[-1]))
    return spec


def _assert_same_z(fast, full):
    rel = (fast.z - full.z).norm(dim=1) / full.z.norm(dim=1)
    assert float(rel.max()) < REL_TOL, rel
    assert torch.allclose(fast.h0, full.h0, rtol=1e-6, atol=1e-6)  # one whole-model pass each, before delta
    assert fast.updates == full.updates
    assert fast.losses == pytest.approx(full.losses, rel=1e-3, abs=1e-5)


@pytest.mark.parametrize("site", ["block_output", "mlp_output"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_suffix_only_z_equals_whole_model_z(arch, site, tok):
    model = tiny_model(arch)
    spec = _spec(model, site)
    reqs = _requests()
    fast = compute_values(model, tok, reqs, spec, TEMPLATES)
    full = compute_values(model, tok, reqs, dataclasses.replace(spec, suffix_only=False), TEMPLATES)
    assert max(full.updates) > 0  # delta moved, so the steps were compared, not just h0
    _assert_same_z(fast, full)


@pytest.mark.parametrize("loss_layer,layers", [(1, [0, 1]), (2, [0, 2])])
def test_loss_layer_below_the_last_or_at_the_site(loss_layer, layers, tok):
    """The NLL reads v_loss_layer, the KL the last layer; either may be the site's own layer.

    Compared as outputs and gradients at a random delta, not as z: where the loss reads the site's
    own layer, most targets do not depend on delta, so the first gradient is the KL term's at its
    minimum, round-off alone, and Adam's first step (lr * sign) turns round-off into z."""
    model = tiny_model("llama")
    spec = _spec(model, "block_output", v_loss_layer=loss_layer, layers=layers)
    b = values._build_batch(tok, _requests(), TEMPLATES, spec.fact_token)
    delta = torch.randn(len(_requests()), model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    got = []
    for forward in (values._SuffixOnlyForward(model, spec, b, "model.layers"), values._FullForward(model, spec, b)):
        d = delta.clone().requires_grad_(True)
        target_hidden, kl_hidden = forward(d)
        weights = torch.Generator().manual_seed(1)
        loss = (target_hidden * torch.randn(target_hidden.shape, generator=weights)).sum()
        (loss + (kl_hidden * torch.randn(kl_hidden.shape, generator=weights)).sum()).backward()
        got.append((target_hidden.detach(), kl_hidden.detach(), d.grad))
    for fast, full in zip(*got):
        assert torch.allclose(fast, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,attention", [("llama", "eager"), ("llama", "sdpa"), ("gpt2", "eager"),
                                            ("gptj", "eager"), ("gpt_neox", "sdpa"), ("qwen3", "sdpa")])
def test_suffix_outputs_equal_a_full_forward_with_the_offset(arch, attention, tok):
    """Layer outputs at every suffix position, offsets at different positions per padded row."""
    model = tiny_model(arch)
    model.set_attn_implementation(attention)
    layers_path = MODULE_LAYOUTS[arch].layer_module_tmp.rsplit(".", 1)[0]
    ids, mask = pad([[1, 5, 9, 30, 41, 7, 8], [1, 60, 61], [1, 70, 71, 72, 73, 74, 75, 76, 77]], 0)
    start, end = torch.tensor([3, 0, 5]), torch.tensor([6, 2, 5])
    offset = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(1)) * 3
    run = prefix_cache.SuffixForward(model, layers_path, 0, 2, ids, mask, start, end)
    got = run(offset, read=(1, 2))
    rows = torch.arange(3)
    with edit_output(model, f"{layers_path}.0", lambda h: h.index_put((rows, start), offset, accumulate=True)), \
            capture(model, output_of=[f"{layers_path}.1", f"{layers_path}.2"]) as seen:
        forward_until(model, None, input_ids=ids, attention_mask=mask)
    for layer in (1, 2):
        want = seen.outputs[f"{layers_path}.{layer}"]
        for r in range(3):
            span = slice(int(start[r]), int(end[r]) + 1)
            assert torch.allclose(got[layer][r, : int(end[r] - start[r]) + 1], want[r, span], atol=1e-5), (layer, r)


def test_steps_run_no_layer_below_the_site_and_only_the_suffix(tok):
    model = tiny_model("llama")
    spec = _spec(model, "block_output", layers=[0, 1])  # site: layer 1 of 0..2
    calls: dict[int, list[int]] = {0: [], 1: [], 2: []}
    layers = get_module(model, "model.layers")
    handles = [layers[i].register_forward_pre_hook(lambda _m, args, i=i: calls[i].append(args[0].shape[1]))
               for i in calls]
    try:
        out = compute_values(model, tok, _requests(), spec, TEMPLATES)
    finally:
        for h in handles:
            h.remove()
    evaluations = max(out.updates) + 1
    assert len(calls[0]) == len(calls[1]) == 1  # the one pass that fills the cache
    full_length = calls[0][0]
    assert len(calls[2]) == 1 + evaluations
    assert all(n < full_length / 2 for n in calls[2][1:]), (calls[2], full_length)


def test_unsupported_model_falls_back_with_a_log_line(tok, caplog, monkeypatch):
    model = tiny_model("llama")
    spec = _spec(model, "block_output")
    monkeypatch.setattr(prefix_cache, "ATTENTION_IMPLEMENTATIONS", ("flash_attention_2",))
    with caplog.at_level(logging.INFO, logger="util.values"):
        fallback = compute_values(model, tok, _requests()[:2], spec, TEMPLATES)
    assert "runs the whole model each step: attention implementation 'sdpa'" in caplog.text
    full = compute_values(model, tok, _requests()[:2], dataclasses.replace(spec, suffix_only=False), TEMPLATES)
    assert torch.equal(fallback.z, full.z)


@pytest.fixture(scope="module")
def tok(tiny_llama_path):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_llama_path)
    t.pad_token = t.pad_token or t.eos_token
    return t


def test_short_suffixes_fill_the_padding_of_long_ones():
    assert prefix_cache.pack_rows([4, 4, 1, 1, 5], capacity=5) == [[4], [0, 2], [1, 3]]
    assert prefix_cache.pack_rows([1] * 6, capacity=6, max_segments=4) == [[0, 1, 2, 3], [4, 5]]
    assert prefix_cache.pack_rows([3], capacity=3) == [[0]]
