"""ROME: rank-one model editing."""
from rome.editor import ROMEEditor
from rome.hparams import ROMEHyperParams

__all__ = ["ROMEEditor", "ROMEHyperParams"]
