"""End to end: `python -m experiments.evaluate` on stories260K with real records, resume, bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import COUNTERFACT, TINY_LLAMA, ZSRE

from experiments.evaluate import main as evaluate
from reporting.summary import summarize_run

ROOT = Path(__file__).resolve().parents[1]


def _args(results: Path, stats: Path, **extra) -> list[str]:
    base = {
        "alg_name": "NSE", "model_name": str(TINY_LLAMA),
        "hparams_fname": "tinystories-260k.json", "ds_name": "mcf",
        "ds_file": str(COUNTERFACT), "dataset_size_limit": "20", "num_edits": "5",
        # No --mom2_dataset or --glue_dir: the hparams name the shipped corpus and the shipped task
        # files are the default, as in the README's offline example.
        "downstream_eval_steps": "2", "downstream_n_per_task": "4", "generation_test_interval": "10",
        "results_dir": str(results), "stats_dir": str(stats), "data_dir": str(results / "no_data"),
    }
    base.update(extra)
    return [f"--{k}={v}" for k, v in base.items() if v is not None]


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("stats")  # C0 is computed once for the module


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory, stats_dir):
    results = tmp_path_factory.mktemp("unbroken")
    assert evaluate(_args(results, stats_dir)) == 0
    return results / "NSE" / "run_000"


def _posts(run_dir: Path) -> dict:
    return {p.name: json.loads(p.read_text())["post"] for p in sorted(run_dir.glob("5_edits-case_*.json"))}


def test_run_writes_every_file(unbroken):
    cases = list(unbroken.glob("5_edits-case_*.json"))
    assert len(cases) == 20
    case = json.loads(cases[0].read_text())
    assert case["num_edits"] == 5 and len(case["grouped_case_ids"]) == 5 and case["case_id"] in case["grouped_case_ids"]
    assert {"rewrite_prompts_probs", "paraphrase_prompts_probs", "neighborhood_prompts_probs"} <= set(case["post"])
    config = json.loads((unbroken / "config.json").read_text())
    assert len(config["context_templates"][1]) == 5 and config["args"]["num_edits"] == 5
    assert config["metrics"]["word_tokenizer"] in ("nltk.word_tokenize", "nltk-untrained-punkt")
    assert config["metrics"]["departures"] == [] and config["metrics"]["generation"]["max_length_with_prompt"] == 100
    assert config["variant"] == ""  # the plain method: no label beside its name in reports
    assert (unbroken / "params.json").is_file() and (unbroken / "run_complete.json").is_file()
    log = (unbroken / "run.log").read_text()
    assert log.count("edits (") == 4 and "residual" in log  # one line per batch
    reports = json.loads((unbroken / "edit_reports.json").read_text())
    assert [r["batch_index"] for r in reports] == [0, 1, 2, 3]
    by_batch = {r["batch_index"]: r["seconds"] for r in reports}
    first = json.loads((unbroken / "5_edits-case_13.json").read_text())  # case 13 is in batch 0
    assert first["time"] == by_batch[0]


def test_downstream_files_at_the_right_batch_counts(unbroken):
    files = sorted(p.name for p in (unbroken / "downstream").glob("*.json"))
    assert files == ["edits_000000.json", "edits_000010.json", "edits_000020.json"]  # every 2 batches of 5
    point = json.loads((unbroken / "downstream" / "edits_000010.json").read_text())
    assert point["total_edits"] == 10 and point["batch_index"] == 2 and "sst2" in point["tasks"]
    assert "num_edits" not in point  # edits so far are total_edits; num_edits is edits per batch


def test_summarize_on_the_run(unbroken, tmp_path):
    out = subprocess.run([sys.executable, "summarize.py", "--dir_name=NSE", "--runs=run_000",
                          f"--results_dir={unbroken.parent.parent}", f"--out={tmp_path / 's'}"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Efficacy" in out.stdout and "run_000" in out.stdout
    [run] = json.loads((tmp_path / "s.json").read_text())["runs"]
    cases = sorted(unbroken.glob("*_edits-case_*.json"))
    assert run["n_cases"] == len(cases) > 0 and run["status"] == "complete"
    hits = [all(p["target_new"] < p["target_true"] for p in json.loads(c.read_text())["post"]["rewrite_prompts_probs"])
            for c in cases]  # one rewrite prompt per case: Efficacy is the share of cases whose new target wins
    assert run["paper"]["post"]["Efficacy"]["mean"] == pytest.approx(100 * sum(hits) / len(hits))


def test_killed_run_continues_to_the_same_results(unbroken, tmp_path, stats_dir):
    assert evaluate(_args(tmp_path, stats_dir, stop_after_batches="2")) == 0
    run = tmp_path / "NSE" / "run_000"
    assert not (run / "run_complete.json").exists() and not list(run.glob("5_edits-case_*.json"))
    assert evaluate(_args(tmp_path, stats_dir, continue_from_run="run_000")) == 0
    assert (run / "run_complete.json").is_file()
    resumed, straight = _posts(run), _posts(unbroken)
    assert resumed.keys() == straight.keys()
    for name in straight:
        for key in ("rewrite_prompts_probs", "neighborhood_prompts_probs"):
            for a, b in zip(resumed[name][key], straight[name][key]):
                assert a["target_new"] == pytest.approx(b["target_new"], rel=1e-5)
    summary = lambda d: summarize_run(d).to_json()["post"]  # noqa: E731
    assert json.dumps(summary(run), sort_keys=True) == json.dumps(summary(unbroken), sort_keys=True)


def test_zsre_run(tmp_path, stats_dir):
    args = _args(tmp_path, stats_dir, ds_name="zsre", ds_file=str(ZSRE),
                 dataset_size_limit="4", num_edits="2", downstream_eval_steps="0")
    assert evaluate(args) == 0
    case = json.loads(next((tmp_path / "NSE" / "run_000").glob("2_edits-case_*.json")).read_text())
    assert {"rewrite_prompts_correct", "paraphrase_prompts_correct", "neighborhood_prompts_correct"} <= set(case["post"])


def _exit_code(argv: list[str]) -> int:
    """The CLI's exit status: main()'s return, or the parser's exit (a flag refused while parsing)."""
    try:
        return evaluate(argv)
    except SystemExit as done:
        return done.code


