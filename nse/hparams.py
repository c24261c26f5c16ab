"""NSE hyperparameters: MEMIT's fields plus the iterative, neuron-level update's own."""
from __future__ import annotations

from dataclasses import dataclass

from memit.hparams import MEMITHyperParams
from util.hparams import HyperParamsError

# "reaching": the smallest prefix of neurons whose summed |activation| reaches the threshold.
# "original": the official code's rule, the largest prefix staying <= the threshold (one fewer).
NEURON_SELECTION_RULES = ("reaching", "original")


@dataclass(kw_only=True)
class NSEHyperParams(MEMITHyperParams):
    alpha: float             # residuals at or below this count as done
    upper_bound: float       # residuals at or above this are never edited (logged)
    max_iterations: int      # rounds evaluated; at most max_iterations - 1 of them edit
    neuron_threshold: float  # share of the summed activation the selected neurons must reach
    neuron_selection: str = "reaching"  # "original" reproduces the official code's neuron sets

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.neuron_threshold <= 1.0:
            raise HyperParamsError(
                f"'neuron_threshold' must be in (0, 1], got {self.neuron_threshold}; 1.0 keeps every neuron"
            )
        if self.neuron_selection not in NEURON_SELECTION_RULES:
            raise HyperParamsError(
                f"'neuron_selection' must be one of {NEURON_SELECTION_RULES}, got {self.neuron_selection!r}"
            )
        if not 0 <= self.alpha < self.upper_bound:
            raise HyperParamsError(
                f"need 0 <= alpha < upper_bound, got alpha={self.alpha}, upper_bound={self.upper_bound}"
            )
        if self.max_iterations < 2:
            raise HyperParamsError(
                f"'max_iterations' must be >= 2 (the last round only measures residuals), got {self.max_iterations}"
            )
