"""Summarize run folders of ``experiments.evaluate`` as the paper's tables, side by side.

Examples:
    python summarize.py --dir_name=NSE --runs=run_000,run_001
    python summarize.py --dir_name=NSE,MEMIT            # every run of both methods
    python summarize.py --dir_name=NSE --runs=0 --first_n_cases=500 --out=/tmp/nse_500
    python summarize.py --dir_name=NSE,MEMIT --plot --report   # figures + markdown report

Prints a text report and writes <prefix>.json, <prefix>.csv (and <prefix>_downstream.csv when
there are general-capability results); the prefix defaults to <results>/<ALG>/summary for one
method and <results>/summary_<A>_<B> for several. --plot adds <prefix>_figures/ with
metrics_vs_edits.png (Efficacy, Generalization, Specificity, Score vs number of edits: the
--curve_every points and the final result; metrics_vs_edits_counterfact.png and _zsre.png when the
runs mix the two datasets) and downstream_vs_edits.png, each with a CSV of the numbers plotted:
bands of ± 1 standard error over cases, and the unedited model on the same cases as a dashed
line (--baseline=FILE, or the runs' own pre-edit scores); --report adds <prefix>_report.md
(settings, tables, figures).

A damaged or foreign case, pre-edit, downstream, curve or run_complete.json file is left out with
a warning naming it (the counts say what was summarized); a damaged config.json or an output that
cannot be written is refused with one line (exit code 2).
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from dsets import resolve_global_dir
from reporting.curve_stats import Baseline, read_baseline
from reporting.descriptions import describe_outputs
from reporting.errors import SummaryError
from reporting.outputs import default_out_prefix, write_outputs
from reporting.summary import RunSummary, summarize_runs
from reporting.tables import format_report


def _names(text: str) -> list[str]:
    return [part.strip().rstrip("/") for part in text.split(",") if part.strip().rstrip("/")]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python summarize.py", description=__doc__, epilog=describe_outputs(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir_name", required=True,
                   help="algorithm folder(s) under the results folder, comma-separated (e.g. NSE or NSE,MEMIT)")
    p.add_argument("--runs", default=None,
                   help="run folders, comma-separated (run_000,run_001; bare numbers work too); default: all "
                        "run_* folders of each --dir_name")
    p.add_argument("--results_dir", default=None, help="results folder (default RESULTS_DIR in globals.yml)")
    p.add_argument("--out", default=None, help="output path prefix: writes PREFIX.json, PREFIX.csv "
                   "(and PREFIX_downstream.csv)")
    p.add_argument("--first_n_cases", type=int, default=None,
                   help="summarize only the N cases with the smallest case_id of each run")
    p.add_argument("--plot", nargs="?", const="", default=None, metavar="DIR",
                   help="draw metrics_vs_edits.png and downstream_vs_edits.png (+ the CSVs of the numbers plotted) "
                        "into DIR (default PREFIX_figures/); needs matplotlib")
    p.add_argument("--report", action="store_true",
                   help="write PREFIX_report.md: settings, the summary tables and the figures (implies --plot)")
    p.add_argument("--baseline", default=None, metavar="FILE",
                   help="the unedited model's per-case scores (the JSON bench/pre_edit_curve.py writes) drawn in "
                        "metrics_vs_edits.png as a dashed line on each point's own cases (implies --plot); "
                        "default: each run's own pre-edit scores (--eval_pre_edit), where it has them")
    p.add_argument("--downstream_metric", default="f1", choices=("accuracy", "f1", "mcc"),
                   help="the general-capability metric drawn in downstream_vs_edits.png")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        written = _summarize(args, argv)
    except SummaryError as err:  # a traceback would bury the message that says what exists
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _summarize(args: argparse.Namespace, argv: list[str] | None) -> list[Path]:
    dir_names = _names(args.dir_name)
    runs = _names(args.runs) if args.runs else None  # "--runs=," names none: refused by find_runs
    results_dir = resolve_global_dir("RESULTS_DIR", args.results_dir)
    with _os_errors("read", "check the permissions of the results folder"):
        summaries, skipped = summarize_runs(results_dir, dir_names, runs, args.first_n_cases)
    # Outputs are checked before anything is printed: a refusal after the report reads like success.
    prefix = _out_prefix(args.out, results_dir, dir_names)
    figures_dir = _figures_dir(args.plot, prefix) if args.plot is not None or args.report or args.baseline else None
    baseline = _baseline(args.baseline)
    shown = _print_news(summaries)
    print(format_report(summaries, skipped), end="")
    with _os_errors("write", "pass --out=<a writable folder>/<prefix> (and --plot=<a writable folder>)"):
        written = write_outputs(summaries, prefix, skipped, args.first_n_cases)
        if figures_dir is not None:
            try:
                written += _figures_and_report(args, summaries, skipped, prefix, figures_dir, argv, baseline)
            finally:  # curve files left out, runs without curve points: said even when nothing could be drawn
                _print_news(summaries, shown)
    return written


@contextmanager
def _os_errors(doing: str, fix: str) -> Iterator[None]:
    """An OSError the checks did not foresee (permissions changed meanwhile, a disk filling up) as one
    line naming the file, not a traceback."""
    try:
        yield
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise SummaryError(f"cannot {doing} {err.filename or 'a file'} ({reason}); {fix}") from None


Shown = dict[str, tuple[int, int]]  # run label -> (warnings, notes) printed so far


def _print_news(summaries: Sequence[RunSummary], shown: Shown | None = None) -> Shown:
    """Print the runs' warnings (files left out) and notes not printed yet, one line each, on stderr;
    the counts printed so far. The first call prints warnings only: the report lists the notes."""
    shown = shown or {}
    for s in summaries:
        n_warnings, n_notes = shown.get(s.label, (0, len(s.notes)))
        for line in s.warnings[n_warnings:]:
            print(f"warning: {line}", file=sys.stderr)
        for line in s.notes[n_notes:]:
            print(f"note: {s.label}: {line}", file=sys.stderr)
    return {s.label: (len(s.warnings), len(s.notes)) for s in summaries}


def _write_problem(folder: Path) -> str | None:
    """Why no file can be written under ``folder`` (made when missing), or None: checked on the
    nearest existing ancestor, the one that would hold the new folders."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable (no write permission)"
    return None


