"""ENCORE (Gupta et al. 2025, arXiv 2502.01636): MEMIT with earlier batches' keys held, a ridge term
on each update, and values that stop once the target is the most probable token (MPES)."""
from encore.editor import ENCOREEditor
from encore.hparams import ENCOREHyperParams
from encore.stopping import MostProbableStop

__all__ = ["ENCOREEditor", "ENCOREHyperParams", "MostProbableStop"]
