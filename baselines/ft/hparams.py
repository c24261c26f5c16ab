"""FT's hyperparameters: which weights, Adam's settings and the optional L-inf constraint."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from util.hparams import HyperParamsError
from util.module_hparams import ModuleHyperParams

FT_LOSSES = ("last_position", "teacher_forced")
FT_THETA0 = ("batch_start", "pre_edit")


@dataclass(kw_only=True)
class FTHyperParams(ModuleHyperParams):
    num_steps: int                      # epochs over the batch's requests
    lr: float
    weight_decay: float | bool          # false (as in one original file) means 0
    kl_factor: float                    # carried by the original files; FT here has no KL term
    norm_constraint: float | bool       # a number: every entry stays within theta0 +- it; false: none
    batch_size: int = 64                # requests per optimiser step
    wd_power_law: list[float] | None = None  # weight decay n^a * e^b for n edits, [a, b]
    # The original tested wd_power_law for a tuple, and JSON gives a list, so the law never applied
    # (weight decay = weight_decay); true applies it.
    apply_wd_power_law: bool = False
    # "last_position" (the original): every target token is scored at the last prompt position, a
    # bag of tokens, the target encoded as " " + target with the tokenizer's specials, masked where it
    # is the unk token. "teacher_forced": each target token at its own position.
    ft_loss: str = "last_position"
    # The norm constraint's theta0: "batch_start" (the original: the weights when this batch began)
    # or "pre_edit" (the weights before the first batch).
    ft_theta0: str = "batch_start"

    # What a run folder written before these fields meant (resume): the former behaviour.
    VALUES_BEFORE: ClassVar[dict[str, object]] = {"apply_wd_power_law": True, "ft_loss": "teacher_forced",
                                                  "ft_theta0": "pre_edit"}

    USED_MODULE_KEYS: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_steps", "lr", "batch_size"):
            if getattr(self, name) <= 0:
                raise HyperParamsError(f"'{name}' must be > 0, got {getattr(self, name)}")
        if self.kl_factor != 0:
            raise HyperParamsError(f"FT here has no KL term: set 'kl_factor' to 0 (got {self.kl_factor})")
        if self.norm_constraint is True or (not isinstance(self.norm_constraint, bool) and self.norm_constraint <= 0):
            raise HyperParamsError(f"'norm_constraint' must be a number > 0 or false, got {self.norm_constraint!r}")
        for name, allowed in (("ft_loss", FT_LOSSES), ("ft_theta0", FT_THETA0)):
            if getattr(self, name) not in allowed:
                raise HyperParamsError(f"'{name}' must be one of {allowed}, got {getattr(self, name)!r}")
        if self.wd_power_law is not None and len(self.wd_power_law) != 2:
            raise HyperParamsError(f"'wd_power_law' must be [a, b] (weight decay n^a * e^b), got {self.wd_power_law!r}")

    def check_against(self, model: nn.Module) -> None:
        super().check_against(model)
        for layer in self.layers:
            self.parameters_of(model, layer)

    def parameters_of(self, model: nn.Module, layer: int) -> dict[str, nn.Parameter]:
        """What ``rewrite_module_tmp`` names at ``layer``: a parameter (``...down_proj.weight``) or a
        module, every parameter under which is trained (a block: all of its weights), as the original.
        The original matched names as substrings, so ``transformer.h.2`` also took ``h.20``-``h.29``;
        here a module is a module (that side effect was a bug)."""
        name = self.rewrite_module(layer)
        params = dict(model.named_parameters())
        if name in params:
            return {name: params[name]}
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise HyperParamsError(
                f"'rewrite_module_tmp'={self.rewrite_module_tmp!r} names neither a parameter nor a module of this "
                f"{model.config.model_type} model (e.g. {name!r}); fix it or omit it to use the built-in table"
            ) from None
        under = {f"{name}.{n}": p for n, p in module.named_parameters()}
        if not under:
            raise HyperParamsError(f"'rewrite_module_tmp': module {name!r} has no parameters")
        return under
