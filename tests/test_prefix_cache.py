"""The suffix-only value path (util/prefix_cache.py) gives today's z on every architecture in the
module table, and really skips the work it claims to skip."""
import dataclasses
import logging

import pytest
import torch
from helpers import REQUESTS, tiny_hparams, tiny_model
from test_families import family_model

import util.prefix_cache as prefix_cache
from util.architectures import MODULE_LAYOUTS, get_module
from util.hooks import capture, edit_output, forward_until
from util.requests import normalize_request
from transformers import DynamicCache

from util.tokens import pad
import util.values as values
from util.values import LossBelow, compute_values

TEMPLATES = [["{}"], ["Once upon a time. {}", "The sun was up and the birds sang. {}"]]
# Fact tokens at many positions: mid-prompt, first word (right after BOS) and the prompt's last token.
EXTRA = [
    {"case_id": 4, "prompt": "{} was very", "subject": "Tom", "target_new": {"str": "big"},
     "target_true": {"str": "sad"}},
    {"case_id": 5, "prompt": "She gave the ball to {}", "subject": "Ben", "target_new": {"str": "and then she ran"},
     "target_true": {"str": "her"}},
]
# Every row of the module table (on rows with a norm on the MLP output, an MLP-output site runs the
# whole model: the suffix path adds its offset at the layer output).
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
    model = family_model(arch)
    spec = _spec(model, site)
    reqs = _requests()
    fast = compute_values(model, tok, reqs, spec, TEMPLATES)
    full = compute_values(model, tok, reqs, dataclasses.replace(spec, suffix_only=False), TEMPLATES)
    assert max(full.updates) > 0  # delta moved, so the steps were compared, not just h0
    _assert_same_z(fast, full)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_requests_that_stop_leave_the_batch_and_z_stays(arch, tok):
    """Requests stopped at different passes (their rows leave the suffix batch) against the
    whole-model path, where every row runs every pass and stopped requests are not read."""
    from test_values import StopAfter

    model = family_model(arch)
    spec = dataclasses.replace(_spec(model, "block_output"), stop=StopAfter((2, 5, None, 1, 7, 3)))
    reqs = _requests()
    fast = compute_values(model, tok, reqs, spec, TEMPLATES)
    full = compute_values(model, tok, reqs, dataclasses.replace(spec, suffix_only=False), TEMPLATES)
    assert fast.updates == [2, 5, 9, 1, 7, 3]
    _assert_same_z(fast, full)


