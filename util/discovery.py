"""The module layout of a model: its family's row in util/architectures.py, or, for a family
without one, found from the module tree and checked on a forward pass.

Discovery looks for the list of ``num_hidden_layers`` decoder blocks, each block's MLP (a child
named like mlp/ffn/feed_forward) and that MLP's output projection (its last Linear or Conv1D of
output width ``hidden_size``), the attention, the final norm and the LM head. Then two forwards
of a few tokens check what the editing math relies on: the projection's output is the MLP's
output, and a change of it reaches the block output unchanged (or through one norm, which is
reported: see ``ModuleLayout.post_mlp_norm_tmp``); the final norm reads the last block's output
and the head reads the norm's. Anything else is refused with the hparams keys that would say it.
Mixture-of-experts models are refused: their MLP output is a routed mix of experts, not one W_out.
"""
from __future__ import annotations

import logging
import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from util.architectures import MODULE_LAYOUTS, ModuleLayout, get_module, model_device
from util.hparams import HyperParamsError

log = logging.getLogger(__name__)

MLP_WORDS = ("mlp", "ffn", "feed_forward", "feedforward")
ATTENTION_WORDS = ("attn", "attention")
MOE_CONFIG_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
MOE_MODULE_NAMES = re.compile(r"experts?|router|moe", re.IGNORECASE)  # module or class names
PROBE_IDS = (1, 2, 3, 4, 5, 6)  # a short input; any ids below the vocabulary do
# Relative mismatch below which two hidden vectors count as the same. Round-off of a bf16 sum is
# about 0.4 % of it; a norm on the path moves a change by tens of percent.
SAME = 0.05
KEYS_HINT = (
    "set the module paths in the hparams JSON: layer_module_tmp, rewrite_module_tmp, mlp_module_tmp, "
    "attn_module_tmp (templates with {} for the layer index, e.g. \"model.layers.{}.mlp.down_proj\"), "
    "ln_f_module and lm_head_module; or add a row for this model_type to util/architectures.py:MODULE_LAYOUTS"
)


class LayoutError(HyperParamsError):
    """No layout found or verified; the message names the hparams keys that would give one."""


def layout_of(model: nn.Module) -> ModuleLayout:
    """The family's row of the module table, or the layout discovered and checked on this model."""
    refuse_mixture_of_experts(model)
    row = MODULE_LAYOUTS.get(model.config.model_type)
    return row if row is not None else discover_layout(model)


def post_mlp_norm_of(model: nn.Module, layer_module_tmp: str, rewrite_module_tmp: str) -> str | None:
    """The family's post-MLP norm template from the table, or, for a family without a row, the one
    a forward shows between ``rewrite_module_tmp``'s output and the block output."""
    row = MODULE_LAYOUTS.get(model.config.model_type)
    if row is not None:
        return row.post_mlp_norm_tmp
    return _probe(model, layer_module_tmp, rewrite_module_tmp, None).post_norm


def refuse_mixture_of_experts(model: nn.Module) -> None:
    """Mixture-of-experts blocks are out of scope: refuse them before any other check."""
    evidence = _mixture_of_experts(model)
    if evidence:
        raise LayoutError(
            f"{model.config.model_type} is a mixture-of-experts model ({evidence}): editing it is out of scope "
            "here. Each token's MLP output is a routed mix of experts, not the output of one W_out, which "
            "every method here assumes"
        )


def _mixture_of_experts(model: nn.Module) -> str | None:
    config = model.config.get_text_config()
    for key in MOE_CONFIG_KEYS:
        n = getattr(config, key, None)
        if isinstance(n, int) and not isinstance(n, bool) and n > 1:
            return f"config.{key}={n}"
    for name, module in model.named_modules():
        if MOE_MODULE_NAMES.fullmatch(name.rpartition(".")[2]) or MOE_MODULE_NAMES.search(type(module).__name__):
            return f"module {name} ({type(module).__name__})"
    return None


