"""Hyperparameters every editing method shares: which layers, and where their modules live."""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from util.architectures import get_module, num_layers
from util.discovery import layout_of, refuse_mixture_of_experts
from util.hparams import HyperParams, HyperParamsError
from util.rewrite_weights import weight_d_by_f

log = logging.getLogger(__name__)
# Module paths of the original files that transformers has since renamed (GPT-NeoX's head).
RENAMED_PATHS = {"embed_out": "lm_head"}
MODULE_KEYS = ("rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp", "ln_f_module",
               "lm_head_module")


@dataclass(kw_only=True)
class ModuleHyperParams(HyperParams):
    """``layers`` plus the module templates; None takes the path from util/architectures.py."""

    layers: list[int]
    rewrite_module_tmp: str | None = None
    layer_module_tmp: str | None = None
    mlp_module_tmp: str | None = None
    attn_module_tmp: str | None = None
    ln_f_module: str | None = None
    lm_head_module: str | None = None
    # Free-text provenance of the values (the original file, how they were tuned).
    notes: str = field(default="")

    # The module keys this method reads; the others are accepted (the original files carry them).
    USED_MODULE_KEYS: ClassVar[tuple[str, ...]] = ("rewrite_module_tmp",)

    def __post_init__(self) -> None:
        if not self.layers or any(not isinstance(l, int) or isinstance(l, bool) or l < 0 for l in self.layers):
            raise HyperParamsError(f"'layers' must be a non-empty list of layer indices >= 0, got {self.layers!r}")
        if sorted(set(self.layers)) != list(self.layers):
            raise HyperParamsError(f"'layers' must be increasing without repeats, got {self.layers!r}; sort them")

    def resolved_for(self, model: nn.Module):
        """A copy with module paths filled in from the model's table (or discovered, for a family
        without a row), checked against the model."""
        refuse_mixture_of_experts(model)  # whichever paths the file gives
        layout = layout_of(model) if any(getattr(self, k) is None for k in MODULE_KEYS) else None
        filled = {k: _current_path(model, getattr(self, k)) or getattr(layout, k) for k in MODULE_KEYS}
        resolved = dataclasses.replace(self, **filled)
        resolved.check_against(model)
        return resolved

    def check_against(self, model: nn.Module) -> None:
        n = num_layers(model)
        bad = [l for l in self.layers if l >= n]
        if bad:
            raise HyperParamsError(f"'layers' {bad} out of range: the model has {n} layers (0..{n - 1})")
        for key in self.USED_MODULE_KEYS:
            self._check_template(model, key)
        if "rewrite_module_tmp" in self.USED_MODULE_KEYS:
            for layer in self.layers:
                try:
                    weight_d_by_f(get_module(model, self.rewrite_module(layer)))
                except TypeError as err:
                    raise HyperParamsError(f"'rewrite_module_tmp': {err}") from None

    def _check_template(self, model: nn.Module, key: str) -> None:
        template = getattr(self, key)
        for layer in self.layers:
            try:
                get_module(model, template.format(layer))
            except ValueError:
                raise HyperParamsError(
                    f"'{key}'={template!r} names no module of this {model.config.model_type} model "
                    f"(e.g. {template.format(layer)!r}); fix it or omit the key to use the built-in table"
                ) from None

    def rewrite_module(self, layer: int) -> str:
        return self.rewrite_module_tmp.format(layer)

    def layer_module(self, layer: int) -> str:
        return self.layer_module_tmp.format(layer)



def _current_path(model: nn.Module, path: str | None) -> str | None:
    """``path``, or its current name when it is a renamed one the model no longer has."""
    if path in RENAMED_PATHS and not hasattr(model, path):
        log.info("module %r is called %r in this transformers version", path, RENAMED_PATHS[path])
        return RENAMED_PATHS[path]
    return path