@pytest.mark.parametrize("loss_layer,layers", [(1, [0, 1]), (2, [0, 2])])
def test_loss_layer_below_the_last_or_at_the_site(loss_layer, layers, tok):
    """The NLL reads v_loss_layer, the KL the last layer; either may be the site's own layer.

    Compared as outputs and gradients at a random delta, not as z: where the loss reads the site's
    own layer, most targets do not depend on delta, so the first gradient is the KL term's at its
    minimum, round-off alone, and Adam's first step (lr * sign) turns round-off into z."""
    model = tiny_model("llama")
    spec = _spec(model, "block_output", v_loss_layer=loss_layer, layers=layers)
    b = values.build_batch(tok, _requests(), TEMPLATES, spec.fact_token)
    delta = torch.randn(len(_requests()), model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    got = []
    for forward in (values._SuffixOnlyForward(model, spec, b, "model.layers"), values._FullForward(model, spec, b)):
        d = delta.clone().requires_grad_(True)
        target_hidden, kl_hidden = forward(d)  # every request
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


def test_steps_run_no_layer_below_the_site_and_only_the_suffix(tok, monkeypatch):
    model = tiny_model("llama")
    # site: layer 1 of 0..2; no request stops, so every pass but none is followed by a step
    spec = dataclasses.replace(_spec(model, "block_output", layers=[0, 1]), stop=LossBelow(-1.0))
    calls: list[tuple[int, int, bool]] = []  # (layer, positions per batch row, inside a step's call)
    stepping = [False]
    real_call = prefix_cache.SuffixForward.__call__

    def marked_call(self, *args, **kwargs):
        stepping[0] = True
        try:
            return real_call(self, *args, **kwargs)
        finally:
            stepping[0] = False

    monkeypatch.setattr(prefix_cache.SuffixForward, "__call__", marked_call)
    layers = get_module(model, "model.layers")
    handles = [layers[i].register_forward_pre_hook(
        lambda _m, args, i=i: calls.append((i, args[0].shape[1], stepping[0]))) for i in range(3)]
    try:
        out = compute_values(model, tok, _requests(), spec, TEMPLATES)
    finally:
        for h in handles:
            h.remove()
    steps = [c for c in calls if c[2]]
    prefill = [c for c in calls if not c[2]]
    assert {layer for layer, _, _ in steps} == {2}
    assert len(steps) == spec.num_steps - 1 == max(out.updates)  # no pass that only logs
    # Below the site: one pass per context template and one for the KL prompts, one for the first
    # tokens each template's rows share (BOS at least, here), all before the first step.
    per_layer = [sum(1 for layer, _, _ in prefill if layer == i) for i in range(3)]
    assert per_layer[0] == per_layer[1] == len(TEMPLATES[0]) + len(TEMPLATES[1]) + 1 + 1
    full_length = values.build_batch(tok, _requests(), TEMPLATES, spec.fact_token).ids.shape[1]
    assert all(n < full_length / 2 for _, n, _ in steps), (steps, full_length)


# Rows in groups (e.g. context templates): group 0 shares 4 first tokens, group 1 two (capped by a
# start), group 2 is one row, group 3's rows share nothing.
GROUPED_IDS = [[1, 5, 9, 30, 41, 7, 8, 11], [1, 5, 9, 30, 42, 43, 44, 45, 46], [1, 5, 9, 30, 47, 48],
               [1, 60, 61, 62], [1, 60, 70, 71, 72, 73], [1, 80, 81], [2, 90, 91, 92], [3, 93]]
GROUPS = [0, 0, 0, 1, 1, 2, 3, 3]
STARTS, ENDS = [5, 6, 4, 2, 3, 0, 1, 1], [7, 8, 5, 3, 5, 2, 3, 1]


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_prefill_keeps_what_a_full_pass_computes(arch):
    """The keys/values before each start, the site's output from start to end and the captured
    module's at start: those of one whole-model pass over the padded rows (the prefill before);
    then the calls of a subset of rows equal a whole-model pass with their offsets."""
    model = family_model(arch)
    layout = MODULE_LAYOUTS[arch]
    layers_path = layout.layer_module_tmp.rsplit(".", 1)[0]
    ids, mask = pad(GROUPED_IDS, 0)
    start, end = torch.tensor(STARTS), torch.tensor(ENDS)
    mlp = layout.mlp_module_tmp.format(0)
    run = prefix_cache.SuffixForward(model, layers_path, 0, 2, ids, mask, start, end, capture_output_of=(mlp,),
                                     groups=torch.tensor(GROUPS))
    assert prefix_cache.shared_prefix_lengths(ids, start, torch.tensor(GROUPS)).tolist() == [4, 4, 4, 2, 2, 0, 0, 0]
    cache = DynamicCache()
    with torch.no_grad(), capture(model, output_of=[f"{layers_path}.0", mlp]) as seen:
        forward_until(model, None, input_ids=ids, attention_mask=mask, past_key_values=cache, use_cache=True)
    for r in range(len(GROUPED_IDS)):
        s, e = STARTS[r], ENDS[r]
        for i in (1, 2):
            assert torch.allclose(run.keys[i][r, :, :s], cache.layers[i].keys[r, :, :s], atol=1e-5), (i, r)
            assert torch.allclose(run.values[i][r, :, :s], cache.layers[i].values[r, :, :s], atol=1e-5), (i, r)
        assert torch.allclose(run.site[r, s : e + 1], seen.outputs[f"{layers_path}.0"][r, s : e + 1], atol=1e-5)
        assert torch.allclose(run.at_start[mlp][r], seen.outputs[mlp][r, s], atol=1e-5)
    rows = torch.tensor([1, 3, 4, 6])
    run.select(rows)
    d = model.config.get_text_config().hidden_size
    offset = torch.randn(len(rows), d, generator=torch.Generator().manual_seed(1)) * 3
    got = run(offset, read=(1, 2))
    at = (torch.arange(len(GROUPED_IDS)), start)
    full_offset = torch.zeros(len(GROUPED_IDS), d).index_copy(0, rows, offset)
    with edit_output(model, f"{layers_path}.0", lambda h: h.index_put(at, full_offset, accumulate=True)), \
            capture(model, output_of=[f"{layers_path}.1", f"{layers_path}.2"]) as seen:
        forward_until(model, None, input_ids=ids, attention_mask=mask)
    for layer in (1, 2):
        for a, r in enumerate(rows.tolist()):
            want = seen.outputs[f"{layers_path}.{layer}"][r, STARTS[r] : ENDS[r] + 1]
            assert torch.allclose(got[layer][a, : len(want)], want, atol=1e-5), (layer, r)


def test_the_prefill_runs_each_position_once_and_none_it_need_not(monkeypatch):
    """Positions through the layers in the prefill of the grouped rows (8 rows padded to 9: the
    whole-model pass ran 72 through every layer)."""
    model = tiny_model("llama")
    ids, mask = pad(GROUPED_IDS, 0)
    positions = {0: 0, 1: 0, 2: 0}
    layers = get_module(model, "model.layers")
    handles = [layers[i].register_forward_pre_hook(
        lambda _m, args, i=i: positions.__setitem__(i, positions[i] + args[0].shape[0] * args[0].shape[1]))
        for i in range(3)]
    try:
        prefix_cache.SuffixForward(model, "model.layers", 0, 2, ids, mask, torch.tensor(STARTS), torch.tensor(ENDS),
                                   groups=torch.tensor(GROUPS))
    finally:
        for h in handles:
            h.remove()
    shared = 2 * 4  # the shared tokens of groups 0 and 1, once (padded to the longer), every layer
    # The site layer 0: each group's rows after their shared tokens up to the group's last end.
    lower = 3 * (9 - 4) + 2 * (6 - 2) + 1 * 3 + 2 * 4
    # Above it: only positions between the shared ones and the start (1, 2, 0, 0, 1, 0, 1, 1),
    # packed into bins of 2 slots: [2], [1, 1], [1, 1].
    upper = 3 * 2
    assert positions == {0: shared + lower, 1: shared + upper, 2: shared + upper}


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
