"""FT: constrained fine-tuning."""
from baselines.ft.editor import FTEditor
from baselines.ft.hparams import FTHyperParams

__all__ = ["FTEditor", "FTHyperParams"]