def discover_layout(model: nn.Module) -> ModuleLayout:
    """Find the layout in the module tree, check it on a forward, and say what was found."""
    config = model.config.get_text_config()
    layers_path = _decoder_blocks(model, config.num_hidden_layers, config.hidden_size)
    block = get_module(model, f"{layers_path}.0")
    mlp = _child(block, MLP_WORDS, "MLP", "mlp_module_tmp")
    projection = _output_projection(get_module(block, mlp), config.hidden_size)
    attention = _child(block, ATTENTION_WORDS, "attention", "attn_module_tmp")
    layer = f"{layers_path}.{{}}"
    _same_in_every_block(model, layers_path, (mlp, f"{mlp}.{projection}", attention))
    probe = _probe(model, layer, f"{layer}.{mlp}.{projection}", f"{layer}.{mlp}",
                   final_norms=_final_norm_candidates(model, layers_path))
    layout = ModuleLayout(
        layer_module_tmp=layer, rewrite_module_tmp=f"{layer}.{mlp}.{projection}", mlp_module_tmp=f"{layer}.{mlp}",
        attn_module_tmp=f"{layer}.{attention}", ln_f_module=probe.final_norm, lm_head_module=_head_name(model),
        post_mlp_norm_tmp=probe.post_norm,
    )
    log.info("discovered layout for model_type %r: %s", model.config.model_type, _describe(layout, config))
    return layout


def _describe(layout: ModuleLayout, config) -> str:
    joins = (f"through the norm {layout.post_mlp_norm_tmp} (methods that optimise values refuse it)"
             if layout.post_mlp_norm_tmp else "unchanged")
    return (f"{config.num_hidden_layers} blocks {layout.layer_module_tmp}, MLP {layout.mlp_module_tmp} with output "
            f"projection {layout.rewrite_module_tmp}, attention {layout.attn_module_tmp}, final norm "
            f"{layout.ln_f_module}, head {layout.lm_head_module}; checked on a forward: the projection's output "
            f"joins the residual stream {joins}")


def _refuse(model: nn.Module, what: str, why: str) -> LayoutError:
    return LayoutError(f"cannot find {what} in this {model.config.model_type} model "
                       f"({type(model).__name__}): {why}. To edit it, {KEYS_HINT}")


# -- the module tree ----------------------------------------------------------------------------


def _decoder_blocks(model: nn.Module, n_layers: int, hidden: int) -> str:
    """The one ModuleList of ``n_layers`` blocks that each hold an MLP mapping to ``hidden``."""
    lists = [name for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers]
    found = [name for name in lists if _has_mlp_to(model.get_submodule(name)[0], hidden)]
    if len(found) != 1:
        why = (f"{len(found)} lists of {n_layers} blocks with an MLP of output width {hidden} "
               f"({', '.join(found) or 'none'}; lists of that length: {', '.join(lists) or 'none'})")
        raise _refuse(model, "the decoder blocks (layer_module_tmp)", why)
    return found[0]


def _has_mlp_to(block: nn.Module, hidden: int) -> bool:
    names = [n for n, m in block.named_children() if _named_like(n, MLP_WORDS) and _projections(m)]
    return len(names) == 1 and any(_width_out(p) == hidden for p in _projections(getattr(block, names[0])))


def _named_like(name: str, words: tuple[str, ...]) -> bool:
    return any(w in name.lower() for w in words)


