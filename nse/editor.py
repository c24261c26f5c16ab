"""The NSE editor: MEMIT's engine with weights rewinding, neuron selection, iterative rounds and
accumulated keys.

One object holds everything that must survive between batches (original weights of the edited
modules, accumulated keys ``Cp``, counters, context templates) and can be saved and loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from memit.editor import MEMITEditor, MEMITReport
from nse.hparams import NSEHyperParams
from nse.neuron_selection import select_neurons


@dataclass
class NSEReport(MEMITReport):
    active_per_round: list[int] = field(default_factory=list)
    neurons_per_round: list[dict[int, int]] = field(default_factory=list)
    n_above_upper_bound: int = 0

    def log_line(self) -> str:
        return (f"{super().log_line()}; edited per round {self.active_per_round}; "
                f"above upper_bound (never edited) {self.n_above_upper_bound}")


class NSEEditor(MEMITEditor):
    """Applies NSE edits batch after batch to ``model`` in place."""

    hparams_class = NSEHyperParams
    report_class = NSEReport
    rewinds_values = True  # NSE's first idea: z from the original weights of the edited layers
    accumulates_keys = True

    def __init__(self, model: nn.Module, tok, hparams: NSEHyperParams, **options) -> None:
        super().__init__(model, tok, hparams, **options)
        self.num_above_upper_bound = 0

    def _update(self, requests: list[dict], z: torch.Tensor, report: NSEReport) -> None:
        """Rounds while residuals sit between alpha and upper_bound; the last round only measures."""
        hp = self.hparams
        for round_ in range(1, hp.max_iterations + 1):
            residual = self._residual_norms(requests, z, last=round_ == hp.max_iterations)
            active = (residual > hp.alpha) & (residual < hp.upper_bound)
            report.residual_mean_per_round.append(float(residual.mean()))
            if round_ == 1:
                report.n_above_upper_bound = int((residual >= hp.upper_bound).sum())
                self.num_above_upper_bound += report.n_above_upper_bound
            if not bool(active.any()) or round_ == hp.max_iterations:
                break
            idx = active.nonzero().flatten().tolist()
            report.active_per_round.append(len(idx))
            report.neurons_per_round.append(self._update_layers([requests[i] for i in idx], z[idx]))

    def _columns(self, layer: int, keys: torch.Tensor) -> torch.Tensor:
        """NSE's second idea: only the most active neurons of this layer change."""
        return select_neurons(keys, self.hparams.neuron_threshold, self.hparams.neuron_selection)

    def _extra_state(self) -> dict[str, Any]:
        return {**super()._extra_state(), "num_above_upper_bound": self.num_above_upper_bound}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        super()._load_extra_state(state)
        self.num_above_upper_bound = state.get("num_above_upper_bound", 0)


def apply_nse_to_model(
    model: nn.Module,
    tok,
    requests: Sequence[dict],
    hparams: NSEHyperParams,
    editor: NSEEditor | None = None,
    **editor_kwargs,
) -> tuple[nn.Module, NSEEditor]:
    """Functional form: edit ``model`` in place with one batch; pass the returned editor back
    in for the next batch so it keeps rewinding to the original weights and protecting keys."""
    if editor is None:
        editor = NSEEditor(model, tok, hparams, **editor_kwargs)
    elif editor.model is not model:
        raise ValueError("the editor passed in was built for another model")
    editor.edit(requests)
    return model, editor
