"""The MEMIT family's context templates as the original generated them: each prefix 10 tokens in
total, its start word and any BOS included (generate_fast's max_out_len)."""
from __future__ import annotations

import pytest
from memit import MEMITHyperParams
from util.context_templates import TEMPLATE_STARTS, generate_context_templates
from util.hparams import HyperParamsError
from util.tokens import encode


def _prefix_lengths(tok, templates):
    return [len(encode(tok, t.removesuffix(". {}"))) for t in templates[1]]


def test_prefixes_are_ten_tokens_in_all_as_the_original(tiny_llama):
    model, tok = tiny_llama
    templates = generate_context_templates(model, tok, seed=3)
    assert templates[0] == ["{}"] and len(templates[1]) == len(TEMPLATE_STARTS)
    assert all(t.endswith(". {}") for t in templates[1])
    assert all(t.startswith(start) for t, start in zip(templates[1], TEMPLATE_STARTS))
    # Re-encoding decoded text can merge or split a token at a boundary: allow one either way.
    lengths = _prefix_lengths(tok, templates)
    assert all(abs(n - 10) <= 1 for n in lengths), lengths
    before = generate_context_templates(model, tok, seed=3, counted="new_tokens")  # the former: 10 new
    old = _prefix_lengths(tok, before)
    assert all(n - len(encode(tok, s)) >= 9 for n, s in zip(old, TEMPLATE_STARTS)), old
    assert sum(old) > sum(lengths)


def test_the_switch_is_checked(tiny_llama):
    base = dict(layers=[0], fact_token="subject_last", v_num_grad_steps=1, v_lr=0.1, v_loss_layer=1,
                v_weight_decay=0.0, clamp_norm_factor=4.0, kl_factor=0.0, mom2_adjustment=True,
                mom2_dataset="x", mom2_n_samples=1, mom2_dtype="float32", mom2_update_weight=1.0)
    assert MEMITHyperParams(**base).context_template_length == "total"
    with pytest.raises(HyperParamsError, match="'context_template_length' must be one of"):
        MEMITHyperParams(**base, context_template_length="short")
    model, tok = tiny_llama
    assert generate_context_templates(model, tok, seed=3) == generate_context_templates(model, tok, seed=3)
