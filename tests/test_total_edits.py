"""The running count is ``total_edits``; files and states written before the rename (``num_edits``) still read."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from experiments.resume import continued_from
from experiments.saved_model import EDIT_INFO, _saved_by
from util.total_edits import TOTAL_EDITS, total_edits_key, total_edits_of, with_total_edits


def test_the_new_key_wins_and_the_old_one_is_read():
    assert total_edits_of({"total_edits": 4, "batch_index": 2}) == 4
    assert total_edits_of({"num_edits": 4, "batch_index": 2}) == 4  # a file from before the rename
    assert total_edits_of({"total_edits": 6, "num_edits": 4}) == 6
    assert total_edits_of({"batch_index": 2}) is None and total_edits_key({}) is None


def test_an_old_point_gets_the_new_name_in_place():
    old = {"num_edits": 4, "batch_index": 2, "tasks": {}}
    assert list(with_total_edits(old).items()) == [(TOTAL_EDITS, 4), ("batch_index", 2), ("tasks", {})]
    assert old == {"num_edits": 4, "batch_index": 2, "tasks": {}}  # the caller's dict is left as it was
    new = {"total_edits": 4, "tasks": {}}
    assert with_total_edits(new) is new


@pytest.mark.parametrize("count_key", ["total_edits", "num_edits"])  # num_edits: states saved before the rename
def test_continued_from_reads_the_count_of_a_saved_state(tmp_path, count_key):
    path = tmp_path / "editor_state.pt"
    torch.save({"num_batches": 3, count_key: 6, "context_templates": [["{}"]]}, path)
    info, templates = continued_from(SimpleNamespace(model_name="unused", load_editor_state=str(path)))
    assert info == {"editor_state": str(path.resolve()), "num_batches": 3, "total_edits": 6}
    assert templates == [["{}"]]


@pytest.mark.parametrize("count_key", ["total_edits", "num_edits"])  # num_edits: folders saved before the rename
def test_a_saved_model_is_known_by_its_run_and_count(tmp_path, count_key):
    run_dir = tmp_path / "NSE" / "run_000"
    (tmp_path / "saved").mkdir()
    (tmp_path / "saved" / EDIT_INFO).write_text(json.dumps({"run": str(run_dir), count_key: 4}))
    assert _saved_by(str(tmp_path / "saved"), run_dir, 4)  # a resumed run does not save it again
    assert not _saved_by(str(tmp_path / "saved"), run_dir, 6)
