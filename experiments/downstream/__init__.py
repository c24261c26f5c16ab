"""Zero-shot general-capability checks (GLUE subsets, MMLU, NLI, ...) run between edit batches.

``tasks`` is the table of tasks, ``scoring`` picks a label by likelihood, ``evaluation`` runs
the tasks and writes one result file per evaluation point.
"""
from .evaluation import (
    PROTOCOLS,
    classification_metrics,
    run_downstream_eval,
    write_downstream_result,
)
from .tasks import ANSWER_CUE, DEFAULT_TASKS, SHIPPED_GLUE_DIR, TASKS, DownstreamTask

__all__ = [
    "ANSWER_CUE",
    "DEFAULT_TASKS",
    "SHIPPED_GLUE_DIR",
    "TASKS",
    "DownstreamTask",
    "PROTOCOLS",
    "classification_metrics",
    "run_downstream_eval",
    "write_downstream_result",
]