def _projections(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """Linear and Conv1D modules under ``module``, in registration order (names relative)."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, (nn.Linear, Conv1D))]


def _width_out(named: tuple[str, nn.Module]) -> int:
    module = named[1]
    return module.out_features if isinstance(module, nn.Linear) else module.nf


def _child(block: nn.Module, words: tuple[str, ...], what: str, key: str) -> str:
    """The one child of ``block`` named like ``words`` that holds a projection (norms hold none)."""
    names = [n for n, m in block.named_children() if _named_like(n, words) and _projections(m)]
    if len(names) != 1:
        raise LayoutError(f"cannot find the {what} of a {type(block).__name__} block ({key}): children named like "
                          f"{'/'.join(words)} with a Linear inside: {names or 'none'}. To edit it, {KEYS_HINT}")
    return names[0]


def _output_projection(mlp: nn.Module, hidden: int) -> str:
    """The MLP's last Linear/Conv1D with output width ``hidden`` (the forward check confirms it)."""
    to_hidden = [p for p in _projections(mlp) if _width_out(p) == hidden]
    if not to_hidden:
        raise LayoutError(f"cannot find the output projection of {type(mlp).__name__} (rewrite_module_tmp): no Linear "
                          f"or Conv1D of output width {hidden} inside. To edit it, {KEYS_HINT}")
    return to_hidden[-1][0]


def _same_in_every_block(model: nn.Module, layers_path: str, parts: tuple[str, ...]) -> None:
    """Every block of the list is of one class and has the parts found in block 0 (no hybrids)."""
    blocks = get_module(model, layers_path)
    kinds = sorted({type(b).__name__ for b in blocks})
    missing = [f"{i}.{p}" for i, b in enumerate(blocks) for p in parts if not _has_submodule(b, p)]
    if len(kinds) > 1 or missing:
        why = f"the blocks differ (classes {kinds}; missing {missing[:3]})"
        raise _refuse(model, "one layout for every block of " + layers_path, why)


def _has_submodule(module: nn.Module, name: str) -> bool:
    try:
        module.get_submodule(name)
        return True
    except AttributeError:
        return False


def _final_norm_candidates(model: nn.Module, layers_path: str) -> list[str]:
    """Modules beside the block list (``model.norm`` beside ``model.layers``) named or typed as norms."""
    parent = layers_path.rpartition(".")[0]
    siblings = get_module(model, parent).named_children() if parent else model.named_children()
    prefix = f"{parent}." if parent else ""
    return [prefix + n for n, m in siblings
            if not isinstance(m, nn.ModuleList) and ("norm" in type(m).__name__.lower() or re.search(r"norm|ln", n))]


def _head_name(model: nn.Module) -> str:
    head = model.get_output_embeddings()
    names = [n for n, m in model.named_modules() if m is head]
    if head is None or not names:
        raise _refuse(model, "the LM head (lm_head_module)", "get_output_embeddings() gives no module of the model")
    return names[0]


# -- the forward check --------------------------------------------------------------------------


@dataclass
class _Recorded:
    """Copies of the first input and output of named modules in one forward."""

    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class _Probe:
    """What two short forwards show: ``post_norm`` (None: the projection's output reaches the
    block output unchanged) and ``final_norm`` (when candidates were given)."""

    post_norm: str | None
    final_norm: str | None


def _probe(model: nn.Module, layer_tmp: str, rewrite_tmp: str, mlp_tmp: str | None,
           final_norms: tuple[str, ...] | list[str] = (), layer: int = 0) -> _Probe:
    """A clean forward, then one with a change added to the projection's output at the last position
    of block ``layer``: the block output must move by that change, or by what one of the block's
    children that reads the MLP output moved by (a post-MLP norm)."""
    block, rewrite = layer_tmp.format(layer), rewrite_tmp.format(layer)
    children = [f"{block}.{n}" for n, _ in get_module(model, block).named_children()]
    last_block = layer_tmp.format(model.config.get_text_config().num_hidden_layers - 1)
    head = _head_name(model)
    mlp = [mlp_tmp.format(layer)] if mlp_tmp else []
    with _evaluating(model):
        clean = _record(model, [block, rewrite, *children, *mlp, last_block, *final_norms, head])
        _refuse_unless_hidden_states(model, clean, (block, rewrite))
        change = _change_like(clean.outputs[block])
        perturbed = _record(model, [block, *children], edit=(rewrite, change))
    if mlp and not _same(clean.outputs[mlp[0]], clean.outputs[rewrite]):
        raise _refuse(model, "the MLP output projection (rewrite_module_tmp)",
                      f"the output of {rewrite} is not the output of {mlp[0]}")
    through = _route(model, clean, perturbed, block, rewrite, children, change)
    post_norm = f"{layer_tmp}{through[len(block):]}" if through else None
    final = _final_norm(model, clean, final_norms, last_block, head) if final_norms else None
    return _Probe(post_norm, final)


def _refuse_unless_hidden_states(model: nn.Module, clean: _Recorded, names: tuple[str, ...]) -> None:
    """Each named module ran and gave (batch, positions, hidden) (a routed expert sees a flat list)."""
    hidden = model.config.get_text_config().hidden_size
    for name in names:
        shape = tuple(clean.outputs[name].shape) if name in clean.outputs else None
        if shape is None or len(shape) != 3 or shape[-1] != hidden:
            why = f"{name} gave {'no output' if shape is None else f'an output of shape {shape}'} in a forward"
            raise _refuse(model, f"hidden states (batch, positions, {hidden}) at {name}", why)


def _route(model: nn.Module, clean: _Recorded, perturbed: _Recorded, block: str, rewrite: str,
           children: list[str], change: torch.Tensor) -> str | None:
    """None if the change reached the block output as it is; else the child (a norm) it went through."""
    moved = _last(perturbed.outputs[block]) - _last(clean.outputs[block])  # nothing else differs
    if _same(moved, change):
        return None
    readers = [c for c in children if c in clean.inputs and c in clean.outputs
               and _same(clean.inputs[c], clean.outputs[rewrite])]
    for child in readers:
        if _same(moved, _last(perturbed.outputs[child]) - _last(clean.outputs[child])):
            return child
    raise _refuse(model, "where the MLP output joins the residual stream",
                  f"a change of {rewrite}'s output moved {block}'s output by something else "
                  f"({_mismatch(moved, change):.0%} off), and no single module of the block between them explains it")


def _final_norm(model: nn.Module, clean: _Recorded, candidates: list[str], last: str, head: str) -> str:
    """The candidate that reads the last block's output and whose output the head reads."""
    fits = [c for c in candidates if c in clean.inputs and _same(clean.inputs[c], clean.outputs.get(last))
            and _same(clean.outputs[c], clean.inputs.get(head))]
    if len(fits) != 1:
        raise _refuse(model, "the final norm (ln_f_module)",
                      f"of {candidates or 'no candidates'} beside the blocks, {len(fits)} read {last}'s output "
                      f"and feed {head}")
    return fits[0]


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout: the two forwards must differ only by the change), restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def _record(model: nn.Module, names: list[str], edit: tuple[str, torch.Tensor] | None = None) -> _Recorded:
    """One forward of the probe ids; copies (Falcon adds into its MLP output in place) of each named
    module's first input and output, in float32; ``edit``: (module, change added to its output)."""
    seen = _Recorded()
    with ExitStack() as hooks:
        for name in dict.fromkeys(names):
            module = get_module(model, name)
            hooks.callback(module.register_forward_pre_hook(_keep_input(seen, name), with_kwargs=True).remove)
            hooks.callback(module.register_forward_hook(_keep_output(seen, name)).remove)
        if edit is not None:
            hooks.callback(get_module(model, edit[0]).register_forward_hook(_add_at_last(edit[1])).remove)
        ids = torch.tensor([[i % model.config.get_text_config().vocab_size for i in PROBE_IDS]],
                           device=model_device(model))
        model(input_ids=ids, use_cache=False)
    return seen


