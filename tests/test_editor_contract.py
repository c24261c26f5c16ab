"""The contract every registered method keeps (PEFT-style table): run over every method on tiny
GPT-2 and Llama models. Method-specific math is tested beside this (tests/test_methods_math.py)."""
import copy

import pytest
import torch
from helpers import CORPUS, prefers_new, tiny_model

from experiments.algorithms import ALGORITHMS
from util.requests import RequestError

TEMPLATES = [["{}"], ["Once upon a time. {}", "The sun was up. {}"]]
KINDS = ("gpt2", "llama")

_VALUES = dict(fact_token="subject_last", v_num_grad_steps=30, v_lr=0.5, v_loss_layer=2, v_weight_decay=0.01,
               clamp_norm_factor=4.0, kl_factor=0.0625, mom2_adjustment=True, mom2_dataset=CORPUS,
               mom2_n_samples=40, mom2_dtype="float32", mom2_max_length=64)
_MEMIT = dict(_VALUES, layers=[0, 1], mom2_update_weight=10.0)
# Settings that make one batch take on a 3-layer, width-32 random model (not tuned for quality).
TINY_HPARAMS = {
    "NSE": dict(_MEMIT, alpha=0.01, upper_bound=1e4, max_iterations=3, neuron_threshold=0.9),
    "MEMIT": _MEMIT,
    "MEMIT_seq": _MEMIT,
    # "final" (the original's timing): restrained in finish(); with "every_batch" PRUNE undoes much of
    # a tiny model's edit (its weights' largest singular value is small). Both timings: below.
    "MEMIT_prune": dict(_MEMIT, prune_timing="final"),
    "MEMIT_rect": dict(_MEMIT, rect_top_percent=60.0),
    "AlphaEdit": dict(_MEMIT, nullspace_threshold=0.5, L2=0.1),
    "ENCORE": dict(_MEMIT, update_norm_lambda=1.0, prob_cutoff=-2),
    # A random MLP's output is small: delta needs more room than 4x its norm.
    "ROME": dict(_VALUES, layers=[1], clamp_norm_factor=50.0, context_template_length_params=[[5, 5]]),
    "FT": dict(layers=[1], num_steps=40, lr=2e-2, weight_decay=0, kl_factor=0, norm_constraint=False),
}
METHODS = sorted(ALGORITHMS)
# Subject last: in a random model only the residual stream at the predicting position carries an
# edit to the logits (random attention moves little).
REQUESTS = [
    {"case_id": 0, "prompt": "One day Tom met {}", "subject": "Lily",
     "target_new": {"str": "happy"}, "target_true": {"str": "day"}},
    {"case_id": 1, "prompt": "The dog was named {}", "subject": "Max",
     "target_new": {"str": "red"}, "target_true": {"str": "big"}},
    {"case_id": 2, "prompt": "She went to the {}", "subject": "park",
     "target_new": {"str": "cat"}, "target_true": {"str": "mom"}},
    {"case_id": 3, "prompt": "Then came {}", "subject": "Sue",
     "target_new": {"str": "tree"}, "target_true": {"str": "box"}},
]
CASES = [(m, k) for m in METHODS for k in KINDS]


def test_every_method_has_a_contract_case_and_declares_its_hparams_class():
    assert sorted(TINY_HPARAMS) == sorted(ALGORITHMS)  # a method added to the registry needs a row here
    for name, alg in ALGORITHMS.items():
        assert isinstance(alg.editor_class.__dict__.get("hparams_class") or alg.hparams_class, type), name
        assert alg.hparams_class.from_dict(copy.deepcopy(TINY_HPARAMS[name])) is not None, name


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("stats")  # C0 collected once per model kind for the whole table


@pytest.fixture(scope="module")
def tok(tiny_llama_path):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_llama_path)
    t.pad_token = t.pad_token or t.eos_token
    return t


def _editor(method, kind, tok, stats_dir, model=None):
    alg = ALGORITHMS[method]
    hparams = alg.hparams_class.from_dict(copy.deepcopy(TINY_HPARAMS[method]))
    model = model if model is not None else tiny_model(kind)
    templates = TEMPLATES if method != "ROME" else None  # ROME makes its own (lengths from its hparams)
    return alg.make_editor(model, tok, hparams, stats_dir=stats_dir, context_templates=templates, progress=False)


def _not_yet_known(model, tok, requests):
    """The requests with targets swapped where the random model already prefers the new one, so
    that every edit has something to change."""
    out = []
    for r in requests:
        swapped = dict(r, target_new=r["target_true"], target_true=r["target_new"])
        out.append(swapped if prefers_new(model, tok, r) else r)
    return out


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.parametrize("method,kind", CASES)
def test_one_batch_takes_and_leaves_no_hook(method, kind, tok, stats_dir):
    editor = _editor(method, kind, tok, stats_dir)
    batch = _not_yet_known(editor.model, tok, REQUESTS[:2])
    assert not any(prefers_new(editor.model, tok, r) for r in batch)  # the test could fail
    report = editor.edit(batch)
    assert all(prefers_new(editor.model, tok, r) for r in batch), report.log_line()
    assert _hooks(editor.model) == 0
    assert report.n_requests == 2 and report.seconds > 0 and editor.total_edits == 2


