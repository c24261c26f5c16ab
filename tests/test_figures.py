"""summarize.py --plot's metrics figure: standard errors, the unedited model on the same cases, panels
that wrap and y-axes fitted to the data. Hand-made run folders, no model: a few seconds."""
from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
from helpers import cf_post
from test_summarize import CF_POSTS, CF_PRE, LOSE, WIN, make_run

import summarize
from reporting.curve_stats import standard_errors
from experiments.metrics.summary import harmonic_mean, summarize_cases
from reporting.plots import SE, _y_range, metrics_figure, panels

# Unedited: case 2 already prefers the new object, so the point after 1 edit (case 0 alone) and the
# final point (cases 0-2) have different unedited scores: Efficacy 0 there, 33.3 ± 33.3 here.
PRE_2 = cf_post([WIN], [WIN], [LOSE])


def _run(results: Path, run: str = "run_000", pre: list[dict] | None = None) -> Path:
    """NSE/<run>: cases 0, 1, 2 (CF_POSTS[0], [1], [0]), a curve point after 1 edit (case 0), the
    final point after 3."""
    run_dir = make_run(results, "NSE", run, [CF_POSTS[0], CF_POSTS[1], CF_POSTS[0]], num_edits=1, pre=pre)
    (run_dir / "run_complete.json").write_text(json.dumps({"total_edits": 3, "num_batches": 3}))
    (run_dir / "curves").mkdir()
    point = {"total_edits": 1, "batch_index": 1, "n_cases": 1, "ds_kind": "counterfact", "cases": {"0": CF_POSTS[0]}}
    (run_dir / "curves" / "edits_000001.json").write_text(json.dumps(point))
    return run_dir


def _baseline(path: Path, cases: dict[str, dict]) -> Path:
    path.write_text(json.dumps({"seconds": 1.0, "points": [], "cases": cases}))
    return path


def _plot(capsys, results: Path, *extra: str) -> tuple[list[dict[str, str]], str]:
    code = summarize.main(["--dir_name=NSE", f"--results_dir={results}", f"--plot={results / 'f'}", *extra])
    err = capsys.readouterr().err
    assert code == 0, err
    with open(results / "f" / "metrics_vs_edits.csv", newline="") as f:
        return list(csv.DictReader(f)), err


def test_standard_errors_by_hand():
    """Generalization per case 1/2, 0, 1/2: sample std sqrt(1/12), over sqrt(3); Specificity 0, 1, 0."""
    se = standard_errors([CF_POSTS[0], CF_POSTS[1], CF_POSTS[0]], "counterfact")
    assert se["rewrite_success"] == 0.0  # every case succeeded: no spread
    assert se["paraphrase_success"] == pytest.approx(100 * math.sqrt(1 / 12) / math.sqrt(3))
    assert se["neighborhood_success"] == pytest.approx(100 * math.sqrt(1 / 3) / math.sqrt(3))
    assert math.isnan(standard_errors([CF_POSTS[0]], "counterfact")["paraphrase_success"])  # one case: unknown


def _rates(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.binomial(1, p, n) for p in (0.9, 0.7, 0.6)], axis=1).astype(float)


def _posts(rates: np.ndarray) -> list[dict]:
    """One case per row: one prompt per group, won (rewrite, paraphrase) or kept (neighbour) per the row."""
    return [cf_post([WIN if r else LOSE], [WIN if p else LOSE], [LOSE if s else WIN]) for r, p, s in rates]


def test_the_score_error_is_the_delta_methods():
    """Against a numerical derivative of the harmonic mean, and against a bootstrap over cases."""
    rates = _rates(400, seed=1)
    got = standard_errors(_posts(rates), "counterfact")["score"]
    means = rates.mean(axis=0) * 100
    h = 1e-4
    gradient = [(harmonic_mean(list(means + h * e)) - harmonic_mean(list(means - h * e))) / (2 * h) for e in np.eye(3)]
    influence = (rates * 100 - means) @ np.array(gradient)
    assert got == pytest.approx(influence.std(ddof=1) / math.sqrt(len(rates)), rel=1e-4)
    rng = random.Random(0)
    boot = [harmonic_mean(list(rates[[rng.randrange(400) for _ in range(400)]].mean(axis=0) * 100))
            for _ in range(300)]
    assert got == pytest.approx(float(np.std(boot)), rel=0.2)


