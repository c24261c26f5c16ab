"""ENCORE's hyperparameters: MEMIT's, plus the ridge weight on each update and MPES's count."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from torch import nn

from encore.stopping import MPES_RULES, MostProbableStop
from memit.hparams import MEMITHyperParams
from util.hparams import HyperParamsError
from util.values import ValueSpec


@dataclass(kw_only=True)
class ENCOREHyperParams(MEMITHyperParams):
    update_norm_lambda: float       # lambda of the ridge term lambda * ||Delta||_F^2 on each batch's update
    prob_cutoff: float              # < 0: MPES, stop after -prob_cutoff steps with the target most probable
    add_prev_edits: bool = True     # earlier batches' keys held in the regulariser (the original: true)
    mpes_rule: str = "all_context_tokens"  # or "five_hits", the original code's test (encore/stopping.py)

    # Read by the original code's other paths only (EMMET, diagnostics, a dynamic statistics script).
    LEGACY_IGNORED: ClassVar[tuple[str, ...]] = MEMITHyperParams.LEGACY_IGNORED + (
        "calculate_objective_value", "emmet_lambda", "norm_control", "dynamic_multiplier",
        "random_vector_preservation")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.update_norm_lambda < 0:
            raise HyperParamsError(f"'update_norm_lambda' must be >= 0, got {self.update_norm_lambda}")
        if self.prob_cutoff >= 0 or self.prob_cutoff != int(self.prob_cutoff):
            raise HyperParamsError(f"'prob_cutoff' must be a negative whole number (MPES: stop after that many steps "
                                   f"with the target most probable), got {self.prob_cutoff}; the original's "
                                   "probability cutoff (> 0) is not supported")
        if self.mpes_rule not in MPES_RULES:
            raise HyperParamsError(f"'mpes_rule' must be one of {MPES_RULES}, got {self.mpes_rule!r}")

    def value_spec(self, model: nn.Module) -> ValueSpec:
        return replace(super().value_spec(model), stop=MostProbableStop(int(-self.prob_cutoff), self.mpes_rule))
