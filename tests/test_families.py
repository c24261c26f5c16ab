"""Model families as data (util/architectures.py) and the discovery fallback (util/discovery.py):
every family row on a tiny random model of that family, discovery on families without a row and
on hand-made decoders, and the refusals (post-MLP norms for the methods that optimise values,
mixture-of-experts models for every method)."""
import copy
import dataclasses
import logging
import re

import pytest
import torch
from helpers import (FAMILY_CONFIGS, REQUESTS as VALUE_REQUESTS, VOCAB, prefers_new, target_nll, tiny_hparams,
                     tiny_model)
from test_editor_contract import REQUESTS, TEMPLATES, TINY_HPARAMS
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from experiments.algorithms import ALGORITHMS
from util.architectures import MODULE_LAYOUTS, ModuleLayout, get_module, num_layers
from util.discovery import LayoutError, discover_layout, layout_of
from util.hparams import HyperParamsError
from util.prefix_cache import unsupported_reason
from util.requests import normalize_request
from util.rewrite_weights import weight_d_by_f
from util.values import compute_values

# Families whose MLP output passes through a norm before the residual stream.
POST_NORM = ("gemma2", "gemma3", "gemma3_text", "olmo2")
NEW_ROWS = sorted(k for k in FAMILY_CONFIGS if k != "falcon")
# Falcon's layout, found by discovery: it has no row (util/architectures.py says why).
FALCON = ModuleLayout(
    layer_module_tmp="transformer.h.{}", rewrite_module_tmp="transformer.h.{}.mlp.dense_4h_to_h",
    mlp_module_tmp="transformer.h.{}.mlp", attn_module_tmp="transformer.h.{}.self_attention",
    ln_f_module="transformer.ln_f", lm_head_module="lm_head",
)
VALUE_METHODS = ("NSE", "MEMIT", "AlphaEdit", "ENCORE", "ROME")


def family_model(kind: str, seed: int = 0) -> nn.Module:
    """A tiny random model of ``kind`` (helpers.tiny_model builds every family)."""
    return tiny_model(kind, seed)


@pytest.fixture(scope="module")
def tok(tiny_llama_path):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_llama_path)
    t.pad_token = t.pad_token or t.eos_token
    return t


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("stats")


# -- the table ----------------------------------------------------------------------------------


def test_new_families_have_rows_and_post_norm_fields():
    assert set(NEW_ROWS) <= set(MODULE_LAYOUTS) and "falcon" not in MODULE_LAYOUTS
    assert sorted(k for k, row in MODULE_LAYOUTS.items() if row.post_mlp_norm_tmp) == sorted(POST_NORM)


@pytest.mark.parametrize("kind", NEW_ROWS)
def test_row_paths_name_modules_of_the_right_shapes(kind):
    model = family_model(kind)
    row, config = MODULE_LAYOUTS[kind], model.config.get_text_config()
    d, n = config.hidden_size, num_layers(model)
    blocks = get_module(model, row.layer_module_tmp.rpartition(".")[0])
    assert isinstance(blocks, nn.ModuleList) and len(blocks) == n
    assert row.rewrite_module_tmp.startswith(row.mlp_module_tmp + ".")
    assert row.mlp_module_tmp.startswith(row.layer_module_tmp + ".")
    for layer in range(n):
        assert weight_d_by_f(get_module(model, row.rewrite_module_tmp.format(layer))).shape == (d, 96)  # (d, f)
        get_module(model, row.attn_module_tmp.format(layer))
        if row.post_mlp_norm_tmp:
            assert get_module(model, row.post_mlp_norm_tmp.format(layer)).weight.shape == (d,)
    assert get_module(model, row.lm_head_module) is model.get_output_embeddings()
    assert get_module(model, row.lm_head_module).weight.shape == (VOCAB, d)
    ln_f = get_module(model, row.ln_f_module)
    assert getattr(ln_f, "weight", None) is None or ln_f.weight.shape == (d,)  # OLMo's norm has no weight