def _out_prefix(out: str | None, results_dir: Path, dir_names: list[str]) -> Path:
    """The output prefix (``--out=x/summary.json`` means ``x/summary``, as in write_outputs), checked."""
    prefix = Path(out) if out else default_out_prefix(results_dir, dir_names)
    if out and (out.endswith(("/", os.sep)) or prefix.is_dir()):
        raise SummaryError(f"--out={out} is a folder, but --out is a path prefix: pass e.g. "
                           f"--out={prefix / 'summary'} (writes summary.json and summary.csv there)")
    prefix = prefix.with_suffix("") if prefix.suffix in (".json", ".csv") else prefix
    problem = _write_problem(prefix.parent)
    if problem:
        raise SummaryError(f"cannot write {prefix}.json: {problem}; pass --out=<a writable folder>/<prefix>")
    return prefix


def _figures_dir(plot: str | None, prefix: Path) -> Path:
    folder = Path(plot) if plot else prefix.with_name(prefix.name + "_figures")
    if folder.exists() and not folder.is_dir():
        raise SummaryError(f"{folder} is a file, but --plot takes the folder to draw the figures in: pass "
                           f"--plot={folder.with_suffix('')}_figures (or --plot alone for {prefix.name}_figures/)")
    problem = _write_problem(folder)
    if problem:
        raise SummaryError(f"cannot write the figures to {folder}: {problem}; pass --plot=<a writable folder>")
    return folder


def _baseline(path: str | None) -> Baseline | None:
    """--baseline's scores, read before anything is printed: a refusal after the report reads like success."""
    return None if path is None else read_baseline(path)


def _figures_and_report(args: argparse.Namespace, summaries: list[RunSummary], skipped: list[str], prefix: Path,
                        figures_dir: Path, argv: list[str] | None, baseline: Baseline | None) -> list[Path]:
    from reporting.plots import write_figures  # matplotlib only when asked for
    from reporting.report import write_report

    figures = write_figures(summaries, figures_dir, args.downstream_metric, baseline)
    if not args.report:
        return figures
    command = "summarize.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    return figures + [write_report(summaries, prefix.with_name(prefix.name + "_report.md"), figures, skipped,
                                   command)]


if __name__ == "__main__":
    sys.exit(main())