def _fails(tmp_path, capsys, stats_dir, message, **extra):
    assert _exit_code(_args(tmp_path, stats_dir, **extra)) == 2
    err = capsys.readouterr().err
    assert message in err, err
    runs = list((tmp_path / "NSE").glob("run_*")) if (tmp_path / "NSE").exists() else []
    assert runs == [], f"a failed start left {runs}"


def test_unknown_algorithm(tmp_path, capsys, stats_dir):
    _fails(tmp_path, capsys, stats_dir, "error: --alg_name='FOO' is not one of AlphaEdit, ENCORE, FT, MEMIT, MEMIT_prune, MEMIT_rect, MEMIT_seq, NSE, ROME", alg_name="FOO")


def test_unknown_dataset(tmp_path, capsys, stats_dir):
    _fails(tmp_path, capsys, stats_dir, "error: --ds_name='wiki' is not one of cf, mcf, zsre", ds_name="wiki")


def test_missing_hparams_file(tmp_path, capsys, stats_dir):
    _fails(tmp_path, capsys, stats_dir, "hyperparameter file 'nope.json' not found", hparams_fname="nope.json")


def test_batches_with_cf(tmp_path, capsys, stats_dir):
    _fails(tmp_path, capsys, stats_dir, "--ds_name=cf allows only --num_edits=1", ds_name="cf")


def test_dataset_not_json(tmp_path, capsys, stats_dir):
    bad = tmp_path / "broken.json"
    bad.write_text("[{not json")
    _fails(tmp_path, capsys, stats_dir, "broken.json", ds_file=str(bad))


