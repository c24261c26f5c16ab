"""--curve_every on stories260K: checkpoint files, resume, unchanged results; summarize.py --plot/--report."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from helpers import CORPUS, COUNTERFACT, TASKS_DIR, TINY_LLAMA

import summarize
from experiments.evaluate import main as evaluate
from experiments.metrics.summary import summarize_cases

ROOT = Path(__file__).resolve().parents[1]
TF_KEYS = ("rewrite_prompts_probs", "paraphrase_prompts_probs", "neighborhood_prompts_probs",
           "rewrite_prompts_correct", "paraphrase_prompts_correct", "neighborhood_prompts_correct")


def small_hparams(folder: Path) -> Path:
    """tinystories-260k.json with a small C0 sample, so the statistics take seconds."""
    hp = json.loads((ROOT / "hparams/NSE/tinystories-260k.json").read_text())
    path = folder / "tiny_nse.json"
    path.write_text(json.dumps({**hp, "mom2_n_samples": 60, "mom2_max_length": 64}))
    return path


def _args(results: Path, stats: Path, **extra) -> list[str]:
    base = {
        "alg_name": "NSE", "model_name": str(TINY_LLAMA),
        "hparams_fname": str(small_hparams(stats)), "ds_name": "mcf",
        "ds_file": str(COUNTERFACT), "dataset_size_limit": "6", "num_edits": "2",
        "mom2_dataset": CORPUS, "glue_dir": str(TASKS_DIR),
        "skip_generation_tests": None, "results_dir": str(results), "stats_dir": str(stats),
        "data_dir": str(results / "no_data"),
    }
    base.update(extra)
    return [f"--{k}" if v is None else f"--{k}={v}" for k, v in base.items() if v is not False]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """run_000: curves after every batch (3 batches of 2), killed after batch 2 and resumed, with
    downstream points; run_001: the same edits without curves, unbroken."""
    results, stats = tmp_path_factory.mktemp("curves"), tmp_path_factory.mktemp("stats")
    curved = _args(results, stats, curve_every="1", downstream_eval_steps="3", downstream_n_per_task="4")
    assert evaluate(curved + ["--stop_after_batches=2"]) == 0
    run = results / "NSE" / "run_000"
    assert sorted(p.name for p in (run / "curves").iterdir()) == ["edits_000002.json", "edits_000004.json"]
    kept = json.loads((run / "curves" / "edits_000002.json").read_text())
    kept["kept"] = True  # an existing point is never rewritten
    (run / "curves" / "edits_000002.json").write_text(json.dumps(kept))
    (run / "curves" / "edits_000004.json").unlink()  # as if killed while scoring it: redone on resume
    assert evaluate(curved + ["--continue_from_run=run_000"]) == 0
    assert evaluate(_args(results, stats)) == 0
    return results, run, results / "NSE" / "run_001"


def _points(run: Path) -> dict[int, dict]:
    return {int(p.stem.split("_")[1]): json.loads(p.read_text()) for p in (run / "curves").glob("edits_*.json")}


def _case_posts(run: Path) -> dict[str, dict]:
    return {str(json.loads(p.read_text())["case_id"]): json.loads(p.read_text())["post"]
            for p in run.glob("2_edits-case_*.json")}


def _record_ids(n: int) -> list[int]:
    records = json.loads(COUNTERFACT.read_text())
    return [r["case_id"] for r in records[:n]]


def test_checkpoints_hold_the_edits_so_far(runs):
    _, run, _ = runs
    points = _points(run)
    assert sorted(points) == [2, 4, 6]
    for n, point in points.items():
        assert point["total_edits"] == n and point["batch_index"] == n // 2 and point["n_cases"] == n
        assert point["case_ids"] == _record_ids(n) and list(point["cases"]) == [str(i) for i in _record_ids(n)]
        assert point["ds_kind"] == "counterfact"
        for post in point["cases"].values():  # teacher-forced only: no generation metrics
            assert set(TF_KEYS) <= set(post) and "ngram_entropy" not in post
        means = {k: v["mean"] for k, v in point["summary"].items()}
        assert means == pytest.approx({k: v[0] for k, v in summarize_cases(list(point["cases"].values()),
                                                                             "counterfact").items()})
    assert points[2].get("kept") is True and "kept" not in points[4]  # kept, and redone on resume
    reports = json.loads((run / "edit_reports.json").read_text())
    assert [r["batch_index"] for r in reports] == [0, 1, 2]


def test_last_checkpoint_equals_the_final_case_files(runs):
    _, run, _ = runs
    last, posts = _points(run)[6]["cases"], _case_posts(run)
    assert last.keys() == posts.keys()
    for case_id, post in posts.items():
        assert {k: post[k] for k in TF_KEYS} == last[case_id]


def test_curves_do_not_change_the_results(runs):
    _, curved, plain = runs
    a, b = _case_posts(curved), _case_posts(plain)
    assert a.keys() == b.keys() and len(a) == 6 and not (plain / "curves").exists()
    assert a == b  # scoring between batches (and the resume) leaves every number as it was


def _efficacy_by_hand(posts) -> float:
    per_case = [sum(p["target_new"] < p["target_true"] for p in post["rewrite_prompts_probs"])
                / len(post["rewrite_prompts_probs"]) for post in posts]
    return 100 * sum(per_case) / len(per_case)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_plot_numbers_equal_the_case_files(runs, tmp_path):
    results, curved, plain = runs
    figures = tmp_path / "figs"
    assert summarize.main(["--dir_name=NSE", f"--results_dir={results}", f"--out={tmp_path / 's'}",
                           f"--plot={figures}"]) == 0
    for name in ("metrics_vs_edits.png", "downstream_vs_edits.png"):
        data = (figures / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    rows = _read_csv(figures / "metrics_vs_edits.csv")
    got = [(r["label"], r["source"], int(r["total_edits"]), int(r["n_cases"])) for r in rows]
    assert got == [("NSE/run_000", "curve", 2, 2), ("NSE/run_000", "curve", 4, 4), ("NSE/run_000", "final", 6, 6),
                   ("NSE/run_001", "final", 6, 6)]
    points = _points(curved)
    names = {"rewrite_success": "Efficacy", "paraphrase_success": "Generalization",
             "neighborhood_success": "Specificity", "score": "Score"}
    for row in rows:
        run = curved if row["run"] == "run_000" else plain
        posts = list(points[int(row["total_edits"])]["cases"].values()) if row["source"] == "curve" \
            else list(_case_posts(run).values())
        expected = summarize_cases(posts, "counterfact")
        for key, name in names.items():
            assert float(row[name]) == expected[key][0], (row, name)
        assert float(row["Efficacy"]) == pytest.approx(_efficacy_by_hand(posts))
    finals = [r for r in rows if r["source"] == "final"]
    assert {k: float(finals[0][k]) for k in names.values()} == pytest.approx(
        {k: float(finals[1][k]) for k in names.values()})  # curves leave the results as they were

    downstream = _read_csv(figures / "downstream_vs_edits.csv")
    files = {int(p.stem.split("_")[1]): json.loads(p.read_text()) for p in (curved / "downstream").glob("*.json")}
    assert sorted(files) == [0, 6] and {r["run"] for r in downstream} == {"run_000"}
    assert len(downstream) == sum(len(f["tasks"]) for f in files.values())
    for r in downstream:
        m = files[int(r["total_edits"])]["tasks"][r["task"]]
        assert float(r["f1"]) == m["f1"] and float(r["accuracy"]) == m["accuracy"] and int(r["n"]) == m["n"]


def test_report_is_one_flag_away(runs, tmp_path):
    results, _, _ = runs
    assert summarize.main(["--dir_name=NSE", "--runs=0", f"--results_dir={results}", f"--out={tmp_path / 's'}",
                           "--report"]) == 0
    report = (tmp_path / "s_report.md").read_text()
    assert "| NSE/run_000 |" in report and "| run | cases | Efficacy | Generalization |" in report
    assert "`curve_every` | `1`" in report and "Hyperparameters (params.json)" in report
    images = [line.split("](")[1].rstrip(")") for line in report.splitlines() if line.startswith("![")]
    assert images == ["s_figures/metrics_vs_edits.png", "s_figures/downstream_vs_edits.png"]
    assert all((tmp_path / image).is_file() for image in images)


def _count_files(run: Path) -> list[Path]:
    """The run's files that hold the running count (curve and downstream points, the completion marker)."""
    return sorted((run / "curves").glob("*.json")) + sorted((run / "downstream").glob("*.json")) \
        + [run / "run_complete.json"]


