"""Hyperparameters of methods that optimise target values z (the MEMIT family and ROME)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from util.architectures import num_layers
from util.discovery import post_mlp_norm_of
from util.hparams import HyperParamsError
from util.module_hparams import ModuleHyperParams
from util.tokens import FACT_TOKEN_STRATEGIES
from util.stats_spec import MOM2_DTYPES, StatsSpec
from util.values import PROMPT_BUILDS, ValueSpec


@dataclass(kw_only=True)
class ValueHyperParams(ModuleHyperParams):
    fact_token: str
    # Value optimisation
    v_num_grad_steps: int
    v_lr: float
    v_loss_layer: int
    v_weight_decay: float
    clamp_norm_factor: float
    kl_factor: float
    # Covariance statistics C0 = E[k k^T] over mom2_dataset
    mom2_adjustment: bool
    mom2_dataset: str
    mom2_n_samples: int
    mom2_dtype: str
    # Texts longer than this many tokens are cut for statistics; None: at the model's context, as the
    # original's layer_stats (util.stats_cache.original_context_length). Files may set a cap.
    mom2_max_length: int | None = None
    # Rewriting prompts' rows (util.values.PROMPT_BUILDS): "ids" (default) equals the original's "text"
    # wherever the prompt's text and the decoded target tokenize back into the same ids, and differs
    # only where they do not: there the original scores the target at shifted tokens.
    value_prompts: str = "ids"

    USED_MODULE_KEYS: ClassVar[tuple[str, ...]] = ("rewrite_module_tmp", "layer_module_tmp", "ln_f_module",
                                                   "lm_head_module")
    VALUE_SITE: ClassVar[str] = "block_output"  # where delta is added: see util.values.SITES

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fact_token not in FACT_TOKEN_STRATEGIES:
            raise HyperParamsError(f"'fact_token' must be one of {FACT_TOKEN_STRATEGIES}, got {self.fact_token!r}")
        if self.value_prompts not in PROMPT_BUILDS:
            raise HyperParamsError(f"'value_prompts' must be one of {PROMPT_BUILDS}, got {self.value_prompts!r}")
        if self.mom2_dtype not in MOM2_DTYPES:
            raise HyperParamsError(f"'mom2_dtype' must be one of {MOM2_DTYPES}, got {self.mom2_dtype!r}")
        for name in ("v_num_grad_steps", "v_lr", "mom2_n_samples", "mom2_max_length", "clamp_norm_factor"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise HyperParamsError(f"'{name}' must be > 0, got {getattr(self, name)}")
        for name in ("v_weight_decay", "kl_factor"):
            if getattr(self, name) < 0:
                raise HyperParamsError(f"'{name}' must be >= 0, got {getattr(self, name)}")

    def check_against(self, model: nn.Module) -> None:
        super().check_against(model)
        n = num_layers(model)
        if not max(self.layers) <= self.v_loss_layer < n:
            raise HyperParamsError(
                f"'v_loss_layer'={self.v_loss_layer} must be between the last edited layer "
                f"({max(self.layers)}) and the model's last layer ({n - 1})"
            )

    def stats_spec(self) -> StatsSpec:
        """What C0 is computed from (the mom2_* keys), for every caller of util.second_moment."""
        return StatsSpec(self.mom2_dataset, self.mom2_n_samples, self.mom2_max_length, self.mom2_dtype)

    def value_spec(self, model: nn.Module) -> ValueSpec:
        """Where and how z is optimised (call on hparams resolved for ``model``)."""
        site_template = {"block_output": self.layer_module_tmp, "mlp_output": self.mlp_module_tmp}[self.VALUE_SITE]
        return ValueSpec(
            site=site_template.format(self.layers[-1]),
            loss_layer=self.layer_module(self.v_loss_layer),
            final_layer=self.layer_module(num_layers(model) - 1),
            ln_f=self.ln_f_module, lm_head=self.lm_head_module, fact_token=self.fact_token,
            num_steps=self.v_num_grad_steps, lr=self.v_lr, weight_decay=self.v_weight_decay,
            clamp_norm_factor=self.clamp_norm_factor, kl_factor=self.kl_factor, prompt_build=self.value_prompts,
            post_mlp_norm=post_mlp_norm_of(model, self.layer_module_tmp, self.rewrite_module_tmp) is not None,
        )