def _keep_input(seen: _Recorded, name: str) -> Callable:
    def hook(_module, args, kwargs):
        tensor = args[0] if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
        if isinstance(tensor, torch.Tensor):
            seen.inputs.setdefault(name, tensor.detach().float().clone())
    return hook


def _keep_output(seen: _Recorded, name: str) -> Callable:
    def hook(_module, _args, output):
        tensor = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(tensor, torch.Tensor):
            seen.outputs.setdefault(name, tensor.detach().float().clone())
    return hook


def _add_at_last(change: torch.Tensor) -> Callable:
    def hook(_module, _args, output):
        out = output.clone()
        out[:, -1] += change.to(device=out.device, dtype=out.dtype)
        return out
    return hook


def _change_like(block_output: torch.Tensor) -> torch.Tensor:
    """A fixed random direction as long as the block output at the last position: a norm on the
    path then changes it visibly, round-off does not."""
    direction = torch.randn(block_output.shape[-1], generator=torch.Generator().manual_seed(0))
    direction = direction.to(block_output.device)
    return direction * (_last(block_output).norm() / direction.norm())


def _last(hidden: torch.Tensor) -> torch.Tensor:
    return hidden[0, -1]


def _mismatch(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Whether two recorded tensors (or two vectors) are the same up to round-off."""
    return a is not None and b is not None and a.shape == b.shape and _mismatch(a, b) < SAME
