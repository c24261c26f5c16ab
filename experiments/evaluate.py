"""``python -m experiments.evaluate``: sequential editing experiment with the original flags.

Example (the paper's setting):
    python -m experiments.evaluate --alg_name=NSE --model_name=meta-llama/Meta-Llama-3-8B-Instruct \\
        --hparams_fname=Llama3-8B.json --ds_name=mcf --dataset_size_limit=2000 --num_edits=100 \\
        --downstream_eval_steps=5
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from dsets import DataFileMissing, DatasetFormatError
from experiments.algorithms import ALGORITHMS
from experiments.context_fit import ContextLengthError
from experiments.downstream import SHIPPED_GLUE_DIR
from experiments.metrics.fluency import DEPARTURES
from experiments.run_files import RunFolderError
from experiments.runner import RunConfig, RunError, run_experiment
from util.atomic_files import WriteError, is_write_failure, write_error
from util.corpus import CorpusUnavailable
from util.editor import EditorStateError
from util.hparams import HyperParamsError
from util.model_loading import DEVICE_MAPS, ModelLoadError
from util.requests import RequestError

# Errors whose message already says what is wrong and what to do: the CLI prints the message alone.
USER_ERRORS = (RunError, HyperParamsError, DatasetFormatError, DataFileMissing, ModelLoadError, CorpusUnavailable,
               RequestError, FileNotFoundError, RunFolderError, EditorStateError, ContextLengthError, WriteError)


def user_message(err: BaseException) -> str | None:
    """The one-line message for an error the user can fix, or None for a bug (which keeps its traceback)."""
    if isinstance(err, USER_ERRORS):
        return " ".join(str(err).split())
    if is_write_failure(err):  # a write outside util.atomic_files (a log, a folder) on a full or read-only disk
        return str(write_error(getattr(err, "filename", None) or "a file", err))
    return None


class _MarkedFormatter(logging.Formatter):
    """Warnings and errors start with their level, so they stand out among the progress lines."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return f"{record.levelname}: {text}" if record.levelno >= logging.WARNING else text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--alg_name", required=True, help=f"editing method: {', '.join(sorted(ALGORITHMS))}")
    a("--model_name", required=True, help="hub id, local model folder, or a .gguf file")
    a("--hparams_fname", required=True, help="file name under hparams/<ALG>/, or a path to a JSON file")
    a("--ds_name", required=True, help="mcf (MultiCounterFact), cf (CounterFact) or zsre")
    a("--dataset_size_limit", type=int, default=None, help="edit only the first N records")
    a("--num_edits", type=int, default=1, help="edits per batch (cf allows only 1)")
    a("--downstream_eval_steps", type=int, default=0,
      help="run the general-capability tasks on the unedited model and every N batches (0: never)")
    a("--continue_from_run", default=None, help="resume results/<ALG>/<run_NNN> from its last completed batch")
    a("--skip_generation_tests", action="store_true", help="no generation metrics (Fluency, Consistency)")
    a("--generation_test_interval", type=int, default=1,
      help="generation metrics on every N-th case (-1: none)")
    a("--conserve_memory", action="store_true", help="keep the rewinding copy of the original weights on the CPU")
    a("--use_cache", action="store_true", help="cache target values z per case on disk and reuse them")
    a("--device", default=None, help="torch device (default: cuda if available, else mps, else cpu)")
    a("--device_map", default=None, choices=sorted(DEVICE_MAPS),
      help="spread the model over every GPU (and the CPU) with accelerate instead of one --device; "
           "edited layers must not be offloaded")
    a("--dtype", default="float32", help="model weights: float32, bfloat16 or float16 (solves stay float64)")
    a("--seed", type=int, default=0, help="seeds context templates and generation tests")
    a("--data_dir", default=None, help="dataset folder (default DATA_DIR in globals.yml)")
    a("--ds_file", default=None, help="read the dataset from this JSON file instead of the data folder")
    a("--mom2_dataset", default=None,
      help="override the hparams' statistics corpus: a datasets hub name, or a local .txt/.jsonl file or folder")
    a("--stats_dir", default=None, help="covariance cache folder (default STATS_DIR in globals.yml)")
    a("--results_dir", default=None, help="where run folders go (default RESULTS_DIR in globals.yml)")
    a("--glue_dir", default=None, help="general-capability task files (default: experiments/downstream/data)")
    a("--metric_departures", nargs="+", default=[], choices=sorted(DEPARTURES), metavar="NAME",
      help="depart from the original Fluency/Consistency code (README, comparability): "
           + "; ".join(f"{k}: {v}" for k, v in DEPARTURES.items()))
    a("--downstream_n_per_task", type=int, default=100, help="examples per general-capability task")
    a("--values_batch_size", type=int, default=None,
      help="requests whose values are optimised together (default: the whole batch; lower it if memory runs out)")
    a("--eval_pre_edit", action="store_true", help="also score every case on the unedited model ('pre' row)")
    a("--stop_after_batches", type=int, default=None,
      help="stop cleanly after N batches (e.g. a time-limited job); continue with --continue_from_run")
    a("--dataset_offset", type=int, default=0,
      help="skip the first N records (with --dataset_size_limit: edit records N..N+limit-1), e.g. to continue "
           "editing a --save_model folder with the records after the ones it was edited with")
    a("--curve_every", type=int, default=0,
      help="every N batches, score the cases edited so far teacher-forced (Efficacy, Generalization, "
           "Specificity) into curves/edits_NNNNNN.json, for summarize.py --plot (0: never)")
    a("--save_model", default=None, metavar="DIR",
      help="after the last batch, write the edited model and tokenizer (Hugging Face folder, safetensors) and "
           "the editor state to DIR; --model_name=DIR continues editing from it")
    a("--load_editor_state", default=None, metavar="PATH",
      help="editor state to continue from (a file, or a --save_model folder); default: <model_name>/"
           "editor_state.pt when the model is a --save_model folder; 'none': start from the model's weights")
    a("--log_level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_MarkedFormatter("%(asctime)s %(name)s %(message)s"))
    logging.basicConfig(level=args.pop("log_level"), handlers=[handler])
    cfg = RunConfig(**args)
    from dsets import resolve_global_dir

    data = resolve_global_dir("DATA_DIR", cfg.data_dir)
    paths = {
        "data": data,
        "results": resolve_global_dir("RESULTS_DIR", cfg.results_dir),
        "stats": resolve_global_dir("STATS_DIR", cfg.stats_dir),
        "hparams": resolve_global_dir("HPARAMS_DIR"),
        "glue": Path(cfg.glue_dir) if cfg.glue_dir else SHIPPED_GLUE_DIR,
    }
    try:
        with logging_redirect_tqdm():  # log lines print above the progress bars, not through them
            run_dir = run_experiment(cfg, paths)
    except Exception as err:  # a traceback would bury the message that says what to fix
        message = user_message(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(f"results in {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
