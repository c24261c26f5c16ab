"""summarize.py on hand-made run folders whose table numbers are computed by hand."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ZSRE_POSTS, cf_post

from reporting.errors import SummaryError
from reporting.finding import find_runs
from reporting.outputs import default_out_prefix, write_outputs
from reporting.summary import summarize_run, summarize_runs
from reporting.tables import format_report

ROOT = Path(__file__).resolve().parents[1]
LN2 = math.log(2)  # NLL ln 2 <-> P = 1/2; NLL 2 ln 2 <-> P = 1/4
WIN, LOSE = (LN2, 2 * LN2), (2 * LN2, LN2)  # (NLL of target_new, NLL of target_true)


# Case 0: rewrite won, 1 of 2 paraphrases won, the neighbour flipped; generation metrics.
# Case 1: rewrite won, the paraphrase lost, the neighbour kept its true object; no generation.
# Efficacy 100 ± 0, Generalization 25 ± 25, Specificity 50 ± 50, Fluency 600, Consistency 30,
# Score = 3 / (1/100 + 1/25 + 1/50) = 42.857...
CF_POSTS = [cf_post([WIN], [WIN, LOSE], [WIN], ngram_entropy=6.0, reference_score=0.3),
            cf_post([WIN], [LOSE], [LOSE])]
CF_SCORE = 3 / (1 / 100 + 1 / 25 + 1 / 50)
# Unedited: every prompt prefers the true object -> Efficacy 0, Generalization 0, Specificity 100.
CF_PRE = cf_post([LOSE], [LOSE], [LOSE], ngram_entropy=6.3, reference_score=0.2)


def make_run(results: Path, alg: str, run: str, posts: list[dict], ds_name: str = "mcf", num_edits: int = 2,
             pre: list[dict] | None = None, complete: bool = True, downstream: dict[int, dict] | None = None,
             nest_args: bool = True, count_key: str = "total_edits") -> Path:
    """A run folder; ``count_key="num_edits"`` writes the running count as runs did before the rename."""
    run_dir = results / alg / run
    run_dir.mkdir(parents=True)
    args = {"alg_name": alg, "model_name": "tiny-llama", "ds_name": ds_name, "num_edits": num_edits,
            "dataset_size_limit": len(posts)}
    config = {"args": args, "versions": {}, "context_templates": [["{}"]]} if nest_args else args
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "params.json").write_text("{}")
    for case_id, post in enumerate(posts):
        case = {"case_id": case_id, "grouped_case_ids": list(range(len(posts))), "num_edits": num_edits,
                "requested_rewrite": {}, "time": 1.0 + case_id, "post": post}
        if pre is not None:
            case["pre"] = pre[case_id]
        (run_dir / f"{num_edits}_edits-case_{case_id}.json").write_text(json.dumps(case))
    for n, tasks in (downstream or {}).items():
        (run_dir / "downstream").mkdir(exist_ok=True)
        point = {count_key: n, "batch_index": n // num_edits, "tasks": tasks}
        (run_dir / "downstream" / f"edits_{n:06d}.json").write_text(json.dumps(point))
    if complete:
        (run_dir / "run_complete.json").write_text("{}")
    return run_dir


def paper_means(summary_json: dict, row: str = "post") -> dict[str, float]:
    return {k: v["mean"] for k, v in summary_json["paper"][row].items()}


def test_counterfact_run_hand_computed(tmp_path):
    s = summarize_run(make_run(tmp_path, "NSE", "run_000", CF_POSTS))
    out = s.to_json()
    assert out["status"] == "complete" and out["n_cases"] == 2 and out["n_generation_cases"] == 1
    assert out["ds_kind"] == "counterfact" and out["model_name"] == "tiny-llama" and out["num_edits"] == 2
    assert paper_means(out) == pytest.approx({"Efficacy": 100.0, "Generalization": 25.0, "Specificity": 50.0,
                                              "Fluency": 600.0, "Consistency": 30.0, "Score": CF_SCORE})
    assert out["paper"]["post"]["Generalization"]["std"] == pytest.approx(25.0)
    assert out["paper"]["post"]["Score"]["std"] is None  # no per-case spread; NaN is not JSON
    assert out["post"]["rewrite_diff"]["mean"] == pytest.approx(25.0)  # 1/2 - 1/4, every key of summarize_cases
    assert out["case_time_s"]["mean"] == pytest.approx(1.5) and out["pre"] is None
    report = format_report([s])
    row = next(line for line in report.splitlines() if line.startswith("NSE/run_000 "))
    assert row.split()[1:] == ["2", "100.00", "±", "0.00", "25.00", "±", "25.00", "50.00", "±", "50.00",
                               "600.00", "±", "0.00", "30.00", "±", "0.00", "42.86"]
    assert "Efficacy" in report and "INCOMPLETE" not in report


def test_zsre_run_uses_token_accuracy_columns(tmp_path):
    out = summarize_run(make_run(tmp_path, "NSE", "run_000", ZSRE_POSTS, ds_name="zsre")).to_json()
    assert paper_means(out) == pytest.approx({"Efficacy": 75.0, "Generalization": 50.0, "Specificity": 87.5})
    assert out["paper"]["post"]["Specificity"]["std"] == pytest.approx(12.5)


def test_runs_side_by_side_and_output_files(tmp_path):
    make_run(tmp_path, "NSE", "run_000", CF_POSTS)
    make_run(tmp_path, "MEMIT", "run_000", [cf_post([LOSE], [LOSE], [LOSE])] * 2)
    make_run(tmp_path, "MEMIT", "run_001", ZSRE_POSTS, ds_name="zsre")
    summaries, skipped = summarize_runs(tmp_path, ["NSE", "MEMIT"])
    assert [s.label for s in summaries] == ["NSE/run_000", "MEMIT/run_000", "MEMIT/run_001"] and not skipped
    report = format_report(summaries)
    cf_table = report[report.index("CounterFact:"):report.index("zsRE:")]
    assert cf_table.index("NSE/run_000") < cf_table.index("MEMIT/run_000") and "MEMIT/run_001" not in cf_table
    memit = next(line for line in cf_table.splitlines() if line.startswith("MEMIT/run_000"))
    assert memit.split()[1:5] == ["2", "0.00", "±", "0.00"] and memit.split()[-1] == "0.00"  # Score sunk by 0
    assert "MEMIT/run_001" in report[report.index("zsRE:"):]

    prefix = default_out_prefix(tmp_path, ["NSE", "MEMIT"])
    assert prefix == tmp_path / "summary_NSE_MEMIT"
    written = write_outputs(summaries, prefix)
    assert [p.name for p in written] == ["summary_NSE_MEMIT.json", "summary_NSE_MEMIT.csv"]
    data = json.loads(written[0].read_text())
    assert [r["run"] for r in data["runs"]] == ["run_000", "run_000", "run_001"]
    assert "rewrite_success" in data["descriptions"]["metrics"]
    rows = list(csv.DictReader(written[1].open()))
    assert [(r["alg_name"], r["row"]) for r in rows] == [("NSE", "post"), ("MEMIT", "post"), ("MEMIT", "post")]
    assert float(rows[0]["paraphrase_success"]) == pytest.approx(25.0) and rows[0]["score_std"] == ""
    assert rows[2]["rewrite_success"] == "" and float(rows[2]["rewrite_acc"]) == pytest.approx(75.0)
    assert not list(tmp_path.glob("**/*.tmp"))  # atomic writes leave no temp files


def test_pre_edited_row(tmp_path):
    s = summarize_run(make_run(tmp_path, "NSE", "run_000", CF_POSTS, pre=[CF_PRE, CF_PRE]))
    out = s.to_json()
    assert out["n_pre_cases"] == 2
    assert paper_means(out, "pre") == pytest.approx({"Efficacy": 0.0, "Generalization": 0.0, "Specificity": 100.0,
                                                     "Fluency": 630.0, "Consistency": 20.0, "Score": 0.0})
    assert paper_means(out) == pytest.approx(paper_means(summarize_run(tmp_path / "NSE" / "run_000").to_json()))
    lines = format_report([s]).splitlines()
    pre_row = next(i for i, line in enumerate(lines) if line.startswith("NSE/run_000 pre-edited"))
    assert lines[pre_row].split()[2:6] == ["2", "0.00", "±", "0.00"]
    assert lines[pre_row + 1].startswith("NSE/run_000 ")  # the edited row right below


def test_pre_edit_folder_is_read_when_case_files_carry_no_pre(tmp_path):
    run_dir = make_run(tmp_path, "NSE", "run_000", CF_POSTS, complete=False)
    (run_dir / "pre_edit").mkdir()
    for case_id in (0, 1, 7):  # case 7 has no post file: left out so both rows cover the same cases
        (run_dir / "pre_edit" / f"case_{case_id}.json").write_text(json.dumps(CF_PRE))
    out = summarize_run(run_dir).to_json()
    assert out["n_pre_cases"] == 2 and paper_means(out, "pre")["Specificity"] == pytest.approx(100.0)


def test_incomplete_run_is_marked(tmp_path):
    make_run(tmp_path, "NSE", "run_000", CF_POSTS)
    make_run(tmp_path, "NSE", "run_001", CF_POSTS[:1], complete=False)
    summaries, _ = summarize_runs(tmp_path, ["NSE"], ["run_000", "run_001"])
    assert [s.status for s in summaries] == ["complete", "INCOMPLETE"]
    report = format_report(summaries)
    assert "NSE/run_001  [INCOMPLETE]" in report and "NSE/run_001 (INCOMPLETE)" in report
    assert "NSE/run_000 (INCOMPLETE)" not in report
    assert any("run_complete.json" in n for n in summaries[1].notes)
    data = json.loads(write_outputs(summaries, tmp_path / "out")[0].read_text())
    assert [r["status"] for r in data["runs"]] == ["complete", "INCOMPLETE"]


@pytest.mark.parametrize("count_key", ["total_edits", "num_edits"])  # num_edits: points written before the rename
def test_downstream_table_and_csv(tmp_path, count_key):
    def tasks(acc):
        return {"sst2": {"accuracy": acc, "f1": 0.5, "mcc": 0.25, "n": 4}, "mmlu": {"accuracy": 0.25, "f1": 0.2,
                                                                                  "mcc": 0.0, "n": 4}}
    make_run(tmp_path, "NSE", "run_000", CF_POSTS, downstream={4: tasks(0.5), 0: tasks(0.75)}, count_key=count_key)
    (s,) = summarize_runs(tmp_path, ["NSE"])[0]
    assert [p["total_edits"] for p in s.downstream] == [0, 4]  # ordered by edits, not by file listing
    assert all("num_edits" not in p for p in s.downstream) and not s.warnings  # one name, whatever the file held
    report = format_report([s])
    table = report[report.index("Downstream NSE/run_000"):].splitlines()
    assert table[1].split() == ["task", "metric", "0", "edits", "4", "edits"]
    assert next(line for line in table if line.startswith("sst2  accuracy")).split()[2:] == ["0.750", "0.500"]
    written = write_outputs([s], default_out_prefix(tmp_path, ["NSE"]))
    assert written[2] == tmp_path / "NSE" / "summary_downstream.csv"
    rows = list(csv.DictReader(written[2].open()))
    assert [(r["total_edits"], r["task"], r["accuracy"]) for r in rows] == [
        ("0", "mmlu", "0.25"), ("0", "sst2", "0.75"), ("4", "mmlu", "0.25"), ("4", "sst2", "0.5")]


def test_first_n_cases_and_flat_config(tmp_path):
    posts = [CF_POSTS[1], CF_POSTS[0], cf_post([LOSE], [LOSE], [LOSE])]
    run_dir = make_run(tmp_path, "NSE", "run_000", posts, nest_args=False)
    out = summarize_run(run_dir, first_n_cases=2).to_json()  # case ids 0 and 1: CF_POSTS in the other order
    assert out["n_cases"] == 2 and out["model_name"] == "tiny-llama"
    assert paper_means(out)["Generalization"] == pytest.approx(25.0)
    assert summarize_run(run_dir).to_json()["n_cases"] == 3


def test_errors_name_what_exists(tmp_path):
    make_run(tmp_path, "NSE", "run_000", CF_POSTS)
    make_run(tmp_path, "NSE", "run_002", CF_POSTS)
    with pytest.raises(SummaryError, match=r"no folder 'ROME'.*runs there: NSE"):
        find_runs(tmp_path, ["ROME"])
    with pytest.raises(SummaryError, match=r"no run 'run_001'.*its runs: run_000, run_002"):
        find_runs(tmp_path, ["NSE"], ["run_000", "1"])
    with pytest.raises(SummaryError, match="does not exist"):
        find_runs(tmp_path / "nowhere", ["NSE"])

    empty = tmp_path / "NSE" / "run_003"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"args": {"ds_name": "mcf"}}))
    with pytest.raises(SummaryError, match=r"run_003 has no case files .*incomplete"):
        summarize_runs(tmp_path, ["NSE"], ["run_003"])
    summaries, skipped = summarize_runs(tmp_path, ["NSE"])  # all runs: the empty one is skipped, and said so
    assert [s.run for s in summaries] == ["run_000", "run_002"] and "run_003" in skipped[0]

    # A damaged case file among good ones is left out and named (tests/test_summarize_bad_inputs.py has
    # every kind); with every case file damaged there is nothing left to stand for the run: refused.
    (tmp_path / "NSE" / "run_002" / "2_edits-case_1.json").write_text('{"case_id": 1, "post": ')
    s = summarize_run(tmp_path / "NSE" / "run_002")
    assert s.n_cases == 1 and "2_edits-case_1.json is not valid JSON" in s.warnings[0]
    (tmp_path / "NSE" / "run_002" / "2_edits-case_0.json").write_text('{"case_id": 0}')
    with pytest.raises(SummaryError, match=r"none of its 2 case files .*no 'post' metrics"):
        summarize_run(tmp_path / "NSE" / "run_002")


def test_cli_subprocess(tmp_path):
    make_run(tmp_path, "NSE", "run_000", CF_POSTS, pre=[CF_PRE, CF_PRE])
    make_run(tmp_path, "MEMIT", "run_000", CF_POSTS[:1], complete=False)
    cmd = [sys.executable, "summarize.py", "--dir_name=NSE,MEMIT", "--runs=run_000", f"--results_dir={tmp_path}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "NSE/run_000 pre-edited" in done.stdout and "MEMIT/run_000 (INCOMPLETE)" in done.stdout
    assert "42.86" in done.stdout and (tmp_path / "summary_NSE_MEMIT.json").is_file()
    assert (tmp_path / "summary_NSE_MEMIT.csv").is_file() and not (tmp_path / "NSE" / "summary.json").exists()


def test_cli_errors_and_out_prefix(tmp_path, capsys):
    import summarize

    make_run(tmp_path, "NSE", "run_000", CF_POSTS)
    assert summarize.main(["--dir_name=ROME", f"--results_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert "error: no folder 'ROME'" in err and "runs there: NSE" in err and "Traceback" not in err
    assert summarize.main(["--dir_name=NSE", f"--results_dir={tmp_path}", f"--out={tmp_path / 'x' / 'mine.json'}"]) == 0
    assert (tmp_path / "x" / "mine.json").is_file() and (tmp_path / "x" / "mine.csv").is_file()
    assert "Efficacy" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        summarize.main(["--help"])
    help_text = capsys.readouterr().out
    for key in ("rewrite_success", "ngram_entropy", "n_pre_cases", "INCOMPLETE", "mcc", "Consistency = reference_score"):
        assert key in help_text, key


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    from util.atomic_files import atomic_path, write_json_atomic

    path = write_json_atomic(tmp_path / "out" / "a.json", {"x": 1})
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash while writing")
    assert json.loads(path.read_text()) == {"x": 1} and [p.name for p in path.parent.iterdir()] == ["a.json"]
    with pytest.raises(ValueError):  # NaN is not JSON: refuse rather than write a file others cannot read
        write_json_atomic(path, {"x": float("nan")})
    assert json.loads(path.read_text()) == {"x": 1}


def test_atomic_files_get_the_mode_a_plain_write_gives(tmp_path):
    """Shared results and statistics folders: not the 0600 of the temporary file behind the write."""
    import os
    import stat

    from util.atomic_files import save_torch_atomic, write_json_atomic

    old = os.umask(0o022)
    try:
        written = [write_json_atomic(tmp_path / "a.json", {"x": 1}), save_torch_atomic({"x": 1}, tmp_path / "b.pt")]
    finally:
        os.umask(old)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


@pytest.mark.parametrize("count_key", ["total_edits", "num_edits"])  # num_edits: markers written before the rename
def test_run_complete_gives_the_final_counts(tmp_path, count_key):
    run_dir = make_run(tmp_path, "NSE", "run_000", CF_POSTS)
    (run_dir / "run_complete.json").write_text(json.dumps({"finished": "then", "num_batches": 1, count_key: 2}))
    s = summarize_run(run_dir)
    assert (s.final_total_edits, s.final_num_batches) == (2, 1) and not s.warnings


@pytest.mark.parametrize("count_key", ["total_edits", "num_edits"])  # num_edits: runs continued before the rename
def test_report_names_the_edits_a_run_continued_from(tmp_path, count_key):
    from reporting.report import write_report

    run_dir = make_run(tmp_path, "NSE", "run_000", CF_POSTS)
    config = json.loads((run_dir / "config.json").read_text())
    config["continued_from"] = {"editor_state": "/saved/editor_state.pt", "num_batches": 3, count_key: 6}
    (run_dir / "config.json").write_text(json.dumps(config))
    report = write_report([summarize_run(run_dir)], tmp_path / "report.md").read_text()
    assert "| continued from | `/saved/editor_state.pt` (6 edits before this run) |" in report


def test_a_norm_anchored_run_is_labelled_as_such(tmp_path):
    plain = make_run(tmp_path, "AlphaEdit", "run_000", CF_POSTS)
    anchored = make_run(tmp_path, "AlphaEdit", "run_001", CF_POSTS)
    (anchored / "params.json").write_text(json.dumps({"norm_anchor": True}))
    (plain / "params.json").write_text(json.dumps({"norm_anchor": False}))
    broken = make_run(tmp_path, "AlphaEdit", "run_002", CF_POSTS)
    (broken / "params.json").write_text("{not json")
    summaries, _ = summarize_runs(tmp_path, ["AlphaEdit"])
    assert [s.label for s in summaries] == ["AlphaEdit/run_000", "AlphaEdit/run_001 +NAS", "AlphaEdit/run_002"]


def test_a_run_labels_itself_and_older_runs_are_labelled_from_their_hyperparameters(tmp_path):
    """The reporter knows no method: config.json's "variant" (the runner writes it) is the label; a run
    from before it gets the one experiments.algorithms reads from its params.json."""
    from experiments.algorithms import variant_label

    assert variant_label({"norm_anchor": True}) == "+NAS" and variant_label({"norm_anchor": False}) == ""
    labelled = make_run(tmp_path, "NSE", "run_000", CF_POSTS)
    config = json.loads((labelled / "config.json").read_text())
    (labelled / "config.json").write_text(json.dumps({**config, "variant": "+X"}))
    (labelled / "params.json").write_text(json.dumps({"norm_anchor": True}))  # the run's own label wins
    older = make_run(tmp_path, "NSE", "run_001", CF_POSTS)
    (older / "params.json").write_text(json.dumps({"norm_anchor": True}))
    summaries, _ = summarize_runs(tmp_path, ["NSE"])
    assert [s.label for s in summaries] == ["NSE/run_000 +X", "NSE/run_001 +NAS"]


def _anchored_run(results: Path, run: str, reports: list[dict] | None) -> Path:
    """An AlphaEdit run with norm anchoring whose edit_reports.json holds ``reports`` (None: no file)."""
    run_dir = make_run(results, "AlphaEdit", run, CF_POSTS)
    (run_dir / "params.json").write_text(json.dumps({"norm_anchor": True}))
    if reports is not None:
        (run_dir / "edit_reports.json").write_text(json.dumps(reports))
    return run_dir


def _batch(i: int, dropped: list[int] | None, n: int = 1) -> dict:
    """One batch's report; ``dropped`` None: written before anchoring's count existed."""
    report = {"batch_index": i, "n_requests": n, "total_edits": n * (i + 1), "seconds": 1.0}
    if dropped is not None:
        report.update(anchor_dropped=len(dropped), anchor_rescaled=n - len(dropped), anchor_dropped_case_ids=dropped)
    return report


def test_the_edits_norm_anchoring_dropped_are_summed_and_shown(tmp_path):
    from reporting.report import write_report

    _anchored_run(tmp_path, "run_001", [_batch(0, [1]), _batch(1, [])])
    plain = make_run(tmp_path, "AlphaEdit", "run_000", CF_POSTS)
    (plain / "edit_reports.json").write_text(json.dumps([_batch(0, None)]))
    summaries, _ = summarize_runs(tmp_path, ["AlphaEdit"])
    anchored = summaries[1].to_json()["norm_anchor"]
    assert anchored == {"dropped": 1, "rescaled": 1, "dropped_case_ids": [1], "batches_counted": 2, "batches": 2}
    assert summaries[0].to_json()["norm_anchor"] is None  # no anchoring: nothing to count
    text = format_report(summaries)
    assert "edits dropped by norm anchoring=1" in text and "dropped by anchoring" in text
    written = write_outputs(summaries, tmp_path / "out" / "summary")
    rows = list(csv.DictReader(written[1].open()))
    assert [(r["run"], r["anchor_dropped"], r["anchor_rescaled"]) for r in rows] == [("run_000", "", ""),
                                                                                      ("run_001", "1", "1")]
    report = write_report(summaries, tmp_path / "report.md").read_text()
    assert "| edits dropped by norm anchoring |" in report and "| AlphaEdit/run_001 +NAS | complete |" in report
    assert report.split("| AlphaEdit/run_001 +NAS | complete |")[1].split("\n")[0].rstrip().endswith("| 1 |")


def test_an_anchored_run_from_before_the_count_summarizes_the_same(tmp_path):
    """Batch reports without the count (runs made before it) leave the total unknown, not 0, and
    change no number; a run where only some batches counted says how many."""
    old = summarize_run(_anchored_run(tmp_path, "run_001", [_batch(0, None), _batch(1, None)]))
    nothing = summarize_run(_anchored_run(tmp_path, "run_002", None))
    part = summarize_run(_anchored_run(tmp_path, "run_003", [_batch(0, None), _batch(1, [0, 1], n=2)]))
    reference = summarize_run(make_run(tmp_path, "AlphaEdit", "run_000", CF_POSTS)).to_json()
    for s in (old, nothing, part):
        out = s.to_json()
        assert out["post"] == reference["post"] and out["paper"] == reference["paper"]
    assert old.norm_anchor["dropped"] is None and old.norm_anchor["batches"] == 2
    assert any("counted in 0 of 2 batch reports" in n for n in old.notes)
    assert nothing.norm_anchor["dropped"] is None and any("0 of 0" in n for n in nothing.notes)
    assert part.norm_anchor["dropped"] == 2 and any("counted in 1 of 2" in n for n in part.notes)
    assert "edits dropped by norm anchoring=2 (1 of 2 batches)" in format_report([part])
    assert "edits dropped by norm anchoring=?" in format_report([old])


def test_a_damaged_edit_reports_file_is_named(tmp_path):
    run_dir = _anchored_run(tmp_path, "run_001", None)
    (run_dir / "edit_reports.json").write_text('{"batch_index": 0}')
    s = summarize_run(run_dir)
    assert s.norm_anchor["dropped"] is None
    assert any("edit_reports.json is not a list of batch reports" in w for w in s.warnings)