def test_the_csv_holds_each_points_standard_error(tmp_path, capsys):
    _run(tmp_path)
    rows, _ = _plot(capsys, tmp_path)
    final = next(r for r in rows if r["source"] == "final")
    posts = [CF_POSTS[0], CF_POSTS[1], CF_POSTS[0]]
    se = standard_errors(posts, "counterfact")
    assert float(final["Generalization SE"]) == pytest.approx(se["paraphrase_success"])
    assert float(final["Score SE"]) == pytest.approx(se["score"])
    assert float(final["Generalization"]) == summarize_cases(posts, "counterfact")["paraphrase_success"][0]
    curve = next(r for r in rows if r["source"] == "curve")
    assert curve["Generalization SE"] == ""  # one case: no standard error, no band


def test_the_unedited_model_is_scored_on_each_points_cases(tmp_path, capsys):
    _run(tmp_path)
    baseline = _baseline(tmp_path / "pre.json", {"0": CF_PRE, "1": CF_PRE, "2": PRE_2, "9": PRE_2})
    rows, _ = _plot(capsys, tmp_path, f"--baseline={baseline}")
    unedited = [r for r in rows if r["source"] == "unedited"]
    assert [(r["label"], r["run"], r["total_edits"], r["n_cases"]) for r in unedited] == [
        ("unedited model", str(baseline), "1", "1"), ("unedited model", str(baseline), "3", "3")]
    assert float(unedited[0]["Efficacy"]) == 0.0 and float(unedited[0]["Specificity"]) == 100.0
    assert float(unedited[1]["Efficacy"]) == pytest.approx(100 / 3)  # case 9 is not one of the run's cases
    assert float(unedited[1]["Efficacy SE"]) == pytest.approx(100 * math.sqrt(1 / 3) / math.sqrt(3))


def test_an_unedited_point_missing_cases_is_left_out_and_said(tmp_path, capsys):
    _run(tmp_path)
    baseline = _baseline(tmp_path / "pre.json", {"0": CF_PRE, "1": CF_PRE})
    rows, err = _plot(capsys, tmp_path, f"--baseline={baseline}")
    assert [r["total_edits"] for r in rows if r["source"] == "unedited"] == ["1"]
    assert "no unedited-model point at 3 edits: the unedited model's scores lack 1 of its 3 cases (e.g. case 2)" in err


def test_without_baseline_the_runs_own_pre_edit_scores_are_drawn(tmp_path, capsys):
    _run(tmp_path, pre=[CF_PRE, CF_PRE, PRE_2])
    rows, err = _plot(capsys, tmp_path)
    unedited = [(r["label"], r["run"], r["total_edits"], float(r["Efficacy"]))
                for r in rows if r["source"] == "unedited"]
    assert unedited == [("unedited model", "NSE/run_000: pre-edit scores", "1", 0.0),
                        ("unedited model", "NSE/run_000: pre-edit scores", "3", pytest.approx(100 / 3))]
    assert "no unedited-model line" not in err


def test_runs_with_other_unedited_scores_get_a_line_each(tmp_path, capsys):
    _run(tmp_path, "run_000", pre=[CF_PRE, CF_PRE, PRE_2])
    _run(tmp_path, "run_001", pre=[CF_PRE, CF_PRE, PRE_2])
    rows, _ = _plot(capsys, tmp_path)
    assert [r["label"] for r in rows if r["source"] == "unedited"] == ["unedited model"] * 2  # the same: one line
    _run(tmp_path, "run_002", pre=[PRE_2, PRE_2, PRE_2])  # another model's scores on the same cases
    rows, _ = _plot(capsys, tmp_path)
    labels = [r["label"] for r in rows if r["source"] == "unedited"]
    assert labels == [f"unedited model (NSE/run_00{i})" for i in range(3) for _ in range(2)]


@pytest.mark.parametrize("content, words", [("{not json", "is not valid JSON"),
                                            (json.dumps({"points": []}), "holds no per-case metrics")])
def test_a_bad_baseline_is_refused_before_any_output(tmp_path, capsys, content, words):
    _run(tmp_path)
    (tmp_path / "pre.json").write_text(content)
    code = summarize.main(["--dir_name=NSE", f"--results_dir={tmp_path}", f"--baseline={tmp_path / 'pre.json'}"])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and words in err and "Traceback" not in err
    assert not (tmp_path / "NSE" / "summary.json").exists()


# --- the drawing --------------------------------------------------------------------------------

