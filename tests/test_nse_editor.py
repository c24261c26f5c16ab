"""The NSE editor: rewinding, key accumulation, resumable state, statistics, architectures."""
import dataclasses
import math

import pytest
import torch
from helpers import REQUESTS, prefers_new, stories_hparams, tiny_hparams, tiny_model

from nse import NSEEditor, apply_nse_to_model
from util.keys import compute_keys_and_outputs
from util.requests import normalize_request
from util.rewrite_weights import weight_d_by_f
from util.values import compute_values

TEMPLATES = [["{}"], ["Once upon a time. {}", "The sun was up. {}"]]


def _editor(model, tok, hp, **kw):
    return NSEEditor(model, tok, hp, context_templates=TEMPLATES, progress=False, **kw)


def _weights(editor):
    return {l: weight_d_by_f(m).detach().clone() for l, m in editor.modules.items()}


def test_values_use_original_weights_after_an_edit(tiny_llama, tiny_llama_path):
    model, tok = tiny_llama
    hp = stories_hparams(v_num_grad_steps=8)
    editor = _editor(model, tok, hp)
    editor.edit(REQUESTS[:2])
    edited = _weights(editor)
    assert any(not torch.equal(edited[l], editor.original[l]) for l in edited)
    second = [normalize_request(r) for r in REQUESTS[2:]]
    with editor.rewound():
        rewound_z = compute_values(model, tok, second, editor.value_spec, TEMPLATES).z
    assert all(torch.equal(edited[l], w) for l, w in _weights(editor).items())  # edits are back

    from transformers import AutoModelForCausalLM
    fresh = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32).eval()
    fresh_z = compute_values(fresh, tok, second, editor.value_spec, TEMPLATES).z
    assert torch.allclose(rewound_z, fresh_z, atol=1e-5)
    edited_z = compute_values(model, tok, second, editor.value_spec, TEMPLATES).z
    assert not torch.allclose(edited_z, fresh_z, atol=1e-3)  # the test could tell them apart


def _batch_keys(editor, requests):
    hp = editor.hparams
    names = [hp.rewrite_module(l) for l in hp.layers]
    keys, _ = compute_keys_and_outputs(editor.model, editor.tok, [normalize_request(r) for r in requests],
                                       TEMPLATES, names, hp.fact_token)
    return {l: keys[hp.rewrite_module(l)].double() for l in hp.layers}


def test_cp_accumulates_every_batch(tiny_llama):
    model, tok = tiny_llama
    editor = _editor(model, tok, stories_hparams(v_num_grad_steps=5))
    editor.prepare()
    lambda_c0 = {l: r.double().clone() for l, r in editor.regulariser.items()}
    editor.edit(REQUESTS[:2])
    k1 = _batch_keys(editor, REQUESTS[:2])  # keys under the weights after batch 1
    editor.edit(REQUESTS[2:])
    k2 = _batch_keys(editor, REQUESTS[2:])
    for l in editor.hparams.layers:
        expected = lambda_c0[l] + k1[l].T @ k1[l] + k2[l].T @ k2[l]  # the one matrix: lambda C0 + Cp
        scale = float(expected.abs().max())
        assert torch.allclose(editor.regulariser[l].double(), expected, rtol=1e-4, atol=1e-6 * scale)
        assert not torch.allclose(lambda_c0[l], expected, rtol=1e-4, atol=1e-6 * scale)  # Cp does show
    assert (editor.num_batches, editor.total_edits) == (2, 4)


