"""summarize.py on damaged run folders and careless arguments: one line each, never a traceback.

A damaged file among good ones (case, pre-edit, downstream, curve point, run_complete.json) is left
out with a ``warning:`` line naming it, and the counts say what was summarized; a damaged
config.json or an output that cannot be written is refused (``error:``, exit code 2). Hand-made run
folders, no model: the whole file takes a few seconds.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ZSRE_POSTS
from test_summarize import CF_POSTS, CF_PRE, make_run

import summarize

ROOT = Path(__file__).resolve().parents[1]
BOM = b"\xef\xbb\xbf"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = summarize.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def three_case_run(results: Path, **kwargs) -> Path:
    """NSE/run_000 with case files 0, 1, 2 (CF_POSTS twice over) and a final point after 3 edits."""
    run = make_run(results, "NSE", "run_000", [CF_POSTS[0], CF_POSTS[1], CF_POSTS[0]], num_edits=1, **kwargs)
    (run / "run_complete.json").write_text(json.dumps({"total_edits": 3, "num_batches": 3}))
    return run


def summary_json(results: Path) -> dict:
    return json.loads((results / "NSE" / "summary.json").read_text())


CASE = {"case_id": 1, "post": CF_POSTS[1]}
BAD_CASE_FILES = {  # what the file holds -> words the warning must carry
    "json_list": (b"[1, 2]", "is a JSON list, not a case file"),
    "post_not_object": (json.dumps({"case_id": 1, "post": "0.5"}).encode(), "'post' that is a JSON string"),
    "no_post": (json.dumps({"case_id": 1}).encode(), "no 'post' metrics"),
    "missing_metric_keys": (json.dumps({"post": {"rewrite_prompts_probs": []}}).encode(),
                            "it lacks 'paraphrase_prompts_probs', 'neighborhood_prompts_probs'"),
    "wrong_value_types": (json.dumps({"post": {**CF_POSTS[1], "paraphrase_prompts_probs": "high"}}).encode(),
                          "its 'paraphrase_prompts_probs' is a JSON string, not a list"),
    "wrong_element_type": (json.dumps({"post": {**CF_POSTS[1], "rewrite_prompts_probs": [0.5]}}).encode(),
                           "its 'rewrite_prompts_probs'[0] is 0.5, not a {target_new, target_true} pair"),
    "wrong_generation_type": (json.dumps({"post": {**CF_POSTS[1], "ngram_entropy": "6"}}).encode(),
                              "its 'ngram_entropy' is a JSON string, not a number"),
    "cut_json": (json.dumps(CASE).encode()[:30], "is not valid JSON"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\x00", "is not UTF-8 text (byte 0x89 at offset 0"),
    "latin1": (json.dumps({**CASE, "note": "café"}, ensure_ascii=False).encode("latin-1"),
               "is not UTF-8 text (byte 0xe9"),
}


@pytest.mark.parametrize("kind", BAD_CASE_FILES)
def test_a_bad_case_file_is_skipped_and_named(tmp_path, capsys, kind):
    data, words = BAD_CASE_FILES[kind]
    bad = three_case_run(tmp_path) / "1_edits-case_1.json"
    bad.write_bytes(data)
    code, out, err = run_cli(capsys, "--dir_name=NSE", f"--results_dir={tmp_path}")
    assert code == 0
    (line,) = err.splitlines()  # one line, naming the file, what is wrong and the fix
    assert line.startswith(f"warning: {bad} ") and words in line and "skipped" in line and "move it out" in line
    assert "cases=2," in out and "skipped 1 of 3 case files" in out  # the count is what was summarized
    run = summary_json(tmp_path)["runs"][0]
    assert run["n_cases"] == 2 and run["warnings"] == [line.removeprefix("warning: ")]
    assert run["paper"]["post"]["Efficacy"]["mean"] == pytest.approx(100.0)  # the good cases 0 and 2


def test_a_byte_order_mark_is_read(tmp_path, capsys):
    run = three_case_run(tmp_path, downstream={0: {"sst2": {"accuracy": 0.5, "f1": 0.5, "mcc": 0.0, "n": 4}}})
    for path in [run / "config.json", run / "1_edits-case_1.json", run / "downstream" / "edits_000000.json"]:
        path.write_bytes(BOM + path.read_bytes())
    code, out, err = run_cli(capsys, "--dir_name=NSE", f"--results_dir={tmp_path}")
    assert code == 0 and err == ""
    assert "model=tiny-llama" in out and "cases=3," in out and "Downstream NSE/run_000" in out


def test_every_case_file_damaged_is_refused(tmp_path, capsys):
    run = three_case_run(tmp_path)
    for case_id in range(3):
        (run / f"1_edits-case_{case_id}.json").write_bytes(b"\xff\xfe")
    code, out, err = run_cli(capsys, "--dir_name=NSE", f"--results_dir={tmp_path}")
    assert code == 2 and out == ""
    assert err.startswith(f"error: {run}: none of its 3 case files can be summarized") and "not UTF-8" in err


BAD_CONFIGS = {
    "json_list": (b'[{"ds_name": "mcf"}]', "is a JSON list, not the object experiments.evaluate writes"),
    "number": (b"3", "is a JSON number, not the object"),
    "cut": (b'{"args": {"ds_name": "mc', "is not valid JSON"),
    "binary": (b"\x00\x9f\x92\x96", "is not UTF-8 text"),
    "latin1": ('{"args": {"model_name": "modèle"}}'.encode("latin-1"), "is not UTF-8 text"),
    "args_not_object": (b'{"args": ["mcf"]}', "its 'args' is a JSON list, not an object"),
    "ds_name_wrong_type": (b'{"args": {"ds_name": ["mcf"]}}', "its 'ds_name' is a JSON list, not a string"),
    "num_edits_wrong_type": (b'{"args": {"num_edits": "100"}}', "its 'num_edits' is a JSON string, not a whole number"),
}


@pytest.mark.parametrize("kind", BAD_CONFIGS)
def test_a_bad_config_is_refused(tmp_path, capsys, kind):
    data, words = BAD_CONFIGS[kind]
    config = three_case_run(tmp_path) / "config.json"
    config.write_bytes(data)
    code, out, err = run_cli(capsys, "--dir_name=NSE", f"--results_dir={tmp_path}")
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"error: {config} ") and words in line and "restore it from a copy" in line


def test_bad_pre_edit_scores_are_skipped(tmp_path, capsys):
    """Both places pre-edit scores live: the case files' 'pre', and the run's pre_edit/ folder."""
    three_case_run(tmp_path / "a", pre=[CF_PRE, {"rewrite_prompts_probs": 7}, CF_PRE])
    code, out, err = run_cli(capsys, "--dir_name=NSE", f"--results_dir={tmp_path / 'a'}")
    assert code == 0 and "'pre' has the wrong shape" in err and "1_edits-case_1.json" in err
    assert "only 2 of 3 cases carry pre-edit scores" in out
    assert summary_json(tmp_path / "a")["runs"][0]["n_pre_cases"] == 2

    run = three_case_run(tmp_path / "b")
    (run / "pre_edit").mkdir()
    for case_id, data in enumerate([json.dumps(CF_PRE).encode(), b"[]", b"\xff"]):
        (run / "pre_edit" / f"case_{case_id}.json").write_bytes(data)
    code, out, err = run_cli(capsys, "--dir_name=NSE", f"--results_dir={tmp_path / 'b'}")
    lines = err.splitlines()
    assert code == 0 and len(lines) == 2
    assert "pre_edit/case_1.json is not pre-edit scores of the right shape: it is a JSON list" in lines[0]
    assert "pre_edit/case_2.json is not UTF-8 text" in lines[1]
    assert summary_json(tmp_path / "b")["runs"][0]["n_pre_cases"] == 1 and "NSE/run_000 pre-edited" in out


def test_a_bad_downstream_point_is_skipped(tmp_path, capsys):
    tasks = {"sst2": {"accuracy": 0.5, "f1": 0.5, "mcc": 0.0, "n": 4}}
    run = three_case_run(tmp_path, downstream={0: tasks})
    bad = {1: (b"\xff\xfe", "is not UTF-8 text"),
           2: (json.dumps({"total_edits": 2, "tasks": {"sst2": 0.5}}).encode(), "task 'sst2' is a JSON number, not {"),
           3: (json.dumps({"total_edits": "3", "tasks": tasks}).encode(), "total_edits and batch_index must be whole"),
           4: (json.dumps({"total_edits": 4, "tasks": {"sst2": {"f1": "0.5"}}}).encode(),
               "task 'sst2' has a JSON string for 'f1', not a number"),
           5: (b'{"total_edits": 5, "tasks": {"sst2": {"mcc": NaN}}}', "it holds NaN or Infinity"),
           6: (json.dumps({"batch_index": 6, "tasks": tasks}).encode(), "not a downstream result ({total_edits")}
    for n, (data, _) in bad.items():
        (run / "downstream" / f"edits_{n:06d}.json").write_bytes(data)
    code, out, err = run_cli(capsys, "--dir_name=NSE", f"--results_dir={tmp_path}")
    lines = err.splitlines()
    assert code == 0 and len(lines) == len(bad)
    for line, (n, (_, words)) in zip(lines, bad.items()):
        assert f"edits_{n:06d}.json" in line and words in line and "that evaluation point is left out" in line
    assert [p["total_edits"] for p in summary_json(tmp_path)["runs"][0]["downstream"]] == [0]


def _curve_point(total_edits: int, cases: dict, ds_kind: str = "counterfact") -> bytes:
    return json.dumps({"total_edits": total_edits, "batch_index": total_edits, "n_cases": len(cases),
                       "ds_kind": ds_kind, "cases": cases}).encode()


def test_a_bad_curve_point_is_left_out_of_the_figure(tmp_path, capsys):
    run = three_case_run(tmp_path)
    (run / "curves").mkdir()
    files = {1: _curve_point(1, {"0": CF_POSTS[0]}), 2: b"\x89PNG\x00", 4: _curve_point(4, ["0"]),
             5: _curve_point(5, {"0": {"rewrite_prompts_probs": []}}), 6: _curve_point(6, {"0": ZSRE_POSTS[0]}, "zsre"),
             7: b'{"total_edits": 7'}
    for n, data in files.items():
        (run / "curves" / f"edits_{n:06d}.json").write_bytes(data)
    code, out, err = run_cli(capsys, "--dir_name=NSE", f"--results_dir={tmp_path}", f"--plot={tmp_path / 'f'}")
    lines = [line for line in err.splitlines() if line.startswith("warning:")]
    assert code == 0 and len(lines) == 5 and all("skipped: the figure lacks that point" in x for x in lines)
    expected = {2: "is not UTF-8 text", 4: "cases an object", 5: "case 0 has the wrong shape: it lacks",
                6: "is a zsre point, the run is counterfact", 7: "is not valid JSON"}
    for n, words in expected.items():
        assert f"edits_{n:06d}.json" in err and words in err, words
    with open(tmp_path / "f" / "metrics_vs_edits.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["source"], r["total_edits"]) for r in rows] == [("curve", "1"), ("final", "3")]


def test_a_damaged_run_complete_json_warns_and_drops_the_final_point(tmp_path, capsys):
    run = three_case_run(tmp_path)
    (run / "run_complete.json").write_bytes(b"[3]")
    (run / "curves").mkdir()
    (run / "curves" / "edits_000001.json").write_bytes(_curve_point(1, {"0": CF_POSTS[0]}))
    code, out, err = run_cli(capsys, "--dir_name=NSE", f"--results_dir={tmp_path}", f"--plot={tmp_path / 'f'}")
    assert code == 0 and "NSE/run_000  [complete]" in out
    assert f"warning: {run / 'run_complete.json'} is a JSON list" in err and "the figures lack its final point" in err
    with open(tmp_path / "f" / "metrics_vs_edits.csv") as f:
        assert [r["source"] for r in csv.DictReader(f)] == ["curve"]


def test_an_unwritable_out_is_refused_before_any_output(tmp_path, capsys, monkeypatch):
    three_case_run(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    args = ["--dir_name=NSE", f"--results_dir={tmp_path}"]
    code, out, err = run_cli(capsys, *args, f"--out={blocker / 'sub' / 'summary'}")
    assert code == 2 and out == ""  # refused before the report: no output that reads like success
    assert err == f"error: cannot write {blocker}/sub/summary.json: {blocker} is a file, not a folder; " \
                  "pass --out=<a writable folder>/<prefix>\n"

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access  # the tests may run as root, whom no permission bit stops: fake the refusal
    monkeypatch.setattr(summarize.os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    code, out, err = run_cli(capsys, *args, f"--out={locked / 'summary'}")
    assert code == 2 and f"{locked} is not writable (no write permission)" in err and out == ""

    code, out, err = run_cli(capsys, *args, f"--out={tmp_path}")
    assert code == 2 and f"--out={tmp_path} is a folder" in err and f"--out={tmp_path / 'summary'}" in err


def test_a_failed_write_is_one_line(tmp_path, capsys, monkeypatch):
    """What no check foresees (a disk filling, permissions changed meanwhile) still names the file."""
    import reporting.outputs as outputs

    three_case_run(tmp_path)

    def refuse(path, text):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(outputs, "write_text_atomic", refuse)
    code, out, err = run_cli(capsys, "--dir_name=NSE", f"--results_dir={tmp_path}")
    assert code == 2 and err == f"error: cannot write {tmp_path / 'NSE' / 'summary.json'} (Permission denied); " \
                                "pass --out=<a writable folder>/<prefix> (and --plot=<a writable folder>)\n"


def test_plot_pointing_at_a_file_is_refused(tmp_path, capsys):
    three_case_run(tmp_path)
    png = tmp_path / "metrics.png"
    png.write_bytes(b"\x89PNG")
    code, out, err = run_cli(capsys, "--dir_name=NSE", f"--results_dir={tmp_path}", f"--plot={png}")
    assert code == 2 and out == "" and not (tmp_path / "NSE" / "summary.json").exists()
    assert err == f"error: {png} is a file, but --plot takes the folder to draw the figures in: pass " \
                  f"--plot={tmp_path / 'metrics'}_figures (or --plot alone for summary_figures/)\n"


def test_careless_run_lists_and_results_folders(tmp_path, capsys):
    three_case_run(tmp_path)
    code, _, err = run_cli(capsys, "--dir_name=NSE", f"--results_dir={tmp_path}", "--runs=,")
    assert code == 2 and "--runs names no run" in err
    code, _, err = run_cli(capsys, "--dir_name=NSE", f"--results_dir={tmp_path / 'NSE' / 'run_000' / 'config.json'}")
    assert code == 2 and "is a file, not a folder (pass --results_dir=<folder>)" in err


def test_a_figure_without_curve_points_says_how_to_get_them(tmp_path, capsys):
    from reporting.plots import _metrics_title

    three_case_run(tmp_path)
    code, out, err = run_cli(capsys, "--dir_name=NSE", f"--results_dir={tmp_path}", f"--plot={tmp_path / 'f'}",
                             "--report")
    assert code == 0
    assert "note: NSE/run_000: metrics_vs_edits: only the final point (the run has no curves/ points); " \
           "run experiments.evaluate with --curve_every=N to add a point every N batches\n" in err
    assert "note: NSE/run_000: metrics_vs_edits: no unedited-model line (the run has no pre-edit scores" in err
    assert len(err.splitlines()) == 2
    assert "--curve_every=N" in (tmp_path / "NSE" / "summary_report.md").read_text()  # the report's notes
    header = ["label", "source", "total_edits"]
    assert "--curve_every=N" in _metrics_title([["x", "final", 3]], header, "counterfact")  # the figure's title
    assert "--curve_every" not in _metrics_title([["x", "curve", 1], ["x", "final", 3]], header, "counterfact")


def test_counterfact_and_zsre_get_separate_figures(tmp_path, capsys):
    three_case_run(tmp_path)
    zsre = make_run(tmp_path, "MEMIT", "run_000", ZSRE_POSTS, ds_name="zsre", num_edits=1)
    (zsre / "run_complete.json").write_text(json.dumps({"total_edits": 2, "num_batches": 2}))
    code, out, err = run_cli(capsys, "--dir_name=NSE,MEMIT", f"--results_dir={tmp_path}", f"--plot={tmp_path / 'f'}")
    assert code == 0
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == [
        "metrics_vs_edits_counterfact.csv", "metrics_vs_edits_counterfact.png",
        "metrics_vs_edits_zsre.csv", "metrics_vs_edits_zsre.png"]
    for kind, label in (("counterfact", "NSE/run_000 (mcf)"), ("zsre", "MEMIT/run_000 (zsre)")):
        with open(tmp_path / "f" / f"metrics_vs_edits_{kind}.csv") as f:
            assert {(r["label"], r["ds_kind"]) for r in csv.DictReader(f)} == {(label, kind)}


def test_no_traceback_from_the_command_line(tmp_path):
    """The script itself, as a user runs it: a damaged config is one line on stderr, exit code 2."""
    config = three_case_run(tmp_path) / "config.json"
    config.write_bytes(b"\xff\x00binary")
    done = subprocess.run([sys.executable, "summarize.py", "--dir_name=NSE", f"--results_dir={tmp_path}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith(f"error: {config} is not UTF-8 text") and done.stderr.count("\n") == 1


@pytest.mark.parametrize("dir_name", ["../NSE", "NSE/run_000", "/abs/NSE", ".."])
def test_a_dir_name_that_is_a_path_is_refused(tmp_path, capsys, dir_name):
    results = tmp_path / "results"
    three_case_run(results)
    code, out, err = run_cli(capsys, f"--dir_name={dir_name}", f"--results_dir={results}")
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert "is a path" in line and "--results_dir" in line
