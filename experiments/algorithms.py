"""Editing methods the harness can run, keyed by ``--alg_name``: the only file that imports methods.

Every editor subclasses :class:`util.editor.Editor`; the runner talks to that base only.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from alphaedit import AlphaEditEditor
from baselines.ft import FTEditor
from encore import ENCOREEditor
from memit import MEMITEditor, MEMITPruneEditor, MEMITRectEditor, MEMITSeqEditor
from nse import NSEEditor
from rome import ROMEEditor
from util.editor import Editor


@dataclass(frozen=True)
class Algorithm:
    editor_class: type[Editor]
    hparams_dir: str   # hparams/<dir>/ holds its files (MEMIT_seq/prune/rect read MEMIT's, as in the original)
    summary: str       # what it does, in one line (README's table of methods)
    source: str        # the original paper

    @property
    def hparams_class(self) -> type:
        return self.editor_class.hparams_class

    def make_editor(self, model, tok, hparams, **options) -> Editor:
        return self.editor_class(model, tok, hparams, **options)


ALGORITHMS: dict[str, Algorithm] = {
    "NSE": Algorithm(NSEEditor, "NSE", "MEMIT's update on selected neurons, values from the original weights, "
                     "iterated while residuals stay large, earlier batches' keys protected",
                     "Jiang et al. 2025, arXiv 2410.04045"),
    "MEMIT": Algorithm(MEMITEditor, "MEMIT", "closed-form least squares lambda*C0-regularised, spread over layers",
                       "Meng et al. 2023, arXiv 2210.07229"),
    "MEMIT_seq": Algorithm(MEMITSeqEditor, "MEMIT", "MEMIT whose regulariser also holds earlier batches' keys (Cp)",
                           "as used in arXiv 2410.04045"),
    "MEMIT_prune": Algorithm(MEMITPruneEditor, "MEMIT", "MEMIT, then the accumulated change's large singular values "
                             "restrained (PRUNE)", "Ma et al. 2024, arXiv 2405.16821"),
    "MEMIT_rect": Algorithm(MEMITRectEditor, "MEMIT", "MEMIT keeping only the top 40% relative changes of each "
                            "update (RECT)", "Gu et al. 2024, arXiv 2401.04700"),
    "AlphaEdit": Algorithm(AlphaEditEditor, "AlphaEdit", "MEMIT's update projected onto the null space of C0, "
                           "earlier batches' keys held", "Fang et al. 2025, arXiv 2410.02355"),
    "ENCORE": Algorithm(ENCOREEditor, "ENCORE", "MEMIT with earlier batches' keys held, a ridge on each update, "
                        "values stopped once the target is most probable (MPES)", "Gupta et al. 2025, arXiv 2502.01636"),
    "ROME": Algorithm(ROMEEditor, "ROME", "rank-one update of one MLP per request, values at the MLP output",
                      "Meng et al. 2022, arXiv 2202.05262"),
    "FT": Algorithm(FTEditor, "FT", "Adam on one layer's weights, entries clamped to theta0 +- norm_constraint",
                    "Zhu et al. 2020 (FT-L as in arXiv 2202.05262)"),
}


def get_algorithm(name: str) -> Algorithm:
    if name not in ALGORITHMS:
        raise ValueError(f"unknown --alg_name={name!r}; available: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]


# Hyperparameter switches that make a run a variant of its method, with the label a report shows
# for it ("NSE/run_001 +NAS"): NAS is norm anchoring (util/norm_anchor), on for any value-solving method.
VARIANTS: tuple[tuple[str, str], ...] = (("norm_anchor", "+NAS"),)


def variant_label(params: Mapping[str, Any]) -> str:
    """What sets a run apart from its method's plain form, from its hyperparameters (``hparams.to_dict()``,
    or a run folder's ``params.json``): "+NAS" with norm anchoring, "" for the plain form. The runner
    writes it into config.json; the reporter asks here for folders written before that."""
    return " ".join(label for key, label in VARIANTS if params.get(key) is True)


def anchors_norms(params: Mapping[str, Any]) -> bool:
    """Whether the run's hyperparameters turn norm anchoring on: its batch reports then count the
    edits anchoring dropped and rescaled."""
    return params.get("norm_anchor") is True
