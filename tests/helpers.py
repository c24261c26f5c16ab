"""Tiny models, hparams and requests shared by the engine tests."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GPT2Config,
    GPTJConfig,
    GPTNeoXConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

from nse import NSEHyperParams
from util.tokens import encode, encode_target

ROOT = Path(__file__).resolve().parents[1]
# Real data shipped with the checkout (assets/SOURCES.md): the tests need nothing beside it.
ASSETS = ROOT / "assets"
TINY_LLAMA = ASSETS / "tinystories-260k-llama"
COUNTERFACT = ASSETS / "counterfact_test2191_first200.json"
ZSRE = ASSETS / "zsre_mend_eval_head.json"
KNOWNS = ASSETS / "known_1000.json"
CORPUS = str(ASSETS / "corpus")
TASKS_DIR = ROOT / "experiments" / "downstream" / "data"  # the general-capability task files
VOCAB = 512  # the stories260K tokenizer's vocabulary, reused for every tiny model
_LLAMA_SIZES = dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                    intermediate_size=96, max_position_embeddings=128, head_dim=16)
_GEMMA_TEXT = dict(_LLAMA_SIZES, query_pre_attn_scalar=16)
_FAMILY_COMMON = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
# Tiny configs of the families built by model_type (AutoConfig.for_model, offline).
FAMILY_CONFIGS = {
    "gemma": _LLAMA_SIZES,
    "gemma2": _GEMMA_TEXT,
    "gemma3_text": _GEMMA_TEXT,
    "gemma3": dict(text_config=dict(_GEMMA_TEXT, **_FAMILY_COMMON), mm_tokens_per_image=4,
                   vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, image_size=28, patch_size=14)),
    "phi3": {k: v for k, v in _LLAMA_SIZES.items() if k != "head_dim"},
    "olmo": _LLAMA_SIZES,
    "olmo2": _LLAMA_SIZES,
    "falcon": dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=2, ffn_hidden_size=96),
    "phi": dict({k: v for k, v in _LLAMA_SIZES.items() if k != "head_dim"}, num_key_value_heads=2),
    "gpt_bigcode": dict(n_layer=3, n_embd=32, n_head=2, n_inner=96, n_positions=128),
}


def tiny_config(kind: str):
    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2)
    if kind == "gpt2":
        return GPT2Config(n_layer=3, n_embd=32, n_head=2, n_inner=96, n_positions=128, **common)
    if kind == "gptj":
        return GPTJConfig(n_layer=3, n_embd=32, n_head=2, n_inner=96, rotary_dim=8, n_positions=128, **common)
    if kind == "gpt_neox":
        return GPTNeoXConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=2, intermediate_size=96,
                             max_position_embeddings=128, **common)
    llama_like = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}
    if kind in llama_like:
        return llama_like[kind](num_hidden_layers=3, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                                intermediate_size=96, max_position_embeddings=128, head_dim=16, **common)
    if kind in FAMILY_CONFIGS:
        return AutoConfig.for_model(kind, **FAMILY_CONFIGS[kind], **_FAMILY_COMMON)
    raise ValueError(kind)


def tiny_model(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind)).eval()
    with torch.no_grad():  # random init is tiny; give activations a realistic scale
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
        # A wider logit range, or no offset of the residual stream can make a target likely.
        model.get_output_embeddings().weight.mul_(8.0)
    return model


def tiny_hparams(**overrides) -> NSEHyperParams:
    base = dict(
        layers=[0, 1], fact_token="subject_last", v_num_grad_steps=30, v_lr=0.5, v_loss_layer=2,
        v_weight_decay=0.01, clamp_norm_factor=4.0, kl_factor=0.0625, mom2_adjustment=True,
        mom2_update_weight=10.0, mom2_dataset=CORPUS, mom2_n_samples=40, mom2_dtype="float32",
        mom2_max_length=64, alpha=0.01, upper_bound=1e4, max_iterations=3, neuron_threshold=0.9,
    )
    base.update(overrides)
    return NSEHyperParams(**base)


def stories_hparams(**overrides) -> NSEHyperParams:
    hp = NSEHyperParams.from_json(ROOT / "hparams/NSE/tinystories-260k.json")
    overrides = {"mom2_n_samples": 60, "mom2_max_length": 64, "mom2_dataset": CORPUS, **overrides}
    return dataclasses.replace(hp, **overrides)


REQUESTS = [
    {"case_id": 0, "prompt": "Lily liked to eat {}, and her favourite colour was", "subject": "apples",
     "target_new": {"str": "red"}, "target_true": {"str": "blue"}},
    {"case_id": 1, "prompt": "The dog named {} was very", "subject": "Max",
     "target_new": {"str": "happy"}, "target_true": {"str": "sad"}},
    {"case_id": 2, "prompt": "Tom went to the {} with his", "subject": "park",
     "target_new": {"str": "cat"}, "target_true": {"str": "mom"}},
    {"case_id": 3, "prompt": "One day, {} found a big", "subject": "Sue",
     "target_new": {"str": "tree"}, "target_true": {"str": "box"}},
]


@torch.no_grad()
def target_nll(model, tok, prompt: str, target: str) -> float:
    """Mean per-token NLL of ``target`` after ``prompt`` (teacher forced, from ids)."""
    p, t = encode(tok, prompt), encode_target(tok, target)
    device = next(model.parameters()).device
    lp = torch.log_softmax(model(torch.tensor([p + t], device=device)).logits[0].float(), -1)
    return -sum(lp[len(p) - 1 + i, x].item() for i, x in enumerate(t)) / len(t)


def prefers_new(model, tok, request: dict) -> bool:
    prompt = request["prompt"].replace("{}", request["subject"])
    return target_nll(model, tok, prompt, " " + request["target_new"]["str"]) < target_nll(
        model, tok, prompt, " " + request["target_true"]["str"]
    )


# --- hand-made per-case metric dicts (the ``post`` of a case file) ---------------------------------


def cf_post(rewrite, paraphrase, neighborhood, **extra) -> dict:
    """A CounterFact post from (NLL of target_new, NLL of target_true) pairs per prompt group;
    each group's correctness list is ``[True, False][:n_prompts]``."""
    groups = (("rewrite", rewrite), ("paraphrase", paraphrase), ("neighborhood", neighborhood))
    post = {f"{g}_prompts_probs": [{"target_new": n, "target_true": t} for n, t in pairs] for g, pairs in groups}
    post.update({f"{g}_prompts_correct": [True, False][: len(pairs)] for g, pairs in groups})
    post.update(extra)
    return post


# zsRE posts: Efficacy 75 ± 25, Generalization 50 ± 50, Specificity 87.5 ± 12.5 (cases 1/2 and 1,
# 1 and 0, 3/4 and 1).
ZSRE_POSTS = [
    {"rewrite_prompts_correct": [True, False], "paraphrase_prompts_correct": [True, True],
     "neighborhood_prompts_correct": [True, True, True, False]},
    {"rewrite_prompts_correct": [True], "paraphrase_prompts_correct": [False],
     "neighborhood_prompts_correct": [True]},
]


def assert_same_scores(got: dict, want: dict, rel: float = 1e-5) -> None:
    """Two case metric dicts equal, NLLs up to float round-off: teacher-forced scores of several
    cases share padded batches, whose shape moves the last bits (experiments/case_scoring.py)."""
    import pytest

    assert got.keys() == want.keys()
    for key, value in want.items():
        if key.endswith("_probs"):
            assert len(got[key]) == len(value), key
            for g, w in zip(got[key], value):
                assert g == pytest.approx(w, rel=rel), key
        else:
            assert got[key] == value, key
