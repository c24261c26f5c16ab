"""Dataset kinds are data (experiments/ds_kinds.py): no other module branches on a dataset's name,
and a kind added as one entry runs, scores, summarizes and plots with nothing else changed."""
from __future__ import annotations

import csv
import dataclasses
import json
import re
from pathlib import Path

import pytest
from helpers import CORPUS, COUNTERFACT, TINY_LLAMA

import summarize
from experiments import ds_kinds
from experiments.metrics import case_kinds
from experiments.evaluate import main as evaluate

ROOT = Path(__file__).resolve().parents[1]
# Where a kind's own code lives: the registry, and the metric modules its entry points at.
KIND_MODULES = {"ds_kinds.py", "metrics/counterfact.py", "metrics/zsre.py", "metrics/per_case.py",
                "metrics/case_kinds.py"}
NAMES = "|".join(["cf", "mcf", "zsre", "counterfact"])
BRANCH = re.compile(rf'(==|!=)\s*"({NAMES})"|"({NAMES})"\s*(==|!=)|\bin \(("({NAMES})",?\s*)+\)|"({NAMES})":')


def test_no_module_branches_on_a_dataset_name():
    found = []
    for path in sorted((ROOT / "experiments").rglob("*.py")):
        if str(path.relative_to(ROOT / "experiments")) in KIND_MODULES:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if BRANCH.search(line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "dataset names branched on outside experiments/ds_kinds.py:\n" + "\n".join(found)


def test_the_branch_pattern_finds_branches():
    assert BRANCH.search('if cfg.ds_name == "zsre":') and BRANCH.search('DS = {"mcf": "counterfact"}')
    assert BRANCH.search('if name in ("cf", "mcf"):') and not BRANCH.search('help="--ds_name=mcf"')


LITE_CASES = dataclasses.replace(case_kinds.COUNTERFACT_CASES, name="cf_lite", score_of=())
LITE = dataclasses.replace(
    ds_kinds.COUNTERFACT, cases=LITE_CASES, title="CounterFact-lite",
    loaders={"cflite": ds_kinds.COUNTERFACT.loaders["mcf"]},
    columns={"rewrite_success": "Efficacy", "neighborhood_success": "Specificity"},
    curve_metrics=(("rewrite_success", "Efficacy"),), generation=None, one_edit_per_batch=None)


def test_every_kind_s_cases_are_found_by_its_name_below_the_kinds():
    """Summaries by name resolve in the metrics (experiments.metrics.case_kinds), which never import
    the kinds: each kind's cases must be the entry of its name there."""
    for kind in ds_kinds.all_kinds():
        assert case_kinds.case_kind_named(kind.name) is kind.cases


def test_a_kind_added_as_one_entry_runs_end_to_end(tmp_path, monkeypatch, capsys):
    # One DsKind, and its cases beside the metrics (they are CounterFact's under another name here).
    monkeypatch.setattr(ds_kinds, "KINDS", (*ds_kinds.KINDS, LITE))
    monkeypatch.setattr(case_kinds, "CASE_KINDS", (*case_kinds.CASE_KINDS, LITE_CASES))
    hp = json.loads((ROOT / "hparams/NSE/tinystories-260k.json").read_text())
    (tmp_path / "hp.json").write_text(json.dumps({**hp, "mom2_n_samples": 60, "mom2_max_length": 64}))
    args = {"alg_name": "NSE", "model_name": str(TINY_LLAMA), "hparams_fname": str(tmp_path / "hp.json"),
            "ds_name": "cflite", "ds_file": str(COUNTERFACT), "dataset_size_limit": "2", "num_edits": "1",
            "mom2_dataset": CORPUS, "curve_every": "1", "results_dir": str(tmp_path / "results"),
            "stats_dir": str(tmp_path / "stats"), "data_dir": str(tmp_path / "no_data")}
    assert evaluate([f"--{k}={v}" for k, v in args.items()]) == 0
    run = tmp_path / "results" / "NSE" / "run_000"
    cases = [json.loads(p.read_text()) for p in run.glob("*_edits-case_*.json")]
    assert len(cases) == 2 and not any("ngram_entropy" in c["post"] for c in cases)  # generation=None
    point = json.loads(sorted((run / "curves").iterdir())[-1].read_text())
    assert point["ds_kind"] == "cf_lite" and point["n_cases"] == 2
    capsys.readouterr()
    out = tmp_path / "summary"
    assert summarize.main(["--dir_name=NSE", f"--results_dir={tmp_path / 'results'}", f"--out={out}", "--plot"]) == 0
    printed = capsys.readouterr().out
    assert "CounterFact-lite: mean ± std over cases" in printed
    header = next(line for line in printed.splitlines() if line.startswith("run "))
    assert header.split()[2:] == ["Efficacy", "Specificity"]
    summary = json.loads((out.parent / "summary.json").read_text())
    assert summary["runs"][0]["ds_kind"] == "cf_lite"
    efficacy = 100 * sum(sum(p["target_new"] < p["target_true"] for p in c["post"]["rewrite_prompts_probs"])
                         / len(c["post"]["rewrite_prompts_probs"]) for c in cases) / 2
    assert summary["runs"][0]["paper"]["post"]["Efficacy"]["mean"] == pytest.approx(efficacy)
    with (tmp_path / "summary_figures" / "metrics_vs_edits.csv").open() as f:
        rows = list(csv.DictReader(f))  # the columns of every kind; this kind fills its own
    assert [(r["ds_kind"], r["source"]) for r in rows] == [("cf_lite", "curve"), ("cf_lite", "final")]
    assert float(rows[-1]["Efficacy"]) == pytest.approx(efficacy) and rows[-1]["Generalization"] == ""
    assert (tmp_path / "summary_figures" / "metrics_vs_edits.png").is_file()


def test_case_scoring_runs_the_kind_s_own_generation_tests(monkeypatch):
    """Generation tests are the kind's (DsKind.generation): the scorer runs whatever the kind holds,
    on every generation_every-th case, each from seed + case id."""
    from experiments.case_scoring import CaseScorer

    calls = []

    def generation_tests(model, tok, records, snips, vec, seeds, options):
        calls.append(list(seeds))
        return [{"ngram_entropy": 1.0} for _ in records]

    kind = dataclasses.replace(LITE, teacher_forced=lambda model, tok, records: [{"tf": 1} for _ in records],
                               generation=generation_tests)
    monkeypatch.setattr(ds_kinds, "KINDS", (*ds_kinds.KINDS, kind))
    records = [{"case_id": i, "generation_prompts": ["p"]} for i in range(4)]
    posts = {i: post for i, _, post in CaseScorer(None, None, "cflite", generation_every=2, seed=10)
             .score(list(enumerate(records)))}
    assert calls == [[10, 12]]
    assert posts == {0: {"tf": 1, "ngram_entropy": 1.0}, 1: {"tf": 1}, 2: {"tf": 1, "ngram_entropy": 1.0}, 3: {"tf": 1}}
    monkeypatch.setattr(ds_kinds, "KINDS", (ds_kinds.COUNTERFACT, ds_kinds.ZSRE, dataclasses.replace(kind, generation=None)))
    assert not CaseScorer(None, None, "cflite", generation_every=1).has_generation(0, records[0])  # a kind without