@pytest.mark.parametrize("count_key", ["total_edits", "num_edits"])  # num_edits: states saved before the rename
def test_saved_state_resumes_identically(tiny_llama, tiny_llama_path, tmp_path, count_key):
    from transformers import AutoModelForCausalLM

    model, tok = tiny_llama
    hp = stories_hparams(v_num_grad_steps=5)
    editor = _editor(model, tok, hp)
    editor.edit(REQUESTS[:2])
    editor.save(tmp_path / "state.pt")
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert state["total_edits"] == 2 and "num_edits" not in state  # the running count's one name
    if count_key == "num_edits":  # the file as the code before the rename wrote it
        state["num_edits"] = state.pop("total_edits")
        torch.save(state, tmp_path / "state.pt")
    resumed_model = AutoModelForCausalLM.from_pretrained(tiny_llama_path, dtype=torch.float32).eval()
    resumed = NSEEditor(resumed_model, tok, hp, progress=False)
    resumed.load(tmp_path / "state.pt")
    assert resumed.context_templates == TEMPLATES and resumed.total_edits == 2
    editor.edit(REQUESTS[2:])
    resumed.edit(REQUESTS[2:])
    for l, w in _weights(editor).items():
        assert torch.allclose(w, weight_d_by_f(resumed.modules[l]), atol=1e-6)
        assert torch.allclose(editor.regulariser[l], resumed.regulariser[l], rtol=1e-6)


def test_load_rejects_other_layers(tiny_llama, tmp_path):
    model, tok = tiny_llama
    editor = _editor(model, tok, stories_hparams(v_num_grad_steps=2))
    editor.save(tmp_path / "s.pt")
    other = _editor(model, tok, stories_hparams(layers=[2, 3]))
    with pytest.raises(ValueError, match=r"saved state edits \[1, 2, 3\], these hparams edit \[2, 3\]"):
        other.load(tmp_path / "s.pt")


@pytest.mark.parametrize("kind", ["gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2", "qwen3"])
def test_round_trip_on_tiny_random_models(kind, tiny_llama):
    _, tok = tiny_llama  # stories tokenizer, 512 ids like the tiny configs
    model = tiny_model(kind)
    # Subject last and single-token targets: in a random model only the residual stream at the
    # predicting position carries delta to the logits (random attention moves little).
    request = {"case_id": 0, "prompt": "One day Tom met {}", "subject": "Lily",
               "target_new": {"str": "happy"}, "target_true": {"str": "day"}}
    if prefers_new(model, tok, request):  # make the edit a real change
        request["target_new"], request["target_true"] = request["target_true"], request["target_new"]
    model, editor = apply_nse_to_model(model, tok, [request], tiny_hparams(), context_templates=TEMPLATES,
                                       progress=False)
    assert prefers_new(model, tok, request), editor.last_report.log_line()
    assert editor.last_report.active_per_round, "no round edited"


def test_conv1d_orientation_changes_only_selected_input_rows():
    model = tiny_model("gpt2")
    module = model.transformer.h[0].mlp.c_proj
    stored = module.weight.detach().clone()  # (f=96, d=32)
    from util.rewrite_weights import add_to_columns
    add_to_columns(module, torch.tensor([3, 10]), torch.ones(32, 2))
    diff = (module.weight - stored).abs().sum(dim=1)
    assert diff.nonzero().flatten().tolist() == [3, 10]


def test_real_tiny_model_round_trip(tiny_llama, tmp_path):
    model, tok = tiny_llama
    assert not any(prefers_new(model, tok, r) for r in REQUESTS[:2])
    editor = NSEEditor(model, tok, stories_hparams(), stats_dir=tmp_path, progress=False)
    report = editor.edit(REQUESTS[:2])
    assert all(prefers_new(model, tok, r) for r in REQUESTS[:2]), report.log_line()
    assert report.residual_mean_per_round[-1] < report.residual_mean_per_round[0]
    assert len(editor.context_templates[1]) == 5 and all(t.endswith(". {}") for t in editor.context_templates[1])
    assert list(tmp_path.rglob("*.pt")), "C0 was not cached"


def test_requests_above_upper_bound_are_not_edited(tiny_llama):
    model, tok = tiny_llama
    editor = _editor(model, tok, stories_hparams(upper_bound=0.6, alpha=0.5))
    before = _weights(editor)
    report = editor.edit(REQUESTS[:2])
    assert report.n_above_upper_bound == 2 and report.active_per_round == []
    assert all(torch.equal(before[l], w) for l, w in _weights(editor).items())