@pytest.mark.parametrize("kind", sorted(MODULE_LAYOUTS) + ["falcon"])
def test_discovery_finds_each_row_on_its_family(kind, monkeypatch):
    """The hooks check every row, the post-MLP norm included: discovery must find exactly it."""
    model = family_model(kind)
    want = FALCON if kind == "falcon" else MODULE_LAYOUTS[kind]
    monkeypatch.delitem(MODULE_LAYOUTS, kind, raising=False)  # discovery does not read the table
    assert discover_layout(model) == want


# -- editing each family --------------------------------------------------------------------------


def _editor(method: str, model: nn.Module, tok, stats_dir):
    alg = ALGORITHMS[method]
    hparams = alg.hparams_class.from_dict(copy.deepcopy(TINY_HPARAMS[method]))
    templates = TEMPLATES if method != "ROME" else None
    return alg.make_editor(model, tok, hparams, stats_dir=stats_dir, context_templates=templates, progress=False)


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def _edit_takes(method: str, model: nn.Module, tok, stats_dir) -> None:
    editor = _editor(method, model, tok, stats_dir)
    batch = [r if not prefers_new(model, tok, r) else dict(r, target_new=r["target_true"], target_true=r["target_new"])
             for r in REQUESTS[:2]]
    assert not any(prefers_new(model, tok, r) for r in batch)  # the test could fail
    report = editor.edit(batch)
    assert all(prefers_new(editor.model, tok, r) for r in batch), report.log_line()
    assert _hooks(editor.model) == 0


@pytest.mark.parametrize("kind", sorted(k for k in FAMILY_CONFIGS if k not in POST_NORM))
def test_nse_edit_takes_and_leaves_no_hook(kind, tok, stats_dir):
    _edit_takes("NSE", family_model(kind), tok, stats_dir)


@pytest.mark.parametrize("kind", POST_NORM)
@pytest.mark.parametrize("method", VALUE_METHODS)
def test_post_norm_families_are_edited_by_the_methods_that_optimise_values(kind, method, tok, stats_dir):
    """Their values map through the norm on the MLP output (util/post_norm.py; tests/test_post_norm.py
    pins the mapping). A norm caps what one MLP adds to the residual stream, so on these tiny random
    models a target need not become the preferred one: every target's NLL falls, no hook is left."""
    model = family_model(kind)
    editor = _editor(method, model, tok, stats_dir)
    nll = [_target_nll(model, tok, r) for r in REQUESTS[:2]]
    report = editor.edit(REQUESTS[:2])
    assert all(_target_nll(model, tok, r) < 0.9 * x for r, x in zip(REQUESTS[:2], nll)), report.log_line()
    assert _hooks(model) == 0