def test_the_running_count_is_total_edits(runs):
    """Edits so far are total_edits in every file; num_edits is edits per batch (config, case files)."""
    import torch

    _, run, _ = runs
    counts = {p.relative_to(run).as_posix(): json.loads(p.read_text()) for p in _count_files(run)}
    assert all("total_edits" in data and "num_edits" not in data for data in counts.values()), counts.keys()
    assert [counts[f"curves/edits_{n:06d}.json"]["total_edits"] for n in (2, 4, 6)] == [2, 4, 6]
    assert [counts[f"downstream/edits_{n:06d}.json"]["total_edits"] for n in (0, 6)] == [0, 6]
    assert counts["run_complete.json"]["total_edits"] == 6 and counts["run_complete.json"]["num_batches"] == 3
    state = torch.load(run / "editor_state.pt", weights_only=True)
    assert state["total_edits"] == 6 and "num_edits" not in state
    assert json.loads((run / "config.json").read_text())["args"]["num_edits"] == 2
    assert all(json.loads(p.read_text())["num_edits"] == 2 for p in run.glob("2_edits-case_*.json"))


def _summary_outputs(results: Path, out: Path) -> dict[str, object]:
    """summary.json (paths aside) and the CSVs summarize.py --plot writes for NSE/run_000."""
    assert summarize.main(["--dir_name=NSE", "--runs=0", f"--results_dir={results}", f"--out={out / 's'}",
                           f"--plot={out / 'f'}"]) == 0
    [run] = json.loads((out / "s.json").read_text())["runs"]
    run.pop("path")
    csvs = {name: (out / name).read_text() for name in ("s.csv", "s_downstream.csv", "f/metrics_vs_edits.csv",
                                                       "f/downstream_vs_edits.csv")}
    return {"summary": run, **csvs}


