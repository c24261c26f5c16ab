"""ENCORE: its update on small matrices against its objective, its regulariser in the editor, and
MPES, the value optimisation's most-probable early stopping, as data of the value spec."""
from __future__ import annotations

import copy

import pytest
import torch
from helpers import REQUESTS, tiny_model

from encore import ENCOREEditor, ENCOREHyperParams, MostProbableStop
from util.closed_form import solve_update
from util.hparams import HyperParamsError
from util.values import StepState, compute_values

G = torch.Generator().manual_seed(0)


def _randn(*shape):
    return torch.randn(*shape, generator=G, dtype=torch.float64)


def test_the_update_minimises_encores_objective():
    """argmin lc ||D K0||^2 + ||D Kp||^2 + ||D K - R||^2 + l ||D||_F^2, with lc C0 = K0 K0^T and
    S_prev = Kp Kp^T: the least-squares solution of D [K, sqrt(lc) K0, Kp, sqrt(l) I] = [R, 0, 0, 0]."""
    d, f, n, lc, lam = 4, 7, 3, 2.0, 0.5
    k, r, k0, kp = _randn(f, n), _randn(d, n), _randn(f, 9), _randn(f, 5)
    regulariser = lc * k0 @ k0.T + lam * torch.eye(f, dtype=torch.float64) + kp @ kp.T
    delta = solve_update(r, k, regulariser)
    design = torch.cat([k, lc ** 0.5 * k0, kp, lam ** 0.5 * torch.eye(f, dtype=torch.float64)], dim=1)
    rhs = torch.cat([r, torch.zeros(d, 9 + 5 + f, dtype=torch.float64)], dim=1)
    assert torch.allclose(delta, torch.linalg.lstsq(design.T, rhs.T).solution.T, atol=1e-10)


def _state(argmax, context, request, n=2):
    loss = torch.ones(n)
    return StepState(loss, loss, torch.zeros(len(argmax)), torch.tensor(request), torch.tensor(argmax),
                     torch.tensor(context))


def test_mpes_counts_steps_with_every_context_target_most_probable():
    # request 0: a plain-prompt token (ignored) and two context tokens; request 1: one context token
    request, context = [0, 0, 0, 1], [False, True, True, True]
    stop = MostProbableStop(count=2).start(2)
    assert stop(_state([False, True, False, True], context, request)).tolist() == [False, False]  # r1: 1 step
    assert stop(_state([False, True, True, False], context, request)).tolist() == [False, False]  # r0: 1 step
    assert stop(_state([False, True, True, True], context, request)).tolist() == [True, True]     # both at 2
    five = MostProbableStop(count=1, rule="five_hits")  # the original's test: exactly 5 hits
    assert five.held(_state([True] * 5 + [True] * 2, [True] * 7, [0] * 5 + [1] * 2)).tolist() == [True, False]


def test_the_value_engine_marks_context_tokens_and_the_most_probable(tiny_llama):
    model, tok = tiny_llama
    seen = []

    class Record:
        def __call__(self, state):
            seen.append(state)
            return torch.zeros_like(state.loss, dtype=torch.bool)

    from dataclasses import replace

    from helpers import CORPUS

    from memit import MEMITEditor, MEMITHyperParams

    hp = MEMITHyperParams(layers=[1], fact_token="subject_last", v_num_grad_steps=2, v_lr=0.5, v_loss_layer=2,
                          v_weight_decay=0.0, clamp_norm_factor=4.0, kl_factor=0.0, mom2_adjustment=True,
                          mom2_update_weight=1.0, mom2_dataset=CORPUS, mom2_n_samples=1, mom2_dtype="float32")
    spec = replace(MEMITEditor(model, tok, hp, progress=False).value_spec, stop=Record())
    compute_values(model, tok, REQUESTS[:1], spec, [["{}"], ["A. {}", "B. {}"]])
    state = seen[0]
    per_prompt = len(state.target_lp) // 3
    assert state.target_in_context.tolist() == [False] * per_prompt + [True] * (2 * per_prompt)
    assert state.target_is_argmax.dtype == torch.bool and state.target_is_argmax.shape == state.target_lp.shape


def _hp(**extra):
    from test_editor_contract import TINY_HPARAMS

    return ENCOREHyperParams.from_dict({**copy.deepcopy(TINY_HPARAMS["ENCORE"]), **extra})


def test_the_regulariser_holds_the_ridge_and_the_keys_each_solve_read(tiny_llama, tmp_path, monkeypatch):
    _, tok = tiny_llama
    from test_editor_contract import TEMPLATES

    editor = ENCOREEditor(tiny_model("llama"), tok, _hp(), stats_dir=tmp_path, context_templates=TEMPLATES,
                          progress=False)
    editor.prepare()
    c0 = editor._second_moments()
    for layer, reg in editor.regulariser.items():
        expected = 10.0 * c0[layer].double() + 1.0 * torch.eye(reg.shape[0], dtype=torch.float64)
        assert torch.allclose(reg.double(), expected, rtol=1e-5, atol=1e-5)
    before = {l: r.clone() for l, r in editor.regulariser.items()}
    solved = {}
    real = ENCOREEditor._solve
    monkeypatch.setattr(ENCOREEditor, "_solve", lambda self, layer, keys, *a: solved.setdefault(layer, keys.clone())
                        is not None and real(self, layer, keys, *a))
    editor.edit(REQUESTS[:2])
    for layer, k in solved.items():
        added = (editor.regulariser[layer] - before[layer]).double()
        assert torch.allclose(added, k.double() @ k.double().T, rtol=1e-4, atol=1e-4)


def test_bad_encore_values_are_refused():
    with pytest.raises(HyperParamsError, match="'prob_cutoff' must be a negative whole number"):
        _hp(prob_cutoff=0.9)
    with pytest.raises(HyperParamsError, match="'mpes_rule' must be one of"):
        _hp(mpes_rule="some")


def test_mpes_with_stopped_rows_leaving_the_batch_stops_and_edits_as_the_whole_model_path(tiny_llama):
    """MPES counts and stops each request as before while stopped requests' rows leave the suffix
    batch: the same steps and z as the whole-model path, where every row runs every pass."""
    from dataclasses import replace

    from helpers import stories_hparams

    from util.requests import normalize_request

    model, tok = tiny_llama
    spec = stories_hparams(v_num_grad_steps=12).resolved_for(model).value_spec(model)
    spec = replace(spec, stop=MostProbableStop(count=2))
    reqs = [normalize_request(r) for r in REQUESTS]
    templates = [["{}"], ["Once upon a time. {}", "The sun was up. {}"]]
    fast = compute_values(model, tok, reqs, spec, templates)
    full = compute_values(model, tok, reqs, replace(spec, suffix_only=False), templates)
    assert fast.updates == full.updates
    assert min(fast.updates) < max(fast.updates) == 11  # MPES stopped some requests early (measured: 6 and 3)
    rel = (fast.z - full.z).norm(dim=1) / full.z.norm(dim=1)
    assert float(rel.max()) < 1e-4, rel  # measured: 6e-7 .. 1.3e-6
