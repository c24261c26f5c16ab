"""The MEMIT family: MEMIT, MEMIT_seq, MEMIT_prune, MEMIT_rect (NSE and AlphaEdit build on it)."""
from memit.editor import MEMITEditor, MEMITReport, MEMITSeqEditor
from memit.hparams import MEMITHyperParams, MEMITPruneHyperParams, MEMITRectHyperParams
from memit.prune import MEMITPruneEditor
from memit.rect import MEMITRectEditor

__all__ = ["MEMITEditor", "MEMITHyperParams", "MEMITPruneEditor", "MEMITPruneHyperParams", "MEMITRectEditor",
           "MEMITRectHyperParams", "MEMITReport", "MEMITSeqEditor"]
