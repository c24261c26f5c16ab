"""NAS norm anchoring (util/norm_anchor.py): the rule on small matrices, the anchor as a trimmed
mean, and an editor whose every value vector leaves with the anchor's norm."""
from __future__ import annotations

import random

import pytest
import torch
from helpers import CORPUS, COUNTERFACT, REQUESTS, tiny_model

from memit import MEMITEditor, MEMITHyperParams
from experiments.anchor_pool import editor_inputs, read_anchor_pool
from util.norm_anchor import anchor_outcome, anchor_values, plain_outputs, trimmed_mean, value_norms


def test_the_rule_rescales_to_the_anchor_or_drops_the_edit():
    h0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v0 = torch.tensor([[0.5, 0.0], [0.0, 0.5]])
    z = torch.tensor([[1.0, 1.5], [0.0, 9.0]])  # v* = v0 + z - h0 = (0.5, 1.5) and (0, 8.5)
    out = anchor_values(z, h0, v0, anchor=2.0)
    first = torch.tensor([0.5, 1.5]) * (2.0 / torch.tensor([0.5, 1.5]).norm())
    assert torch.allclose(out[0], (h0[0] - v0[0]) + first)
    assert ((out[0] - (h0[0] - v0[0])).norm() - 2.0).abs() < 1e-6
    assert torch.equal(out[1], h0[1])  # |v*| = 8.5 > 2 * 2: dropped, the target is the unedited output
    same, dropped = anchor_outcome(z, h0, v0, anchor=2.0)
    assert torch.equal(same, out) and dropped.tolist() == [False, True]  # the drop is reported, row by row


def test_the_anchor_leaves_out_the_largest_five_percent():
    values = list(range(1, 41))  # 40 values: floor(2) largest left out
    assert trimmed_mean(values) == pytest.approx(sum(range(1, 39)) / 38)
    assert trimmed_mean([3.0, 5.0]) == 4.0  # fewer than 20: nothing left out


def _hparams(**extra):
    return MEMITHyperParams(layers=[0, 1], fact_token="subject_last", v_num_grad_steps=4, v_lr=0.5, v_loss_layer=2,
                            v_weight_decay=0.01, clamp_norm_factor=4.0, kl_factor=0.0625, mom2_adjustment=True,
                            mom2_update_weight=3.0, mom2_dataset=CORPUS, mom2_n_samples=10, mom2_dtype="float32",
                            mom2_max_length=32, **extra)


def test_an_anchored_editor_writes_values_of_the_anchors_norm(tiny_llama, tmp_path, monkeypatch):
    _, tok = tiny_llama
    hp = _hparams(norm_anchor=True, norm_anchor_samples=4, norm_anchor_pool=str(COUNTERFACT))
    editor = MEMITEditor(tiny_model("llama"), tok, hp, stats_dir=tmp_path, progress=False, **editor_inputs(hp))
    seen = {}
    real_update = editor._update

    def update(requests, z, report):
        seen["z"] = z.clone()
        return real_update(requests, z, report)

    monkeypatch.setattr(editor, "_update", update)
    h0, v0 = plain_outputs(editor.model, tok, REQUESTS[:2], ["model.layers.1", "model.layers.1.mlp"], "subject_last")
    editor.edit(REQUESTS[:2])
    # The anchor: the trimmed mean over the 4 requests NAS's seeded sample picks, optimised on the plain prompt.
    pool = read_anchor_pool(str(COUNTERFACT))
    chosen = random.Random(0).sample(pool, 4)
    expected = trimmed_mean(value_norms(tiny_model("llama"), tok, chosen, editor.value_spec, "model.layers.1.mlp"))
    assert editor.anchor == pytest.approx(expected, rel=1e-4)
    v_star = v0 + (seen["z"].float() - h0)
    kept = [bool(torch.allclose(v_star[row].norm(), torch.tensor(editor.anchor), rtol=1e-4)) for row in range(2)]
    dropped = [bool(torch.allclose(seen["z"][row].float(), h0[row], atol=1e-5)) for row in range(2)]
    assert all(k or d for k, d in zip(kept, dropped)) and any(kept)  # rescaled, or dropped past 2x
    editor.save(tmp_path / "state.pt")
    again = MEMITEditor(tiny_model("llama"), tok, _hparams(norm_anchor=True), stats_dir=tmp_path, progress=False)
    again.load(tmp_path / "state.pt")
    assert again.anchor == editor.anchor  # kept in the state: a resumed run anchors to the same norm


def test_anchoring_is_off_by_default(tiny_llama, tmp_path, monkeypatch):
    _, tok = tiny_llama
    editor = MEMITEditor(tiny_model("llama"), tok, _hparams(), stats_dir=tmp_path, progress=False)
    monkeypatch.setattr("util.norm_anchor.anchor_outcome", lambda *a: pytest.fail("anchored although off"))
    report = editor.edit(REQUESTS[:2])
    assert editor.anchor is None
    assert report.anchor_dropped is None and report.anchor_rescaled is None  # null, not 0: nothing was anchored
    assert "norm anchor" not in report.log_line()


