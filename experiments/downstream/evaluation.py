"""Run the downstream tasks on a model and record one JSON per evaluation point."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

import torch
from sklearn.metrics import f1_score, matthews_corrcoef
from torch import nn
from tqdm.auto import tqdm

from util.atomic_files import write_json_atomic
from util.tokens import pad_token_id
from util.total_edits import TOTAL_EDITS

from .original_protocol import ORIGINAL_TASKS, evaluate_original, examples_after_pool
from .scoring import build_pairs, context_limit, continuation_ids, mean_logprobs
from .tasks import (
    DEFAULT_TASKS,
    DownstreamTask,
    check_glue_dir,
    get_task,
    load_records,
    select_subset,
)

TaskMetrics = dict[str, float | int]  # {"accuracy", "f1", "mcc", "n"} (+ "invalid": original protocol)
# "original": the original code's prompts, greedy answers and metrics (original_protocol.py);
# "likelihood": this harness's prompts, the label word of highest likelihood, binary/macro F1.
PROTOCOLS = ("original", "likelihood")
log = logging.getLogger(__name__)


def classification_metrics(gold: Sequence[int], pred: Sequence[int], n_classes: int,
                           positive: int | None = None) -> TaskMetrics:
    """Accuracy, F1 and MCC over class indices.

    F1 is binary F1 of class ``positive`` for two-class tasks and macro F1 otherwise (every
    class weighs the same, so a model that always answers "A" cannot look good). MCC is
    sklearn's (multi-class generalisation for >2 classes); both are 0.0 when undefined, e.g.
    when the model gives one answer for everything.
    """
    if len(gold) != len(pred) or not gold:
        raise ValueError(f"need equally many gold and predicted labels (got {len(gold)}, {len(pred)})")
    if n_classes == 2:
        if positive not in (0, 1):
            raise ValueError("binary metrics need the index of the positive class")
        f1 = f1_score(gold, pred, labels=[0, 1], pos_label=positive, average="binary", zero_division=0)
    else:
        f1 = f1_score(gold, pred, labels=list(range(n_classes)), average="macro", zero_division=0)
    accuracy = sum(int(g == p) for g, p in zip(gold, pred)) / len(gold)
    return {"accuracy": float(accuracy), "f1": float(f1), "mcc": float(matthews_corrcoef(gold, pred)),
            "n": len(gold)}


def evaluate_task(model: nn.Module, tok, task: DownstreamTask, records: Sequence[dict], batch_size: int,
                  progress: bool = True) -> TaskMetrics:
    """Zero-shot accuracy/F1/MCC of ``model`` on ``records``, label chosen by likelihood."""
    candidates = [continuation_ids(tok, word) for word in task.label_words]
    pairs = build_pairs(tok, [task.prompt(r) for r in records], candidates, context_limit(model, tok))
    with tqdm(total=len(pairs), desc=f"downstream {task.name}", unit="seq", disable=not progress,
              leave=False) as bar:
        scores = mean_logprobs(model, pairs, batch_size, pad_token_id(tok), bar=bar)
    k = len(candidates)
    per_record = torch.tensor(scores).view(len(records), k)  # (N, K), prompt-major like the pairs
    pred = per_record.argmax(dim=1).tolist()
    gold = [task.gold_index(r) for r in records]
    positive = task.label_values.index(task.positive) if task.is_binary else None
    return classification_metrics(gold, pred, k, positive)


def run_downstream_eval(model: nn.Module, tok, glue_dir: str | Path, tasks: Sequence[str] = DEFAULT_TASKS,
                        n_per_task: int = 100, batch_size: int = 16, seed: int = 0,
                        progress: bool = True, protocol: str = "original") -> dict[str, TaskMetrics]:
    """``{task: {"accuracy", "f1", "mcc", "n"}}`` for each task name in ``tasks``.

    ``protocol`` (PROTOCOLS): "original" reads examples ``[10:10+n]`` of each file and answers by
    greedy generation as the original; "likelihood" a label-balanced seeded choice scored by
    likelihood. The same arguments always pick the same examples, so evaluation points along a run
    are comparable. All task names and files are checked before the model runs.
    """
    if isinstance(tasks, str):
        raise TypeError(f"tasks must be a sequence of task names, e.g. ({tasks!r},)")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown downstream protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    chosen = {name: get_task(name) for name in tasks}
    unsupported = [name for name in tasks if protocol == "original" and name not in ORIGINAL_TASKS]
    if unsupported:
        raise ValueError(f"task(s) {', '.join(unsupported)} have no original protocol (the original ran "
                         f"{', '.join(ORIGINAL_TASKS)}); use protocol 'likelihood' for them")
    check_glue_dir(glue_dir)
    pick = ((lambda task, records: examples_after_pool(records, n_per_task)) if protocol == "original"
            else (lambda task, records: select_subset(task, records, n_per_task, seed)))
    subsets = {name: pick(task, load_records(task, glue_dir)) for name, task in chosen.items()}
    was_training = model.training
    model.eval()  # dropout would make the scores random
    start = time.time()
    log.info("general-capability tasks: %d tasks, %d examples", len(chosen), sum(map(len, subsets.values())))
    results = {}
    try:
        for i, name in enumerate(chosen, 1):  # a pass takes minutes on a large model: show each task end
            if protocol == "original":
                results[name] = evaluate_original(model, tok, ORIGINAL_TASKS[name], subsets[name], batch_size)
            else:
                results[name] = evaluate_task(model, tok, chosen[name], subsets[name], batch_size, progress)
            log.info("general-capability task %d/%d %s: accuracy %.3f on %d examples", i, len(chosen), name,
                     results[name]["accuracy"], results[name]["n"])
    finally:
        model.train(was_training)
    log.info("general-capability tasks done in %.1fs", time.time() - start)
    return results


def write_downstream_result(path: str | Path, result: dict[str, TaskMetrics], total_edits: int,
                            batch_index: int) -> Path:
    """Write one evaluation point as JSON, atomically (a reader never sees half a file)."""
    payload = {TOTAL_EDITS: int(total_edits), "batch_index": int(batch_index), "tasks": result}
    return write_json_atomic(path, payload)
