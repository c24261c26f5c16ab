"""AlphaEdit: null-space constrained MEMIT-family editing."""
from alphaedit.editor import AlphaEditEditor
from alphaedit.hparams import AlphaEditHyperParams

__all__ = ["AlphaEditEditor", "AlphaEditHyperParams"]
