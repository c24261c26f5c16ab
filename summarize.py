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
--curve_every points and the final result) and downstream_vs_edits.png, each with a CSV of the
numbers plotted; --report adds <prefix>_report.md (settings, tables, figures).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from dsets import resolve_global_dir
from experiments.summarize_runs import (
    SummaryError,
    default_out_prefix,
    describe_outputs,
    format_report,
    summarize_runs,
    write_outputs,
)


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
    p.add_argument("--downstream_metric", default="f1", choices=("accuracy", "f1", "mcc"),
                   help="the general-capability metric drawn in downstream_vs_edits.png")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    dir_names = _names(args.dir_name)
    runs = _names(args.runs) if args.runs else None
    try:
        results_dir = resolve_global_dir("RESULTS_DIR", args.results_dir)
        summaries, skipped = summarize_runs(results_dir, dir_names, runs, args.first_n_cases)
        print(format_report(summaries, skipped), end="")
        prefix = Path(args.out or default_out_prefix(results_dir, dir_names))
        written = write_outputs(summaries, prefix, skipped, args.first_n_cases)
        if args.plot is not None or args.report:
            written += _figures_and_report(args, summaries, skipped, prefix, argv)
    except SummaryError as err:  # a traceback would bury the message that says what exists
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _figures_and_report(args, summaries, skipped, prefix: Path, argv) -> list[Path]:
    from experiments.plots import write_figures  # matplotlib only when asked for
    from experiments.report import write_report

    prefix = prefix.with_suffix("") if prefix.suffix in (".json", ".csv") else prefix  # as write_outputs
    figures_dir = Path(args.plot) if args.plot else prefix.with_name(prefix.name + "_figures")
    figures = write_figures(summaries, figures_dir, args.downstream_metric)
    if not args.report:
        return figures
    command = "summarize.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    return figures + [write_report(summaries, prefix.with_name(prefix.name + "_report.md"), figures, skipped,
                                   command)]


if __name__ == "__main__":
    sys.exit(main())
