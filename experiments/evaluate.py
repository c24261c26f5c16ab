"""``python -m experiments.evaluate``: sequential editing experiment with the original flags.

Example (the paper's setting):
    python -m experiments.evaluate --alg_name=NSE --model_name=meta-llama/Meta-Llama-3-8B-Instruct \\
        --hparams_fname=Llama3-8B.json --ds_name=mcf --dataset_size_limit=2000 --num_edits=100 \\
        --downstream_eval_steps=5
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from contextlib import ExitStack

from tqdm.contrib.logging import logging_redirect_tqdm

from dsets import DataFileMissing, DatasetFormatError
from experiments.context_fit import ContextLengthError
from experiments.run_files import RunFolderError
from experiments.run_paths import RunPaths
from experiments.runner import run_experiment
from experiments.settings import RunConfig, RunError, SettingsParser, add_run_arguments
from util.atomic_files import WriteError, is_write_failure, write_error
from util.corpus import CorpusUnavailable
from util.editor import EditorStateError
from util.hparams import HyperParamsError
from util.model_loading import ModelLoadError
from util.progress import PlainProgress
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


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def build_parser() -> argparse.ArgumentParser:
    """One flag per run setting (experiments.settings.RunConfig), plus --log_level."""
    p = SettingsParser(prog="python -m experiments.evaluate", description=__doc__,
                                usage="%(prog)s --alg_name=ALG --model_name=MODEL --hparams_fname=FILE --ds_name=DS "
                                      "[options]",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p)
    p.add_argument("--log_level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                   help="console detail (run.log always keeps INFO lines)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    with ExitStack() as scope:
        stream = sys.stderr if sys.stderr.isatty() else PlainProgress(sys.stderr)  # no redraw debris in a log
        scope.enter_context(contextlib.redirect_stderr(stream))
        handler = logging.StreamHandler(stream)
        handler.setFormatter(_MarkedFormatter("%(asctime)s %(name)s %(message)s"))
        logging.basicConfig(level=args.pop("log_level"), handlers=[handler])
        cfg = RunConfig(**args)
        try:
            with logging_redirect_tqdm():  # log lines print above the progress bars, not through them
                run_dir = run_experiment(cfg, RunPaths.of(cfg))
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
