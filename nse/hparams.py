"""NSE hyperparameters (names follow the MEMIT family so the original JSON files load)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from torch import nn

from util.architectures import get_module, layout_for, num_layers
from util.hparams import HyperParams, HyperParamsError
from util.rewrite_weights import weight_d_by_f
from util.tokens import FACT_TOKEN_STRATEGIES

# Sums of k k^T over millions of tokens overflow or lose precision in 16-bit floats.
MOM2_DTYPES = ("float32", "float64")
# mlp/attn templates are accepted (the original files carry them) but nothing here uses them.
USED_MODULE_KEYS = ("rewrite_module_tmp", "layer_module_tmp", "ln_f_module", "lm_head_module")
MODULE_KEYS = ("rewrite_module_tmp", "layer_module_tmp", "mlp_module_tmp", "attn_module_tmp", "ln_f_module", "lm_head_module")


@dataclass
class NSEHyperParams(HyperParams):
    # Where to edit
    layers: list[int]
    fact_token: str
    # Value optimisation (step 1)
    v_num_grad_steps: int
    v_lr: float
    v_loss_layer: int
    v_weight_decay: float
    clamp_norm_factor: float
    kl_factor: float
    # Covariance regularisation: lambda * C0 with C0 = E[k k^T] over mom2_dataset
    mom2_adjustment: bool
    mom2_update_weight: float
    mom2_dataset: str
    mom2_n_samples: int
    mom2_dtype: str
    # NSE's iterative neuron-level update (step 3)
    alpha: float             # residuals at or below this count as done
    upper_bound: float       # residuals at or above this are never edited (logged)
    max_iterations: int      # rounds evaluated; at most max_iterations - 1 of them edit
    neuron_threshold: float  # share of the summed activation the selected neurons must reach
    # Texts longer than this are truncated for statistics (the original's 8192 for Llama3 OOMs).
    mom2_max_length: int = 1024
    # Module paths; None means "take it from util/architectures.py for this model_type".
    rewrite_module_tmp: str | None = None
    layer_module_tmp: str | None = None
    mlp_module_tmp: str | None = None
    attn_module_tmp: str | None = None
    ln_f_module: str | None = None
    lm_head_module: str | None = None
    # Free-text provenance of the values (the original file, how they were tuned).
    notes: str = field(default="")

    def __post_init__(self) -> None:
        if not self.layers or any(not isinstance(l, int) or isinstance(l, bool) or l < 0 for l in self.layers):
            raise HyperParamsError(f"'layers' must be a non-empty list of layer indices >= 0, got {self.layers!r}")
        if sorted(set(self.layers)) != list(self.layers):
            raise HyperParamsError(f"'layers' must be increasing without repeats, got {self.layers!r}; sort them")
        if self.fact_token not in FACT_TOKEN_STRATEGIES:
            raise HyperParamsError(f"'fact_token' must be one of {FACT_TOKEN_STRATEGIES}, got {self.fact_token!r}")
        if not 0.0 < self.neuron_threshold <= 1.0:
            raise HyperParamsError(
                f"'neuron_threshold' must be in (0, 1], got {self.neuron_threshold}; 1.0 keeps every neuron"
            )
        if self.mom2_dtype not in MOM2_DTYPES:
            raise HyperParamsError(f"'mom2_dtype' must be one of {MOM2_DTYPES}, got {self.mom2_dtype!r}")
        if not 0 <= self.alpha < self.upper_bound:
            raise HyperParamsError(
                f"need 0 <= alpha < upper_bound, got alpha={self.alpha}, upper_bound={self.upper_bound}"
            )
        positive = ("v_num_grad_steps", "v_lr", "max_iterations", "mom2_n_samples", "mom2_max_length", "clamp_norm_factor")
        for name in positive:
            if getattr(self, name) <= 0:
                raise HyperParamsError(f"'{name}' must be > 0, got {getattr(self, name)}")
        for name in ("v_weight_decay", "kl_factor"):
            if getattr(self, name) < 0:
                raise HyperParamsError(f"'{name}' must be >= 0, got {getattr(self, name)}")
        if not self.mom2_adjustment or self.mom2_update_weight <= 0:
            # With Cp = 0 on the first batch, K K^T alone has rank <= n << f: the solve is singular.
            raise HyperParamsError(
                "NSE needs 'mom2_adjustment': true and 'mom2_update_weight' > 0 (lambda * C0 makes the update "
                f"well-posed), got {self.mom2_adjustment} and {self.mom2_update_weight}"
            )
        if self.max_iterations < 2:
            raise HyperParamsError(
                f"'max_iterations' must be >= 2 (the last round only measures residuals), got {self.max_iterations}"
            )

    def resolved_for(self, model: nn.Module) -> "NSEHyperParams":
        """A copy with module paths filled in from the model's table, checked against the model."""
        layout = layout_for(model.config) if any(getattr(self, k) is None for k in MODULE_KEYS) else None
        filled = {k: getattr(self, k) or getattr(layout, k) for k in MODULE_KEYS}
        resolved = dataclasses.replace(self, **filled)
        resolved.check_against(model)
        return resolved

    def check_against(self, model: nn.Module) -> None:
        n = num_layers(model)
        bad = [l for l in self.layers if l >= n]
        if bad:
            raise HyperParamsError(f"'layers' {bad} out of range: the model has {n} layers (0..{n - 1})")
        if not max(self.layers) <= self.v_loss_layer < n:
            raise HyperParamsError(
                f"'v_loss_layer'={self.v_loss_layer} must be between the last edited layer "
                f"({max(self.layers)}) and the model's last layer ({n - 1})"
            )
        for key in USED_MODULE_KEYS:
            template = getattr(self, key)
            for layer in self.layers:
                try:
                    get_module(model, template.format(layer))
                except ValueError:
                    raise HyperParamsError(
                        f"'{key}'={template!r} names no module of this {model.config.model_type} model "
                        f"(e.g. {template.format(layer)!r}); fix it or omit the key to use the built-in table"
                    ) from None
        for layer in self.layers:
            try:
                weight_d_by_f(get_module(model, self.rewrite_module_tmp.format(layer)))
            except TypeError as err:
                raise HyperParamsError(f"'rewrite_module_tmp': {err}") from None

    def rewrite_module(self, layer: int) -> str:
        return self.rewrite_module_tmp.format(layer)

    def layer_module(self, layer: int) -> str:
        return self.layer_module_tmp.format(layer)