def test_a_run_folder_from_before_the_rename_summarizes_the_same(runs, tmp_path):
    """The same run with its files as the code before the rename wrote them (num_edits for edits so
    far): every number summarize.py writes is the same, and the outputs say total_edits."""
    import shutil

    results, run, _ = runs
    old = tmp_path / "old"
    shutil.copytree(run, old / "NSE" / "run_000", ignore=shutil.ignore_patterns("*.pt"))
    for path in _count_files(old / "NSE" / "run_000"):
        data = json.loads(path.read_text())
        path.write_text(json.dumps({("num_edits" if k == "total_edits" else k): v for k, v in data.items()}))
    assert '"num_edits": 6' in (old / "NSE" / "run_000" / "run_complete.json").read_text()
    new_out, old_out = _summary_outputs(results, tmp_path / "new"), _summary_outputs(old, tmp_path / "was")
    assert old_out == new_out and not old_out["summary"]["warnings"]
    assert [p["total_edits"] for p in old_out["summary"]["downstream"]] == [0, 6]
    assert old_out["f/metrics_vs_edits.csv"].splitlines()[0].split(",")[5] == "total_edits"
    assert ",final,6," in old_out["f/metrics_vs_edits.csv"]  # run_complete.json's count still places the final point


def test_plot_without_points_says_so(tmp_path, capsys):
    run = tmp_path / "NSE" / "run_000"
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"args": {"ds_name": "mcf", "num_edits": 1}}))
    (run / "pre_edit").mkdir()  # only pre-edit scores: a table, but nothing against edits
    post = {"rewrite_prompts_probs": [{"target_new": 2.0, "target_true": 1.0}],
            "paraphrase_prompts_probs": [], "neighborhood_prompts_probs": []}
    (run / "pre_edit" / "case_0.json").write_text(json.dumps(post))
    assert summarize.main(["--dir_name=NSE", f"--results_dir={tmp_path}", "--plot"]) == 2
    assert "nothing to plot" in capsys.readouterr().err


@pytest.mark.parametrize("count_key", ["total_edits", "num_edits"])  # num_edits: files written before the rename
def test_zsre_curves_hand_computed(tmp_path, count_key):
    """A hand-made zsRE run: a curve point after 1 edit, the final result after 2 (helpers.ZSRE_POSTS)."""
    from helpers import ZSRE_POSTS

    run = tmp_path / "NSE" / "run_000"
    (run / "curves").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"args": {"ds_name": "zsre", "num_edits": 1}}))
    for case_id, post in enumerate(ZSRE_POSTS):
        (run / f"1_edits-case_{case_id}.json").write_text(json.dumps({"case_id": case_id, "post": post}))
    (run / "run_complete.json").write_text(json.dumps({count_key: 2, "num_batches": 2}))
    point = {count_key: 1, "batch_index": 1, "n_cases": 1, "ds_kind": "zsre", "case_ids": [0],
             "cases": {"0": ZSRE_POSTS[0]}}
    (run / "curves" / "edits_000001.json").write_text(json.dumps(point))
    assert summarize.main(["--dir_name=NSE", f"--results_dir={tmp_path}", f"--plot={tmp_path / 'f'}"]) == 0
    rows = [{k: r[k] for k in ("source", "total_edits", "Efficacy", "Generalization", "Specificity", "Score")}
            for r in _read_csv(tmp_path / "f" / "metrics_vs_edits.csv")]
    # Case 0: rewrite 1/2, paraphrase 2/2, neighbourhood 3/4; case 1: 1, 0, 1.
    assert rows == [{"source": "curve", "total_edits": "1", "Efficacy": "50.0", "Generalization": "100.0",
                     "Specificity": "75.0", "Score": ""},
                    {"source": "final", "total_edits": "2", "Efficacy": "75.0", "Generalization": "50.0",
                     "Specificity": "87.5", "Score": ""}]
    assert not (tmp_path / "f" / "downstream_vs_edits.png").exists()  # no downstream points, no figure