def test_value_cache_reuses_z(tiny_llama, tmp_path, monkeypatch):
    import memit.editor
    from util.value_cache import ValueCache

    model, tok = tiny_llama
    hp = stories_hparams(v_num_grad_steps=5)
    spec = hp.resolved_for(model).value_spec(model)
    cache = ValueCache(tmp_path, "stories", "mcf", spec, TEMPLATES)
    first = _editor(model, tok, hp, value_cache=cache)
    first.edit(REQUESTS[:2])
    assert len(list(cache.folder.glob("case_*.pt"))) == 2

    def no_optimisation(*args, **kwargs):
        raise AssertionError("cached values should have been used")

    monkeypatch.setattr(memit.editor, "compute_values", no_optimisation)
    second = _editor(model, tok, hp, value_cache=cache)
    report = second.edit(REQUESTS[:2])  # would raise if z were optimised again
    assert math.isnan(report.value_loss_mean)  # no fresh value losses: every z came from the cache
    other = ValueCache(tmp_path, "stories", "mcf", dataclasses.replace(spec, lr=0.01), TEMPLATES)
    assert other.folder != cache.folder  # a changed value setting cannot reuse stale z


def test_originals_are_a_copy_the_edits_leave_alone(tiny_llama):
    """--conserve_memory keeps the rewinding copy on the CPU: a copy (not the live weights), untouched by edits."""
    model, tok = tiny_llama
    editor = _editor(model, tok, stories_hparams(v_num_grad_steps=3), originals_on_cpu=True)
    before = {k: w.clone() for k, w in editor.weights.items()}
    assert all(w.device.type == "cpu" for w in editor.original.values())
    assert all(editor.original[k].data_ptr() != w.data_ptr() for k, w in editor.weights.items())
    editor.edit(REQUESTS[:1])
    assert editor.total_edits == 1
    assert any(not torch.equal(before[k], w) for k, w in editor.weights.items())  # the model was edited
    assert all(torch.equal(before[k], editor.original[k]) for k in before)  # its originals were not


def test_last_round_only_measures(tiny_llama):
    """As in the original, round max_iterations only measures residuals: at most max_iterations - 1 edit."""
    model, tok = tiny_llama
    report = _editor(model, tok, stories_hparams(max_iterations=2, alpha=1e-6)).edit(REQUESTS[:2])
    assert len(report.active_per_round) == 1 and len(report.residual_mean_per_round) == 2


def test_state_dict_is_a_snapshot(tiny_llama):
    model, tok = tiny_llama
    editor = _editor(model, tok, stories_hparams(v_num_grad_steps=3))
    editor.edit(REQUESTS[:1])
    state = editor.state_dict()
    saved_reg = {l: c.clone() for l, c in state["regulariser"].items()}
    editor.edit(REQUESTS[1:2])
    assert all(torch.equal(state["regulariser"][l], saved_reg[l]) for l in saved_reg)  # later edits do not leak in


def test_original_weights_are_written_once_beside_the_state(tiny_llama, tmp_path):
    """The state file is rewritten every batch; theta0 goes to its own file only the first time."""
    from util.editor import originals_path

    model, tok = tiny_llama
    editor = _editor(model, tok, stories_hparams(v_num_grad_steps=2))
    editor.edit(REQUESTS[:1])
    editor.save(tmp_path / "state.pt")
    originals = originals_path(tmp_path / "state.pt")
    first = originals.stat().st_mtime_ns
    editor.edit(REQUESTS[1:2])
    editor.save(tmp_path / "state.pt")
    assert originals.stat().st_mtime_ns == first
    assert "original" not in torch.load(tmp_path / "state.pt", weights_only=True)
    saved = torch.load(originals, weights_only=True)
    assert all(torch.equal(saved[k], w) for k, w in editor.original.items())
    originals.unlink()
    with pytest.raises(ValueError, match="original weights"):
        _editor(model, tok, stories_hparams(v_num_grad_steps=2)).load(tmp_path / "state.pt")


def test_a_state_without_a_count_is_not_an_editor_state(tmp_path):
    from util.editor import EditorStateError, read_state

    torch.save({"num_batches": 1, "current": {}}, tmp_path / "other.pt")
    with pytest.raises(EditorStateError, match="is not an editor state \\(no 'total_edits'\\)"):
        read_state(tmp_path / "other.pt")
