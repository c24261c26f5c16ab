"""experiments/run_folder.py: the names a run folder's writers use are the ones its readers find."""
from __future__ import annotations

from experiments.run_folder import RunFolder, run_name, run_names


def test_the_files_a_run_writes_are_the_ones_it_lists(tmp_path):
    folder = RunFolder(tmp_path / "NSE" / "run_000")
    folder.path.mkdir(parents=True)
    for case_id in (3, 12):
        folder.case_file(4, case_id).write_text("{}")
    folder.pre_edit_dir.mkdir()
    folder.pre_edit_file(12).write_text("{}")
    for make_dir, path_of in ((folder.downstream_dir, folder.downstream_file), (folder.curves_dir, folder.curve_file)):
        make_dir.mkdir()
        for edits in (8, 0):
            path_of(edits).write_text("{}")
        (make_dir / "notes.txt").write_text("")  # not a point
    assert folder.alg_name == "NSE" and folder.name == "run_000"
    assert sorted((f.num_edits, f.case_id) for f in folder.case_files()) == [(4, "12"), (4, "3")]
    assert folder.case_files(num_edits=5) == []
    assert folder.pre_edit_files() == {"12": folder.pre_edit_file(12)}
    assert [p.name for p in folder.downstream_files()] == ["edits_000000.json", "edits_000008.json"]
    assert [p.name for p in folder.curve_files()] == ["edits_000000.json", "edits_000008.json"]


def test_json_files_round_trip_and_a_redone_batch_replaces_its_report(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.read_config() is None and folder.read_params() is None and folder.edit_reports() == []
    folder.write_config({"args": {"num_edits": 4}})
    folder.write_params({"layers": [1]})
    assert folder.holds_no_results()  # config and params alone: nothing worth resuming
    folder.config_file.write_text("\ufeff" + folder.config_file.read_text())  # a byte-order mark is allowed
    assert folder.read_config() == {"args": {"num_edits": 4}} and folder.read_params() == {"layers": [1]}
    for index in (0, 1, 2, 1):
        folder.append_report({"batch_index": index, "seconds": float(index)})
    assert [r["batch_index"] for r in folder.edit_reports()] == [0, 1]
    assert not folder.holds_no_results() and not folder.is_complete
    folder.write_complete(num_batches=2, total_edits=8)
    done = folder.read_complete()
    assert folder.is_complete and done["num_batches"] == 2 and done["total_edits"] == 8


def test_run_names(tmp_path):
    for name in ("run_000", "run_012", "run_1", "notes", "run_x"):
        (tmp_path / name).mkdir()
    (tmp_path / "run_003").write_text("")  # a file, not a run folder
    assert run_name(7) == "run_007" and run_names(tmp_path) == ["run_000", "run_012"]
