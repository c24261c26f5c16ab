"""ROME's hyperparameters: one layer, values at its MLP output, optional C0 for the key direction."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from util.hparams import HyperParamsError
from util.value_hparams import ValueHyperParams


@dataclass(kw_only=True)
class ROMEHyperParams(ValueHyperParams):
    # [length in tokens, how many] per kind of generated context template (plus "{}").
    context_template_length_params: list[list[int]] = field(default_factory=lambda: [[5, 10], [10, 10]])

    LEGACY_IGNORED: ClassVar[tuple[str, ...]] = ("model_name", "layer_selection")
    USED_MODULE_KEYS: ClassVar[tuple[str, ...]] = ValueHyperParams.USED_MODULE_KEYS + ("mlp_module_tmp",)
    VALUE_SITE: ClassVar[str] = "mlp_output"

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.layers) != 1:
            raise HyperParamsError(f"ROME edits exactly one layer; 'layers' is {self.layers}")
        params = self.context_template_length_params
        if not params or any(not isinstance(p, list) or len(p) != 2 or min(p) < 1 for p in params):
            raise HyperParamsError(
                f"'context_template_length_params' must be a list of [length, count] pairs >= 1, got {params!r}"
            )
