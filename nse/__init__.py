"""Neuron-level Sequential Editing (NSE)."""
from nse.editor import NSEEditor, NSEReport, apply_nse_to_model
from nse.hparams import NSEHyperParams

__all__ = ["NSEEditor", "NSEHyperParams", "NSEReport", "apply_nse_to_model"]
