"""MEMIT's hyperparameters: the value settings plus the covariance weight lambda."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from torch import nn

from util.context_templates import TEMPLATE_LENGTHS
from util.hparams import HyperParamsError
from util.norm_anchor import NormAnchoring
from util.value_hparams import ValueHyperParams
from util.values import ValueSpec

PRUNE_TIMINGS = ("final", "every_batch")
PRUNE_ONTO = ("theta0", "edited_weight")
SVD_DTYPES = ("float32", "float64")


@dataclass(kw_only=True)
class MEMITHyperParams(ValueHyperParams):
    # Delta = R K^T (lambda * C0 + K K^T)^-1; lambda weighs the preserved keys of the corpus.
    mom2_update_weight: float
    # Context templates' prefixes: 10 tokens in "total" (start word and BOS included, the original's
    # generate_fast) or 10 "new_tokens" after the start word (this harness before).
    context_template_length: str = "total"
    # NAS norm anchoring (util/norm_anchor.py), off by default: every solved value vector rescaled to
    # the anchor norm measured on the unedited model from norm_anchor_samples requests of
    # norm_anchor_pool (a CounterFact file; NAS samples MultiCounterFact). NAS optimises those with
    # MEMIT's file of the same name; here with this file's value settings.
    norm_anchor: bool = False
    norm_anchor_samples: int = 1000
    norm_anchor_pool: str = "assets/counterfact_test2191_first2000.json"

    LEGACY_IGNORED: ClassVar[tuple[str, ...]] = ("model_name", "layer_selection")

    # What a run folder written before a field existed meant, where its default now changes what a
    # resumed run computes (context templates are not among them: a run keeps its own, config.json).
    VALUES_BEFORE: ClassVar[dict[str, Any]] = {}

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_lambda()
        if self.norm_anchor_samples < 1:
            raise HyperParamsError(f"'norm_anchor_samples' must be >= 1, got {self.norm_anchor_samples}")
        if self.context_template_length not in TEMPLATE_LENGTHS:
            raise HyperParamsError(f"'context_template_length' must be one of {TEMPLATE_LENGTHS}, "
                                   f"got {self.context_template_length!r}")

    def value_spec(self, model: nn.Module) -> ValueSpec:
        """The value settings, with NAS norm anchoring on them when ``norm_anchor`` is on."""
        spec = super().value_spec(model)
        if not self.norm_anchor:
            return spec
        last = self.layers[-1]
        return replace(spec, anchoring=NormAnchoring(self.norm_anchor_samples, self.norm_anchor_pool,
                                                     self.layer_module(last), self.mlp_module_tmp.format(last)))

    def _check_lambda(self) -> None:
        if not self.mom2_adjustment or self.mom2_update_weight <= 0:
            # With no Cp on the first batch, K K^T alone has rank <= n << f: the solve is singular.
            raise HyperParamsError(
                f"{type(self).__name__} needs 'mom2_adjustment': true and 'mom2_update_weight' > 0 (lambda * C0 makes "
                f"the update well-posed), got {self.mom2_adjustment} and {self.mom2_update_weight}"
            )


@dataclass(kw_only=True)
class MEMITPruneHyperParams(MEMITHyperParams):
    # When the accumulated change is restrained: once after the last batch (the original's timing) or
    # after every batch (the model scored at any point is restrained, the paper's sequential intent).
    prune_timing: str = "final"
    prune_svd_dtype: str = "float32"
    # Where the restrained change goes: "theta0" (W = theta0 + restrained(W - theta0), the paper's
    # formula) or "edited_weight" (W + restrained(W - theta0): the original code's line, which counts
    # the change twice; a bug kept only to reproduce its numbers).
    prune_restrained_onto: str = "theta0"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.prune_timing not in PRUNE_TIMINGS:
            raise HyperParamsError(f"'prune_timing' must be one of {PRUNE_TIMINGS}, got {self.prune_timing!r}")
        if self.prune_restrained_onto not in PRUNE_ONTO:
            raise HyperParamsError(f"'prune_restrained_onto' must be one of {PRUNE_ONTO}, "
                                   f"got {self.prune_restrained_onto!r}")
        if self.prune_svd_dtype not in SVD_DTYPES:
            raise HyperParamsError(f"'prune_svd_dtype' must be one of {SVD_DTYPES}, got {self.prune_svd_dtype!r}")


RECT_TIMINGS = ("after_layers", "per_layer")
RECT_RULES = ("original", "exact_share")


@dataclass(kw_only=True)
class MEMITRectHyperParams(MEMITHyperParams):
    # Share (in %) of each update's entries kept: those with the largest relative change.
    rect_top_percent: float = 40.0
    # "after_layers" (the original): every layer's update is computed unrectified, as MEMIT does, then
    # each is rectified and applied. "per_layer": each layer applies its rectified update at once, so
    # later layers solve for what was actually applied.
    rect_timing: str = "after_layers"
    # "original": keep entries with |Δ/(W+1e-8)| >= the k-th smallest, k = int(numel (100-p)/100), ties
    # kept (one entry more than the share). "exact_share": exactly round(p/100 numel) entries, by |Δ|/(|W|+1e-8).
    rect_rule: str = "original"

    VALUES_BEFORE: ClassVar[dict[str, Any]] = {**MEMITHyperParams.VALUES_BEFORE, "rect_timing": "per_layer",
                                               "rect_rule": "exact_share"}

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.rect_top_percent <= 100:
            raise HyperParamsError(f"'rect_top_percent' must be in (0, 100], got {self.rect_top_percent}")
        if self.rect_timing not in RECT_TIMINGS:
            raise HyperParamsError(f"'rect_timing' must be one of {RECT_TIMINGS}, got {self.rect_timing!r}")
        if self.rect_rule not in RECT_RULES:
            raise HyperParamsError(f"'rect_rule' must be one of {RECT_RULES}, got {self.rect_rule!r}")
