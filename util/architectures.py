"""One table per architecture: where the pieces an editor touches live in each model family.

Keyed by ``config.model_type`` (PEFT-style registry). Templates contain ``{}`` for the layer
index. Adding a model family is adding a row; no algorithm branches on a model's name. A family
without a row is found from the module tree (util/discovery.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModuleLayout:
    layer_module_tmp: str     # decoder block; its output is the residual stream ("z layer")
    rewrite_module_tmp: str   # MLP output projection W_out: key (f) -> value (d)
    mlp_module_tmp: str
    attn_module_tmp: str
    ln_f_module: str          # final norm applied before the LM head
    lm_head_module: str
    # The norm the MLP output passes through before it joins the residual stream (Gemma 2/3's and
    # OLMo 2's post_feedforward_layernorm); None where the MLP output is added as it is. MEMIT's
    # family writes residual-stream values through W_out, which holds only without such a norm.
    post_mlp_norm_tmp: str | None = None


_LLAMA_LIKE = ModuleLayout(
    layer_module_tmp="model.layers.{}",
    rewrite_module_tmp="model.layers.{}.mlp.down_proj",
    mlp_module_tmp="model.layers.{}.mlp",
    attn_module_tmp="model.layers.{}.self_attn",
    ln_f_module="model.norm",
    lm_head_module="lm_head",
)

# Gemma 2/3 and OLMo 2: Llama's names, and a norm on the MLP output before the residual sum.
_POST_NORM = dataclasses.replace(_LLAMA_LIKE, post_mlp_norm_tmp="model.layers.{}.post_feedforward_layernorm")

MODULE_LAYOUTS: dict[str, ModuleLayout] = {
    "gpt2": ModuleLayout(
        layer_module_tmp="transformer.h.{}",
        rewrite_module_tmp="transformer.h.{}.mlp.c_proj",
        mlp_module_tmp="transformer.h.{}.mlp",
        attn_module_tmp="transformer.h.{}.attn",
        ln_f_module="transformer.ln_f",
        lm_head_module="lm_head",
    ),
    "gptj": ModuleLayout(
        layer_module_tmp="transformer.h.{}",
        rewrite_module_tmp="transformer.h.{}.mlp.fc_out",
        mlp_module_tmp="transformer.h.{}.mlp",
        attn_module_tmp="transformer.h.{}.attn",
        ln_f_module="transformer.ln_f",
        lm_head_module="lm_head",
    ),
    "gpt_neox": ModuleLayout(
        layer_module_tmp="gpt_neox.layers.{}",
        rewrite_module_tmp="gpt_neox.layers.{}.mlp.dense_4h_to_h",
        mlp_module_tmp="gpt_neox.layers.{}.mlp",
        attn_module_tmp="gpt_neox.layers.{}.attention",
        ln_f_module="gpt_neox.final_layer_norm",
        lm_head_module="lm_head",  # "embed_out" before transformers 5
    ),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,     # its norms have no weights: nothing for an editor to find there
    "phi3": _LLAMA_LIKE,     # gate and up projections fused (mlp.gate_up_proj); down_proj as Llama's
    # Post-norm rows: methods that optimise values refuse them (util/module_hparams.py). Lifting that
    # needs util/prefix_cache.py's suffix path too: it fails on Gemma 3 (its rotary embedding takes
    # a layer type) and adds ROME's MLP-output values past the norm on all three.
    "gemma2": _POST_NORM,
    "gemma3_text": _POST_NORM,
    # Gemma 3 with its vision tower (Gemma3ForConditionalGeneration): the text model is inside.
    "gemma3": ModuleLayout(
        layer_module_tmp="model.language_model.layers.{}",
        rewrite_module_tmp="model.language_model.layers.{}.mlp.down_proj",
        mlp_module_tmp="model.language_model.layers.{}.mlp",
        attn_module_tmp="model.language_model.layers.{}.self_attn",
        ln_f_module="model.language_model.norm",
        lm_head_module="lm_head",
        post_mlp_norm_tmp="model.language_model.layers.{}.post_feedforward_layernorm",
    ),
    "olmo2": _POST_NORM,     # no norm before attention or MLP: both outputs are normed instead
    # Falcon has no row: a row sends value optimisation down util/prefix_cache.py's suffix-only path,
    # which calls Falcon's blocks without their required `alibi` argument (TypeError). Discovery
    # finds its layout (tests/test_families.py holds it), and values then run the whole model.
    # Parallel attention (attention and MLP read the same input; both outputs join the residual).
    "phi": ModuleLayout(
        layer_module_tmp="model.layers.{}",
        rewrite_module_tmp="model.layers.{}.mlp.fc2",
        mlp_module_tmp="model.layers.{}.mlp",
        attn_module_tmp="model.layers.{}.self_attn",
        ln_f_module="model.final_layernorm",
        lm_head_module="lm_head",
    ),
    "gpt_bigcode": ModuleLayout(  # GPT-2's names, nn.Linear instead of Conv1D
        layer_module_tmp="transformer.h.{}",
        rewrite_module_tmp="transformer.h.{}.mlp.c_proj",
        mlp_module_tmp="transformer.h.{}.mlp",
        attn_module_tmp="transformer.h.{}.attn",
        ln_f_module="transformer.ln_f",
        lm_head_module="lm_head",
    ),
}


def layout_for(config) -> ModuleLayout:
    """The module table of a model's family, or an error listing the known ones."""
    model_type = getattr(config, "model_type", None)
    if model_type not in MODULE_LAYOUTS:
        raise ValueError(
            f"no module table for model_type={model_type!r}; known: {sorted(MODULE_LAYOUTS)}. "
            "Add a row to util/architectures.py:MODULE_LAYOUTS or set the *_module_tmp keys in the hparams JSON"
        )
    return MODULE_LAYOUTS[model_type]


def num_layers(model: nn.Module) -> int:
    return model.config.get_text_config().num_hidden_layers


def get_module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(
            f"the model ({type(model).__name__}) has no module {name!r}; check the *_module_tmp keys "
            "in the hparams JSON (or omit them to use the table for this model_type)"
        ) from None


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