def test_timings_follow_the_stream(runs):
    """timings.json: one entry per batch with the editor's phases, memory, state size and load;
    two process segments for the stopped and resumed run; the final scoring split by kind."""
    _, curved, plain = runs
    timings = json.loads((curved / "timings.json").read_text())
    assert len(timings["segments"]) == 2 and all(s["wall_seconds"] > 0 for s in timings["segments"])
    batches = timings["batches"]
    assert [b["batch_index"] for b in batches] == [1, 2, 3] and [b["total_edits"] for b in batches] == [2, 4, 6]
    for b in batches:
        assert b["edit_seconds"] > 0 and b["phases"]["values"] > 0 and b["phases"]["key reads"] > 0
        assert b["curve_seconds"] > 0 and b["peak_rss_mib"] >= b["rss_mib"] > 0 and len(b["load_average"]) == 3
    assert len({b["state_mib"] for b in batches}) == 1  # lambda C0 + Cp: one matrix per layer, whatever the edits
    assert batches[2]["downstream_seconds"] > 0 and timings["before_edits"]["downstream_seconds"] > 0
    # The last curve point holds these very weights: the final scoring reuses its teacher-forced metrics.
    assert "teacher_forced_seconds" not in timings["final"] and timings["final"]["n_cases"] == 6
    plain_final = json.loads((plain / "timings.json").read_text())["final"]
    assert plain_final["teacher_forced_seconds"] > 0 and plain_final["n_generation_cases"] == 0


def test_the_final_scoring_scores_anew_when_finish_changed_the_weights(runs, monkeypatch):
    """A curve point of other weights (as after PRUNE's final restraint) is not reused."""
    from types import SimpleNamespace

    import torch

    from experiments.run_folder import RunFolder
    from experiments.scoring_passes import CurvePass

    _, curved, _ = runs
    point = _points(curved)[6]
    curves = CurvePass(SimpleNamespace(curve_every=1), None, [], RunFolder(curved), 0)
    state = torch.load(curved / "editor_state.pt", weights_only=True)
    weights = {k: v.clone() for k, v in state["current"].items()}
    editor = SimpleNamespace(total_edits=6, weights=weights)
    known = curves.posts_of_these_weights(editor)
    assert known is not None and known({"case_id": int(point["case_ids"][0])}) == point["cases"][str(point["case_ids"][0])]
    next(iter(weights.values()))[0, 0] += 1e-3
    assert curves.posts_of_these_weights(editor) is None


class _Killed(BaseException):
    """Stands for SIGKILL: nothing in the harness catches it."""


def test_a_run_killed_mid_batch_resumes_to_the_unbroken_run(runs, tmp_path, monkeypatch):
    """Killed inside its second batch's edit, a run resumes from the state saved after the first and
    ends with the weights, keys, case files and per-batch timings of the unbroken run (run_001)."""
    import torch

    from nse.editor import NSEEditor

    _, _, plain = runs
    (tmp_path / "stats").mkdir()
    args = _args(tmp_path, tmp_path / "stats")  # the same C0 again (same corpus and weights)
    real_update = NSEEditor._update

    def dies_in_batch_2(self, requests, z, report):
        if self.num_batches == 1:
            raise _Killed
        return real_update(self, requests, z, report)

    monkeypatch.setattr(NSEEditor, "_update", dies_in_batch_2)
    with pytest.raises(_Killed):
        evaluate(args)
    run = tmp_path / "NSE" / "run_000"
    assert [r["batch_index"] for r in json.loads((run / "edit_reports.json").read_text())] == [0]
    monkeypatch.setattr(NSEEditor, "_update", real_update)
    assert evaluate(args + ["--continue_from_run=run_000"]) == 0
    mine, unbroken = (torch.load(r / "editor_state.pt", weights_only=True) for r in (run, plain))
    for part in ("current", "regulariser"):
        for layer in unbroken[part]:
            assert torch.equal(mine[part][layer], unbroken[part][layer]), (part, layer)
    assert _case_posts(run) == _case_posts(plain)
    timings = json.loads((run / "timings.json").read_text())
    assert len(timings["segments"]) == 2 and [b["batch_index"] for b in timings["batches"]] == [1, 2, 3]