@pytest.mark.parametrize("kind", POST_NORM)
def test_ft_edits_post_norm_families(kind, tok):
    """FT trains W_out through the model's own forward, norm included. A norm caps what one MLP
    adds to the residual stream, so on these tiny random models a target need not become the
    preferred one; every target's NLL falls, and only the named weight changes."""
    model = family_model(kind)
    hparams = ALGORITHMS["FT"].hparams_class.from_dict(dict(copy.deepcopy(TINY_HPARAMS["FT"]), num_steps=10))
    editor = ALGORITHMS["FT"].make_editor(model, tok, hparams, progress=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    nll = [_target_nll(model, tok, r) for r in REQUESTS[:2]]
    editor.edit(REQUESTS[:2])
    assert all(_target_nll(model, tok, r) < 0.9 * x for r, x in zip(REQUESTS[:2], nll))
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed == [editor.hparams.rewrite_module(1) + ".weight"] and _hooks(model) == 0


def _target_nll(model: nn.Module, tok, request: dict) -> float:
    return target_nll(model, tok, request["prompt"].replace("{}", request["subject"]),
                      " " + request["target_new"]["str"])


def test_the_post_norm_is_found_with_every_path_in_the_file(tok, stats_dir):
    """A file that names every module gets no table look-up; the family's norm is still mapped through."""
    row = MODULE_LAYOUTS["gemma2"]
    paths = {k: getattr(row, k) for k in ("layer_module_tmp", "rewrite_module_tmp", "mlp_module_tmp",
                                          "attn_module_tmp", "ln_f_module", "lm_head_module")}
    editor = ALGORITHMS["NSE"].make_editor(family_model("gemma2"), tok, tiny_hparams(**paths), stats_dir=stats_dir,
                                           progress=False)
    assert set(editor.post_norm_gains) == set(editor.hparams.layers)


@pytest.mark.parametrize("kind", ["gemma2", "olmo2"])
def test_values_at_a_post_norm_mlp_output_run_the_whole_model(kind, tok):
    """An offset at the MLP output is not one at the layer output past a norm: ROME's site runs the
    whole model, so both paths give the same z (the suffix path once added it past the norm)."""
    model = family_model(kind)
    hp = tiny_hparams(v_num_grad_steps=10, layers=[1])
    hp = dataclasses.replace(hp, **{k: getattr(MODULE_LAYOUTS[kind], k) for k in (
        "layer_module_tmp", "rewrite_module_tmp", "mlp_module_tmp", "ln_f_module", "lm_head_module")})
    spec = dataclasses.replace(hp.value_spec(model), site=hp.mlp_module_tmp.format(1))
    assert spec.post_mlp_norm
    fast, full = _z_both_ways(model, tok, spec)
    assert float(((fast.z - full.z).norm(dim=1) / full.z.norm(dim=1)).max()) < 1e-6


# -- the suffix-only value path on the new rows ----------------------------------------------------


def _z_both_ways(model, tok, spec):
    requests = [normalize_request(r) for r in VALUE_REQUESTS]
    templates = [["{}"], ["Once upon a time. {}", "The sun was up and the birds sang. {}"]]
    fast = compute_values(model, tok, requests, spec, templates)
    full = compute_values(model, tok, requests, dataclasses.replace(spec, suffix_only=False), templates)
    assert max(full.updates) > 0  # delta moved: steps were compared, not only h0
    return fast, full


@pytest.mark.parametrize("site", ["block_output", "mlp_output"])
@pytest.mark.parametrize("kind", [k for k in NEW_ROWS if k not in POST_NORM])
def test_suffix_only_z_equals_whole_model_z(kind, site, tok, caplog):
    """As tests/test_prefix_cache.py on the older rows: the fast path runs and gives today's z."""
    model = family_model(kind)
    hp = tiny_hparams(v_num_grad_steps=10).resolved_for(model)
    spec = hp.value_spec(model)
    if site == "mlp_output":  # ROME's site
        spec = dataclasses.replace(spec, site=hp.mlp_module_tmp.format(hp.layers[-1]))
    assert unsupported_reason(model, hp.layer_module_tmp.rpartition(".")[0], seq_len=16) is None
    with caplog.at_level(logging.INFO, logger="util.values"):
        fast, full = _z_both_ways(model, tok, spec)
    assert "runs the whole model each step" not in caplog.text  # the fast path ran
    rel = (fast.z - full.z).norm(dim=1) / full.z.norm(dim=1)
    assert float(rel.max()) < 1e-3, rel  # tests/test_prefix_cache.py's REL_TOL
    assert fast.updates == full.updates


# -- discovery on families without a row -----------------------------------------------------------


def test_unknown_family_is_discovered_logged_and_edited(tok, stats_dir, monkeypatch, caplog):
    """Falcon has no row: the log says what was found, and NSE edits it (values on the whole model,
    since util/prefix_cache.py runs its suffix path on table families only)."""
    model = family_model("falcon")
    with caplog.at_level(logging.INFO, logger="util.discovery"):
        assert layout_of(model) == FALCON
    assert ("discovered layout for model_type 'falcon': 3 blocks transformer.h.{}, MLP transformer.h.{}.mlp with "
            "output projection transformer.h.{}.mlp.dense_4h_to_h") in caplog.text
    assert "joins the residual stream unchanged" in caplog.text
    with caplog.at_level(logging.INFO, logger="util.values"):
        _edit_takes("NSE", model, tok, stats_dir)
    assert "runs the whole model each step: model_type 'falcon' is not in the module table" in caplog.text


def test_a_renamed_family_resolves_to_its_row_by_discovery(monkeypatch, caplog):
    model = tiny_model("llama")
    model.config.model_type = "mystery"
    with caplog.at_level(logging.INFO, logger="util.discovery"):
        hp = tiny_hparams().resolved_for(model)
    assert "discovered layout for model_type 'mystery'" in caplog.text
    assert (hp.rewrite_module_tmp, hp.layer_module_tmp, hp.ln_f_module, hp.lm_head_module) == (
        "model.layers.{}.mlp.down_proj", "model.layers.{}", "model.norm", "lm_head")


class _Attention(nn.Module):
    """Causal mean of the positions so far, projected: enough of an attention for discovery."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        counts = torch.arange(1, x.shape[1] + 1, device=x.device)[None, :, None]
        return self.proj(x.cumsum(dim=1) / counts)


class _Block(nn.Module):
    def __init__(self, d: int, post_norm: bool, gated: bool) -> None:
        super().__init__()
        self.norm, self.attn, self.ffn_norm = nn.LayerNorm(d), _Attention(d), nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, 3 * d), nn.GELU(), nn.Linear(3 * d, d))
        self.ffn_out_norm = nn.LayerNorm(d) if post_norm else None
        self.ffn_scale = nn.Parameter(torch.tensor(0.5)) if gated else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm(h))
        m = self.ffn(self.ffn_norm(h))
        if self.ffn_out_norm is not None:
            m = self.ffn_out_norm(m)
        if self.ffn_scale is not None:
            m = m * self.ffn_scale
        return h + m


class _HandMade(nn.Module):
    """A decoder of no transformers family: blocks.{i}.ffn.2 is its MLP output projection."""

    def __init__(self, post_norm: bool = False, gated: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.config = PretrainedConfig(num_hidden_layers=3, hidden_size=32, vocab_size=VOCAB)
        self.config.model_type = "handmade"
        self.embed = nn.Embedding(VOCAB, 32)
        self.blocks = nn.ModuleList(_Block(32, post_norm, gated) for _ in range(3))
        self.norm_out = nn.LayerNorm(32)
        self.head = nn.Linear(32, VOCAB, bias=False)

    def get_output_embeddings(self) -> nn.Module:
        return self.head

    def forward(self, input_ids: torch.Tensor, **_) -> torch.Tensor:
        h = self.embed(input_ids)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm_out(h))


HAND_MADE = ModuleLayout(layer_module_tmp="blocks.{}", rewrite_module_tmp="blocks.{}.ffn.2",
                         mlp_module_tmp="blocks.{}.ffn", attn_module_tmp="blocks.{}.attn", ln_f_module="norm_out",
                         lm_head_module="head")


def test_hand_made_decoder_is_discovered():
    assert discover_layout(_HandMade()) == HAND_MADE
    post_norm = discover_layout(_HandMade(post_norm=True))
    assert post_norm == dataclasses.replace(HAND_MADE, post_mlp_norm_tmp="blocks.{}.ffn_out_norm")


def test_a_hand_made_post_layer_norm_is_found_with_every_path_in_the_file_and_refused(tok, stats_dir):
    """No row and no discovery (the file names every module): a forward finds the norm; it is a
    LayerNorm, which the mapping (RMS norms only, util/post_norm.py) cannot invert."""
    paths = {k: getattr(HAND_MADE, k) for k in ("layer_module_tmp", "rewrite_module_tmp", "mlp_module_tmp",
                                                "attn_module_tmp", "ln_f_module", "lm_head_module")}
    assert tiny_hparams(**paths).resolved_for(_HandMade()).rewrite_module_tmp == "blocks.{}.ffn.2"
    with pytest.raises(HyperParamsError, match=r"through 'blocks.\{\}.ffn_out_norm' before the residual stream: "
                                               r"LayerNorm after the MLP is not an RMS norm"):
        ALGORITHMS["NSE"].make_editor(_HandMade(post_norm=True), tok, tiny_hparams(**paths), stats_dir=stats_dir,
                                      progress=False)


KEYS = "layer_module_tmp, rewrite_module_tmp, mlp_module_tmp, attn_module_tmp"


def test_an_mlp_output_that_is_scaled_is_refused_naming_the_keys():
    with pytest.raises(LayoutError, match=r"cannot find where the MLP output joins the residual stream in this "
                       r"handmade model \(_HandMade\): a change of blocks.0.ffn.2's output moved blocks.0's output "
                       rf"by something else \(50% off\).*set the module paths in the hparams JSON: {KEYS}"):
        tiny_hparams().resolved_for(_HandMade(gated=True))


def test_a_block_without_an_mlp_is_refused_naming_the_keys():
    model = _HandMade()
    for block in model.blocks:
        block.dense = block.ffn
        del block.ffn
    with pytest.raises(LayoutError, match=rf"cannot find the decoder blocks \(layer_module_tmp\) .*{KEYS}"):
        discover_layout(model)


# -- mixture of experts ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind,sizes,evidence", [
    ("mixtral", dict(num_local_experts=4, num_experts_per_tok=2), "config.num_local_experts=4"),
    ("qwen2_moe", dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                       shared_expert_intermediate_size=32), "config.num_experts=4"),
])
def test_mixture_of_experts_is_refused(kind, sizes, evidence):
    config = AutoConfig.for_model(kind, **dict(FAMILY_CONFIGS["olmo"], num_hidden_layers=2, **sizes),
                                  vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = AutoModelForCausalLM.from_config(config)
    message = rf"{kind} is a mixture-of-experts model \({evidence}\): editing it is out of scope"
    with pytest.raises(LayoutError, match=message):
        tiny_hparams().resolved_for(model)
    with pytest.raises(LayoutError, match=message):  # also when the file names every module
        tiny_hparams(**{k: getattr(MODULE_LAYOUTS["llama"], k) for k in ("layer_module_tmp", "rewrite_module_tmp",
                     "mlp_module_tmp", "attn_module_tmp", "ln_f_module", "lm_head_module")}).resolved_for(model)


def test_a_router_module_is_enough_to_refuse():
    model = _HandMade()
    model.blocks[1].router = nn.Linear(32, 4)
    with pytest.raises(LayoutError, match=r"mixture-of-experts model \(module blocks.1.router \(Linear\)\)"):
        layout_of(model)


def test_the_value_objective_reads_gemma2s_capped_logits(tok):
    """Gemma 2 caps its logits after the head (final_logit_softcapping): the value optimisation's
    log-probabilities are the model's own."""
    from util.values import build_batch, _FullForward, _Objective

    model = family_model("gemma2")
    assert model.config.final_logit_softcapping
    spec = tiny_hparams(layers=[1]).resolved_for(model).value_spec(model)
    b = build_batch(tok, [normalize_request(VALUE_REQUESTS[0])], [["{}"]], spec.fact_token)
    objective = _Objective(model, spec, b, _FullForward(model, spec, b))
    ids = torch.tensor([[5, 17, 42, 9]])
    seen = {}
    handle = model.model.layers[-1].register_forward_hook(
        lambda module, inputs, output: seen.setdefault("h", output[0] if isinstance(output, tuple) else output))
    with torch.no_grad():
        try:
            logits = model(ids).logits[0]
        finally:
            handle.remove()
        mine = objective.log_probs(seen["h"][0])
    assert torch.allclose(mine, torch.log_softmax(logits.float(), -1), atol=1e-4)
