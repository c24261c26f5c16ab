"""What every key of the summary's JSON and CSV means, in the paper's terms (``summarize.py --help``)."""
from __future__ import annotations

import textwrap

from experiments.ds_kinds import all_kinds
from experiments.metrics.summary import METRIC_DESCRIPTIONS
from experiments.run_folder import RunFolder

HELP_WIDTH = 100

# What every key of the JSON/CSV output means; the per-case metric keys are in METRIC_DESCRIPTIONS.
RUN_KEY_DESCRIPTIONS: dict[str, str] = {
    "alg_name": "Editing method (the results/<ALG> folder).",
    "run": "Run folder name (run_NNN).",
    "status": f"'complete' when {RunFolder.COMPLETE} exists; 'INCOMPLETE' otherwise (still running, stopped "
              "with --stop_after_batches, or crashed): its numbers cover only the cases scored so far.",
    "path": "The run folder.",
    "model_name": f"Model edited ({RunFolder.CONFIG}).",
    "ds_name": f"Dataset ({RunFolder.CONFIG}): "
               + ", ".join(f"{'/'.join(k.loaders)} = {k.title}" for k in all_kinds()) + ".",
    "downstream_protocol": "How the general-capability tasks were scored: original (the original code's prompts, "
                           "greedy answers, weighted F1) or likelihood; null without downstream points.",
    "ds_kind": "Which paper table the run belongs to: " + " or ".join(k.name for k in all_kinds()) + ".",
    "num_edits": f"Edits per batch ({RunFolder.CONFIG}; the paper: 100).",
    "dataset_size_limit": f"Records edited in all ({RunFolder.CONFIG}; null = the whole dataset).",
    "n_cases": "Cases summarized (case files read, after --first_n_cases).",
    "n_generation_cases": "Cases that carry generation metrics (Fluency/Consistency are averaged over these).",
    "n_pre_cases": "Cases with pre-edit scores (the 'pre-edited' row).",
    "post": "Metrics of the edited model after all edits, each {mean, std} over cases (the paper's table row); "
            "an undefined std (Score's) is null in the JSON and empty in the CSV.",
    "pre": "The same metrics on the unedited model (case files' 'pre', else the run's "
           f"{RunFolder.PRE_EDIT_DIR}/ folder); null when the run did not score the unedited model "
           "(--eval_pre_edit).",
    "norm_anchor": f"Runs with norm anchoring ({RunFolder.PARAMS} norm_anchor): {{dropped, rescaled, "
                   f"dropped_case_ids, batches_counted, batches}} summed over {RunFolder.EDIT_REPORTS}. A dropped edit "
                   "(|v*| > 2 x the anchor) asked the model for no change, although the run counts it as made. "
                   "dropped is null when no batch recorded it (runs made before the count); null for runs without "
                   "anchoring.",
    "case_time_s": "Seconds of the edit of the batch a case was in (the case files' 'time'; every case of a "
                   "batch has the same), {mean, std}; not a scoring time.",
    "paper": "The paper's columns for this dataset, {column: {mean, std}}, for post and pre.",
    "downstream": "General-capability evaluation points, by number of edits so far: "
                  "[{total_edits, batch_index, tasks: {task: {accuracy, f1, mcc, n}}}].",
    "notes": "Anything the reader should know about this run (incomplete, mixed files, missing parts).",
    "warnings": "Files of the run left out of the summary (unreadable or of the wrong shape), each named with "
                "what is wrong and the fix.",
    "skipped (top level)": "Runs left out because they have nothing to summarize yet (only with no --runs).",
    "first_n_cases (top level)": "The --first_n_cases used (null = all cases).",
}
DOWNSTREAM_DESCRIPTIONS: dict[str, str] = {
    "total_edits": "Edits applied before this evaluation point (0 = the unedited model).",
    "batch_index": "Edit batches applied before this evaluation point.",
    "accuracy": "Zero-shot accuracy: the label word with the higher mean log-likelihood is the answer (0-1).",
    "f1": "F1 of the positive class for two-class tasks, macro F1 otherwise (0-1).",
    "mcc": "Matthews correlation coefficient (-1 to 1; 0 = no better than a constant answer).",
    "n": "Examples evaluated for the task.",
}


def _block(title: str, table: dict[str, str]) -> str:
    width = max(len(k) for k in table)
    lines = [textwrap.fill(v, HELP_WIDTH, initial_indent=f"  {k.ljust(width)}  ",
                           subsequent_indent=" " * (width + 4)) for k, v in table.items()]
    return title + "\n" + "\n".join(lines)


def _paper_columns() -> str:
    lines = (f"{kind.title}: " + ", ".join(f"{name} = {key}" for key, name in kind.columns.items())
             for kind in all_kinds())
    return "\n".join(textwrap.fill(line, HELP_WIDTH, initial_indent="  ", subsequent_indent="    ") for line in lines)


def describe_outputs() -> str:
    """Every output key in paper terms (the ``--help`` epilog)."""
    return "\n\n".join([
        "Paper columns (printed tables, and 'paper' in the JSON):\n" + _paper_columns(),
        _block("Per-run keys:", RUN_KEY_DESCRIPTIONS),
        _block("Metrics ('post'/'pre' in the JSON; CSV columns <key> and <key>_std), mean ± std over cases:",
               METRIC_DESCRIPTIONS),
        _block(f"Downstream ({RunFolder.DOWNSTREAM_DIR}/edits_*.json; <prefix>_downstream.csv):",
               DOWNSTREAM_DESCRIPTIONS),
    ]) + "\n"
