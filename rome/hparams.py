"""ROME's hyperparameters: one layer, values at its MLP output, optional C0 for the key direction."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from util.hparams import HyperParamsError
from util.value_hparams import ValueHyperParams

WRITE_KEYS = ("plain_prompt", "template_mean")


@dataclass(kw_only=True)
class ROMEHyperParams(ValueHyperParams):
    # [length in tokens, how many] per kind of generated context template (plus "{}").
    context_template_length_params: list[list[int]] = field(default_factory=lambda: [[5, 10], [10, 10]])
    # The key v* is written at: "plain_prompt" (the original's compute_v: k and W k at the request's own
    # prompt, u still from the mean key over the templates) or "template_mean" (that mean key k*, so
    # W' k* = v*; this harness's behaviour before).
    write_key: str = "plain_prompt"

    VALUES_BEFORE: ClassVar[dict[str, str]] = {"write_key": "template_mean"}  # resuming older runs

    LEGACY_IGNORED: ClassVar[tuple[str, ...]] = ("model_name", "layer_selection")
    USED_MODULE_KEYS: ClassVar[tuple[str, ...]] = ValueHyperParams.USED_MODULE_KEYS + ("mlp_module_tmp",)
    VALUE_SITE: ClassVar[str] = "mlp_output"

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(self.layers) != 1:
            raise HyperParamsError(f"ROME edits exactly one layer; 'layers' is {self.layers}")
        if self.write_key not in WRITE_KEYS:
            raise HyperParamsError(f"'write_key' must be one of {WRITE_KEYS}, got {self.write_key!r}")
        params = self.context_template_length_params
        if not params or any(not isinstance(p, list) or len(p) != 2 or min(p) < 1 for p in params):
            raise HyperParamsError(
                f"'context_template_length_params' must be a list of [length, count] pairs >= 1, got {params!r}"
            )