@pytest.mark.parametrize("anchor, dropped", [(1e-6, [0, 1]), (1e6, [])])
def test_the_report_counts_the_edits_anchoring_drops(anchor, dropped, tiny_llama, tmp_path):
    """An anchor far below every |v*| drops every edit (z = h0: the batch asks no change), one far
    above drops none; the batch's report, its log line and its JSON entry say which."""
    from experiments.runner import _report_entry

    _, tok = tiny_llama
    editor = MEMITEditor(tiny_model("llama"), tok, _hparams(norm_anchor=True), stats_dir=tmp_path, progress=False)
    editor.anchor = anchor  # as if measured: the first batch keeps a known anchor
    report = editor.edit(REQUESTS[:2])
    assert (report.anchor_dropped, report.anchor_rescaled) == (len(dropped), 2 - len(dropped))
    assert report.anchor_dropped_case_ids == dropped
    assert f"norm anchor: {len(dropped)} dropped, {2 - len(dropped)} rescaled" in report.log_line()
    entry = _report_entry(report)  # what edit_reports.json holds for the batch
    assert (entry["anchor_dropped"], entry["anchor_rescaled"]) == (len(dropped), 2 - len(dropped))


@pytest.mark.parametrize("method", ["NSE", "AlphaEdit", "MEMIT_seq"])
def test_every_value_solving_method_takes_the_switch(method, tiny_llama, tmp_path):
    """The switch lives in the engine every value-solving method shares; NSE anchors the values it
    computes from the original weights."""
    import copy

    from experiments.algorithms import ALGORITHMS
    from test_editor_contract import TEMPLATES, TINY_HPARAMS

    _, tok = tiny_llama
    alg = ALGORITHMS[method]
    hp = alg.hparams_class.from_dict(dict(copy.deepcopy(TINY_HPARAMS[method]), norm_anchor=True, norm_anchor_samples=3,
                                          norm_anchor_pool=str(COUNTERFACT)))
    editor = alg.make_editor(tiny_model("llama"), tok, hp, stats_dir=tmp_path, context_templates=TEMPLATES,
                             progress=False, **editor_inputs(hp))
    report = editor.edit(REQUESTS[:2])
    assert editor.anchor is not None and editor.anchor > 0
    assert report.anchor_dropped + report.anchor_rescaled == 2  # every method's report counts what anchoring did
    assert f"norm anchor: {report.anchor_dropped} dropped" in report.log_line()


def test_the_nas_files_are_their_base_files_with_anchoring_on():
    """NAS publishes AlphaEdit's files with anchoring on; ours add the SmolLM2 files of three methods."""
    import json
    from pathlib import Path

    from experiments.algorithms import ALGORITHMS

    root = Path(__file__).resolve().parents[1] / "hparams"
    files = sorted(root.glob("*/*_NAS.json"))
    # Every AlphaEdit original (hparams/ORIGINALS.sha256) has its NAS file, whatever else ships.
    originals = [line.split()[1] for line in (root / "ORIGINALS.sha256").read_text().splitlines()]
    published = {root / name.replace(".json", "_NAS.json") for name in originals if name.startswith("AlphaEdit/")}
    assert published and published <= set(files)
    for path in files:
        base = json.loads(path.with_name(path.name.replace("_NAS", "")).read_text())
        assert json.loads(path.read_text()) == {**base, "norm_anchor": True}, path
        assert ALGORITHMS[path.parent.name].hparams_class.from_json(path).norm_anchor


def test_anchoring_is_data_on_the_value_spec_and_not_in_the_value_cache_key(tiny_llama, tmp_path):
    """norm_anchor puts a NormAnchoring on the value spec (as ENCORE puts its stopping rule there);
    the value cache keeps z before anchoring, so its folder is the same with and without it."""
    from util.norm_anchor import NormAnchoring
    from util.value_cache import ValueCache

    _, tok = tiny_llama
    model = tiny_model("llama")
    plain = _hparams().resolved_for(model).value_spec(model)
    anchored = _hparams(norm_anchor=True, norm_anchor_samples=7).resolved_for(model).value_spec(model)
    assert plain.anchoring is None
    assert anchored.anchoring == NormAnchoring(7, _hparams().norm_anchor_pool, "model.layers.1", "model.layers.1.mlp")
    folders = {ValueCache(tmp_path, "m", "mcf", spec, [["{}"]]).folder for spec in (plain, anchored)}
    assert len(folders) == 1


def test_an_anchoring_editor_without_a_pool_says_what_it_lacks(tiny_llama, tmp_path):
    """The pool is the experiment's to give (methods do not read datasets): without it, and with no
    saved anchor, the first batch stops before any weight changes, naming what is missing."""
    _, tok = tiny_llama
    editor = MEMITEditor(tiny_model("llama"), tok, _hparams(norm_anchor=True), stats_dir=tmp_path, progress=False)
    before = {k: w.clone() for k, w in editor.weights.items()}
    with pytest.raises(RuntimeError, match="no anchor_pool"):
        editor.edit(REQUESTS[:2])
    assert all(torch.equal(before[k], w) for k, w in editor.weights.items())
    assert editor_inputs(_hparams()) == {}  # no anchoring: nothing read
