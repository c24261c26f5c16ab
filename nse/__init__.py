"""Neuron-level Sequential Editing (NSE)."""
from nse.editor import BatchReport, NSEEditor, apply_nse_to_model
from nse.hparams import NSEHyperParams

__all__ = ["BatchReport", "NSEEditor", "NSEHyperParams", "apply_nse_to_model"]