def _table(edited: dict[str, list[float]], unedited: list[float], se: float = 0.5) -> tuple[list[str], list[list]]:
    """Rows as metrics_table writes them: two points per run (500 and 1000 edits), every panel the
    same numbers, and the unedited model's two points."""
    names = [c for name in panels() for c in (name, f"{name}{SE}")]
    header = ["label", "alg_name", "run", "ds_kind", "source", "total_edits", "batch_index", "n_cases", *names]
    rows = []
    for label, values in [*edited.items(), ("unedited model", unedited)]:
        source = ["curve", "final"] if label != "unedited model" else ["unedited"] * 2
        for x, v, src in zip((500, 1000), values, source):
            per_panel = [c for name in panels() for c in ((v, se) if name not in ("Specificity",) else (v - 30, se))]
            rows.append([label, "", "", "counterfact", src, x, x // 100, x, *per_panel])
    return header, rows


def test_panels_wrap_at_four_and_each_axis_fits_its_lines():
    header, rows = _table({"A/run_000": [99.0, 96.0], "B/run_000": [98.0, 93.0]}, [33.4, 33.6])
    fig = metrics_figure(header, rows, {"A/run_000": 0, "B/run_000": 1})
    axes = [ax for ax in fig.axes if ax.get_visible()]
    titles = [ax.get_title().split("\n")[0] for ax in axes]
    assert titles == ["Efficacy", "Generalization", "Specificity", "Score", "Efficacy EM", "Generalization EM",
                      "Specificity EM"]
    assert {ax.get_subplotspec().get_geometry()[:2] for ax in axes} == {(2, 4)}  # seven panels: two rows of four
    efficacy = axes[0]
    low, high = efficacy.get_ylim()
    assert 90 < low < 92.5 and 99.5 < high < 101  # 92.5-99.5 with the bands: the 3-point gap shows
    assert "unedited model: 33.4-33.6, below this axis" in efficacy.get_title()
    specificity = axes[2]  # 30 less than the others: edited 63-69, unedited 3.4-3.6, off the axis too
    assert "below this axis" in specificity.get_title()


def test_a_near_unedited_line_is_drawn_dashed_inside_the_axis_with_bands():
    header, rows = _table({"A/run_000": [70.0, 66.0]}, [68.0, 68.8])
    fig = metrics_figure(header, rows, {"A/run_000": 0})
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert low < 65.5 and 69.3 < high < 72 and "\n" not in ax.get_title()
    dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
    assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [68.0, 68.8]
    run_line = next(line for line in ax.lines if line.get_label() == "A/run_000")
    assert list(run_line.get_ydata()) == [70.0, 66.0]  # the CSV's numbers, drawn as they are
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() == pytest.approx(65.5) and band.max() == pytest.approx(70.5)  # ± 1 SE
    assert any(t.get_text() == "unedited model" for t in fig.legends[0].get_texts())


def test_the_axis_range_rules():
    (low, high), note = _y_range([(60.0, 60.5)], [], [])
    assert high - low == pytest.approx(2.0 * 1.16)  # a flat line: at least MIN_SPAN, padded
    (low, high), note = _y_range([(90.0, 99.0)], [(30.0, 35.0)], [32.0, 33.0])
    assert low > 89 and note == "unedited model: 32.0-33.0, below this axis"
    (low, high), note = _y_range([(60.0, 64.0)], [(66.0, 69.0)], [67.0, 68.0])
    assert low < 60 and high > 69 and note is None
    (low, high), _ = _y_range([(98.0, 100.0)], [], [])
    assert high <= 101.0  # never past what a rate can be


def test_the_report_says_what_the_bands_and_the_dashed_line_are(tmp_path, capsys):
    _run(tmp_path)
    baseline = _baseline(tmp_path / "pre.json", {"0": CF_PRE, "1": CF_PRE, "2": PRE_2})
    assert summarize.main(["--dir_name=NSE", f"--results_dir={tmp_path}", f"--baseline={baseline}", "--report"]) == 0
    report = (tmp_path / "NSE" / "summary_report.md").read_text()
    figure = report.split("### metrics vs edits")[1]
    image = figure.index("![metrics vs edits](summary_figures/metrics_vs_edits.png)")
    assert image < figure.index("Bands: ± 1 standard")
    assert "Dashed: the unedited model on the same cases." in figure  # --baseline alone implies the figures