def test_prompt_without_braces(tmp_path, capsys, stats_dir):
    records = json.loads(COUNTERFACT.read_text())[:3]
    records[1]["requested_rewrite"]["prompt"] = "The mother tongue of Danielle Darrieux is"
    bad = tmp_path / "cf.json"
    bad.write_text(json.dumps(records))
    _fails(tmp_path, capsys, stats_dir, "{}", ds_file=str(bad))


def test_offline_model_name_fails_clearly(tmp_path, capsys, stats_dir):
    _fails(tmp_path, capsys, stats_dir, "Offline, pass --model_name=<local folder", model_name="nobody/no-such-model")


def test_cli_entry_point_runs_as_a_module(tmp_path):
    out = subprocess.run([sys.executable, "-m", "experiments.evaluate", "--alg_name=NSE", "--model_name=x",
                          "--hparams_fname=x.json", "--ds_name=bad"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "--ds_name='bad' is not one of cf, mcf, zsre" in out.stderr


def test_resume_refuses_another_dtype(tmp_path, capsys, stats_dir):
    assert evaluate(_args(tmp_path, stats_dir, stop_after_batches="0", downstream_eval_steps="0")) == 0
    assert evaluate(_args(tmp_path, stats_dir, continue_from_run="run_000", dtype="bfloat16")) == 2
    assert "dtype='bfloat16' differs from the run's 'float32'" in capsys.readouterr().err


def test_run_log_receives_every_package(tmp_path):
    """util, dsets and every method's package log into run.log, not only experiments/nse."""
    import logging

    from experiments.run_log import project_packages, run_log

    packages = project_packages()
    with run_log(tmp_path):
        for name in packages:
            logging.getLogger(f"{name}.some_module").info("line from %s", name)
    logging.getLogger("util.after").info("after the run")
    text = (tmp_path / "run.log").read_text()
    assert all(f"line from {name}" in text for name in packages)
    assert "after the run" not in text  # the handler does not outlive the run
    assert {"nse", "memit", "alphaedit", "rome", "baselines", "util", "dsets", "experiments"} <= set(packages)


# The runner paths that differ by method: a finish() step (PRUNE), a projector cache (AlphaEdit), the
# method's own templates (ROME), no values nor statistics (FT). NSE: the tests above; every method's
# editor: tests/test_editor_contract.py.
@pytest.mark.parametrize("alg", ["MEMIT_prune", "AlphaEdit", "ROME", "FT"])
def test_methods_run_and_resume_through_the_cli(alg, tmp_path, stats_dir):
    from experiments.algorithms import ALGORITHMS

    args = dict(alg_name=alg, dataset_size_limit="2", num_edits="1", downstream_eval_steps="0",
                skip_generation_tests="", use_cache="")
    argv = [a.removesuffix("=") for a in _args(tmp_path, stats_dir, **args)]
    assert evaluate(argv + ["--stop_after_batches=1"]) == 0
    run = tmp_path / alg / "run_000"
    assert not (run / "run_complete.json").exists()
    assert evaluate(argv + ["--continue_from_run=run_000"]) == 0
    assert (run / "run_complete.json").is_file() and len(list(run.glob("1_edits-case_*.json"))) == 2
    reports = json.loads((run / "edit_reports.json").read_text())
    assert [r["batch_index"] for r in reports] == [0, 1] and all(r["seconds"] > 0 for r in reports)
    log = (run / "run.log").read_text()
    assert f"{ALGORITHMS[alg].editor_class.__module__} INFO batch 1: 1 edits (2 total)" in log  # the method's own lines
    templates = json.loads((run / "config.json").read_text())["context_templates"]
    n_templates = None if templates is None else sum(map(len, templates))
    assert n_templates == {"ROME": 1 + 20, "FT": None}.get(alg, 1 + 5)  # ROME: lengths [[5, 10], [10, 10]]