@pytest.mark.parametrize("method,kind", CASES)
def test_save_load_then_next_batch_equals_unbroken_run(method, kind, tok, stats_dir, tmp_path):
    unbroken = _editor(method, kind, tok, stats_dir)
    unbroken.edit(REQUESTS[:2])
    unbroken.edit(REQUESTS[2:])

    first = _editor(method, kind, tok, stats_dir)
    first.edit(REQUESTS[:2])
    first.save(tmp_path / "state.pt")
    resumed = _editor(method, kind, tok, stats_dir)  # a fresh, unedited model
    resumed.load(tmp_path / "state.pt")
    resumed.edit(REQUESTS[2:])
    for (name, a), b in zip(unbroken.model.named_parameters(), resumed.model.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name
    assert resumed.total_edits == unbroken.total_edits == 4


@pytest.mark.parametrize("method,kind", CASES)
def test_bad_request_fails_before_any_weight_changes(method, kind, tok, stats_dir):
    editor = _editor(method, kind, tok, stats_dir)
    before = _snapshot(editor.model)
    bad = dict(REQUESTS[1], prompt="The dog was named Max")  # no '{}' for the subject
    with pytest.raises(RequestError, match=r"case_id=1: prompt .* exactly one '\{\}'"):
        editor.edit([REQUESTS[0], bad])
    after = _snapshot(editor.model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert editor.total_edits == 0 and _hooks(editor.model) == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("method", METHODS)
def test_half_precision_weights_edit(method, dtype, tok, stats_dir):
    """Weights stay in their dtype and finite; statistics and solves run in float32/float64 inside."""
    model = tiny_model("llama").to(dtype)
    editor = _editor(method, "llama", tok, stats_dir, model=model)
    before = _snapshot(model)
    editor.edit(REQUESTS[:2])
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all(p.dtype == dtype and torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("arch", ["gpt2", "gptj", "gpt_neox", "llama", "mistral", "qwen2", "qwen3"])
def test_every_method_finds_its_modules_on_every_architecture(arch, tok):
    """Module paths come from util/architectures.py for every method (editing itself: the table above
    on GPT-2 and Llama, NSE on all of these in tests/test_nse_editor.py)."""
    for method in METHODS:
        editor = _editor(method, arch, tok, None)
        assert any(w.dim() == 2 for w in editor.weights.values()), method  # FT also trains a bias
        if hasattr(editor, "value_spec"):
            from util.architectures import get_module

            for name in (editor.value_spec.site, editor.value_spec.final_layer, editor.value_spec.lm_head):
                get_module(editor.model, name)


def _prune(tok, stats_dir, timing):
    alg = ALGORITHMS["MEMIT_prune"]
    hparams = alg.hparams_class.from_dict(dict(copy.deepcopy(TINY_HPARAMS["MEMIT_prune"]), prune_timing=timing))
    return alg.make_editor(tiny_model("llama"), tok, hparams, stats_dir=stats_dir, context_templates=TEMPLATES,
                           progress=False)


def _restrained(editor):
    """theta0 + restrained(W - theta0) of every edited weight, computed here from the editor's weights."""
    from memit.prune import restrain_singular_values

    out = {}
    for layer, w in editor.weights.items():
        theta0 = editor.original[layer].double()
        sigma_max = float(torch.linalg.matrix_norm(theta0, ord=2))
        out[layer] = theta0 + restrain_singular_values(w.detach().double() - theta0, sigma_max, torch.float64)
    return out


@pytest.mark.parametrize("timing", ["final", "every_batch"])
def test_prune_restrains_when_its_timing_says_and_resumes(timing, tok, stats_dir, tmp_path):
    """MEMIT_prune through the contract with finish(): "final" edits as MEMIT and restrains once in
    finish(); "every_batch" restrains after each batch and finish() changes nothing. A run saved after
    batch 1 and resumed ends where the unbroken run ends."""
    memit = _editor("MEMIT", "llama", tok, stats_dir)
    prune = _prune(tok, stats_dir, timing)
    memit.edit(REQUESTS[:2])
    prune.edit(REQUESTS[:2])
    for layer, w in prune.weights.items():
        if timing == "final":  # the first batch is plain MEMIT
            assert torch.allclose(w, memit.weights[layer], atol=1e-6)
        else:
            assert not torch.allclose(w, memit.weights[layer], atol=1e-4)  # restrained: the test could fail
    prune.edit(REQUESTS[2:])
    before_finish = _restrained(prune)
    kept = {l: w.detach().clone() for l, w in prune.weights.items()}
    prune.finish()
    for layer, w in prune.weights.items():
        if timing == "final":
            assert torch.allclose(w.double(), before_finish[layer], atol=1e-5)
            assert not torch.allclose(w, kept[layer], atol=1e-4)  # finish() did restrain
        else:
            assert torch.equal(w, kept[layer])
    first = _prune(tok, stats_dir, timing)
    first.edit(REQUESTS[:2])
    first.save(tmp_path / "state.pt")
    resumed = _prune(tok, stats_dir, timing)
    resumed.load(tmp_path / "state.pt")
    resumed.edit(REQUESTS[2:])
    resumed.finish()
    for layer, w in prune.weights.items():
        assert torch.allclose(resumed.weights[layer], w, rtol=1e-5, atol=1e-6)
