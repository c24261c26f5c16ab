"""Each method's math on small matrices (and, where it needs an editor, a tiny model)."""
import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
from helpers import CORPUS, tiny_model

from alphaedit.editor import projected_update
from alphaedit.projection import null_space_projector
from baselines.ft import FTEditor, FTHyperParams
from experiments.algorithms import ALGORITHMS
from memit import MEMITEditor, MEMITHyperParams, MEMITPruneEditor, MEMITPruneHyperParams, MEMITSeqEditor
from memit.prune import restrain_singular_values
from memit.rect import rectify
from nse.neuron_selection import select_neurons
from rome.rank_one import key_direction, rank_one_update
from util.closed_form import solve_update
from util.hparams import HyperParamsError

ROOT = Path(__file__).resolve().parents[1]
# The original project's hyperparameter files (jianghoucheng/NSE @ 9ef65736, hparams/) by the sha256
# of the upstream bytes: `cd hparams && sha256sum -c ORIGINALS.sha256` checks them too.
MANIFEST = (ROOT / "hparams/ORIGINALS.sha256").read_text().splitlines()
ORIGINALS = {name: digest for digest, name in map(str.split, MANIFEST)}
OURS = {"SmolLM2-135M.json", "tinystories-260k.json", "SmolLM2-135M_NAS.json",  # this project's own files
        "SmolLM2-135M_quickstart.json",
        "Llama3-8B_NAS.json", "EleutherAI_gpt-j-6B_NAS.json", "gpt2-xl_NAS.json"}  # an original + norm_anchor (as NAS)
G = torch.Generator().manual_seed(0)


def _randn(*shape):
    return torch.randn(*shape, generator=G, dtype=torch.float64)


def _spd(f, scale=1.0):
    a = _randn(f, 3 * f)
    return scale * a @ a.T / (3 * f)


# -- MEMIT and MEMIT_seq ----------------------------------------------------------------------------
def test_memit_update_is_the_least_squares_solution():
    """argmin ||Delta K - R||^2 + lambda tr(Delta C0 Delta^T) = lstsq of Delta [K, L] = [R, 0], L L^T = lambda C0."""
    d, f, n, lam = 5, 8, 3, 2.0
    k, r, c0 = _randn(f, n), _randn(d, n), _spd(f)
    delta = solve_update(r, k, lam * c0)
    lower = torch.linalg.cholesky(lam * c0)
    stacked_k = torch.cat([k, lower], dim=1)  # (f, n + f)
    stacked_r = torch.cat([r, torch.zeros(d, f, dtype=torch.float64)], dim=1)
    expected = torch.linalg.lstsq(stacked_k.T, stacked_r.T).solution.T
    assert torch.allclose(delta, expected, atol=1e-10)


def _memit_hparams(cls=MEMITHyperParams, **extra):
    return cls(layers=[0, 1], fact_token="subject_last", v_num_grad_steps=2, v_lr=0.5, v_loss_layer=2,
               v_weight_decay=0.01, clamp_norm_factor=4.0, kl_factor=0.0625, mom2_adjustment=True,
               mom2_update_weight=3.0, mom2_dataset=CORPUS, mom2_n_samples=10, mom2_dtype="float32",
               mom2_max_length=32, **extra)


def test_memit_seq_regulariser_includes_cp_and_memit_does_not(tiny_llama):
    _, tok = tiny_llama
    f, n = 96, 5
    c0, k = _spd(f).float(), _randn(n, f).float()
    regs = {}
    for cls in (MEMITEditor, MEMITSeqEditor):
        editor = cls(tiny_model("llama"), tok, _memit_hparams(), progress=False)
        editor._use_second_moments({0: c0, 1: c0})
        editor._final_keys = {editor.hparams.rewrite_module(l): k for l in (0, 1)}
        editor._after_batch([])  # MEMIT_seq: Cp += K K^T from the keys the last residual pass read
        regs[cls] = editor._restricted(editor.regulariser[0], torch.arange(f))
    assert torch.allclose(regs[MEMITEditor], 3.0 * c0.double())
    assert torch.allclose(regs[MEMITSeqEditor], 3.0 * c0.double() + k.double().T @ k.double(), rtol=1e-5, atol=1e-5)


def test_one_pass_gives_the_last_residuals_and_the_keys_cp_takes(tiny_llama, tmp_path, monkeypatch):
    """MEMIT_seq on 2 layers reads: residuals, keys per layer, then ONE pass for the final residuals
    and the accumulated keys (before: a fifth pass for the keys). Every phase is timed."""
    from helpers import REQUESTS

    from util.keys import KeyReader

    _, tok = tiny_llama
    calls = []
    real = KeyReader.read
    monkeypatch.setattr(KeyReader, "read", lambda self, *a, **kw: calls.append(list(a[0])) or real(self, *a, **kw))
    editor = MEMITSeqEditor(tiny_model("llama"), tok, _memit_hparams(), stats_dir=tmp_path, progress=False)
    editor.prepare()
    before = {l: r.clone() for l, r in editor.regulariser.items()}
    report = editor.edit(REQUESTS[:2])
    names = [editor.hparams.rewrite_module(l) for l in (0, 1)]
    assert calls == [[], names[:1], names[1:], names]
    assert all(not torch.equal(before[l], editor.regulariser[l]) for l in (0, 1))  # Cp did accumulate
    assert {"values", "residual reads", "key reads", "solves", "key accumulation"} <= report.phase_seconds.keys()
    assert report.phase_seconds["values"] > 0 and report.phase_seconds["solves"] > 0  # timed, not left at 0


# -- AlphaEdit ---------------------------------------------------------------------------------------
def test_alphaedit_projector_and_update_spare_the_preserved_keys():
    f, d, n = 10, 6, 3
    basis, _ = torch.linalg.qr(_randn(f, f))
    eigenvalues = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.2, 1e-3, 1e-4, 1e-5, 0.0], dtype=torch.float64)
    c0 = basis @ torch.diag(eigenvalues) @ basis.T
    p = null_space_projector(c0, threshold=1e-2, dtype="float32").double()
    assert torch.allclose(p @ p, p, atol=1e-6) and torch.allclose(p, p.T, atol=1e-7)  # a projector
    assert round(float(torch.trace(p))) == 4  # onto the 4 eigenvectors with eigenvalue < 1e-2
    delta = projected_update(_randn(d, n), _randn(f, n), _spd(f), p, l2=10.0, dtype=torch.float64)
    preserved = basis[:, :6]  # keys in the span of C0's large eigenvectors
    # Tolerance 1e-6 relative to |Delta|: P is float32 (1e-7 round-off), the solve float64.
    assert (delta @ preserved).abs().max() < 1e-6 * delta.abs().max()
    assert (delta @ basis[:, 6:]).abs().max() > 1e-2 * delta.abs().max()  # it does write somewhere


def test_alphaedit_float32_projection_is_the_originals_svd_and_float32_solve():
    f, d, n = 12, 5, 4
    c0 = _spd(f).float()
    c0 = c0 / c0.diagonal().mean()  # eigenvalues on both sides of the threshold
    threshold = float(torch.linalg.eigvalsh(c0.double())[4])  # 4 eigenvalues below, the rest at or above
    vectors, values, _ = torch.linalg.svd(c0, full_matrices=False)  # the original: float32 SVD of C0
    small = vectors[:, values < threshold]
    assert torch.equal(null_space_projector(c0, threshold, "float32"), small @ small.T)
    p32, p64 = null_space_projector(c0, threshold, "float32"), null_space_projector(c0, threshold, "float64")
    assert round(float(torch.trace(p32))) == round(float(torch.trace(p64))) == 4
    assert torch.allclose(p32, p64, atol=1e-5)  # the same subspace either way on a separated spectrum
    residual, keys, cp = _randn(d, n).float(), _randn(f, n).float(), _spd(f).float()
    a = p32 @ (keys @ keys.T + cp) + 10.0 * torch.eye(f)
    expected = torch.linalg.solve(a, p32 @ keys @ residual.T).T  # the original's float32 solve
    got = projected_update(residual, keys, cp, p32, l2=10.0, dtype=torch.float32)
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    precise = projected_update(residual, keys, cp, p32, l2=10.0, dtype=torch.float64)
    assert precise.dtype == torch.float64
    assert not torch.equal(precise.float(), got) and torch.allclose(precise.float(), got, rtol=1e-3, atol=1e-5)


def test_alphaedit_projection_dtype_defaults_to_the_original_and_older_runs_mean_float64():
    from alphaedit.hparams import AlphaEditHyperParams

    hp = AlphaEditHyperParams.from_json(Path(__file__).resolve().parents[1] / "hparams/AlphaEdit/SmolLM2-135M.json")
    assert hp.projection_dtype == "float32"
    assert AlphaEditHyperParams.VALUES_BEFORE["projection_dtype"] == "float64"
    with pytest.raises(HyperParamsError, match="projection_dtype"):
        dataclasses.replace(hp, projection_dtype="float16")


# -- ROME ---------------------------------------------------------------------------------------------
def test_rome_update_is_rank_one_and_sends_k_star_to_v_star():
    d, f = 6, 9
    w, k_star, v_star, c0 = _randn(d, f), _randn(f), _randn(d), _spd(f)
    u = key_direction(k_star, c0)
    assert torch.allclose(c0 @ u, k_star, atol=1e-10)  # u = C0^-1 k*
    delta = rank_one_update(w @ k_star, v_star, k_star, u)
    assert int(torch.linalg.matrix_rank(delta)) == 1
    assert torch.allclose((w + delta) @ k_star, v_star, atol=1e-10)
    assert torch.allclose(key_direction(k_star, None), k_star)  # mom2_adjustment false: u = k*


@pytest.mark.parametrize("write_key", ["plain_prompt", "template_mean"])
def test_rome_writes_v_star_at_the_key_the_original_uses(tiny_llama, tmp_path, write_key):
    """Default (the original's compute_v): W' k_plain = v* at the request's own prompt, u = C0^-1 k*
    from the mean key over the templates. ``template_mean``: W' k* = v*."""
    from helpers import REQUESTS

    from rome import ROMEEditor, ROMEHyperParams

    _, tok = tiny_llama
    hp = ROMEHyperParams(layers=[1], fact_token="subject_last", v_num_grad_steps=3, v_lr=0.5, v_loss_layer=2,
                         v_weight_decay=0.01, clamp_norm_factor=50.0, kl_factor=0.0625, mom2_adjustment=True,
                         mom2_dataset=CORPUS, mom2_n_samples=10, mom2_dtype="float32", mom2_max_length=32,
                         context_template_length_params=[[5, 5]], write_key=write_key)
    editor = ROMEEditor(tiny_model("llama"), tok, hp, stats_dir=tmp_path, progress=False)
    editor.prepare()
    request = REQUESTS[0]
    k_star, k_plain = editor._key(request, editor.context_templates), editor._key(request, [["{}"]])
    assert not torch.allclose(k_star, k_plain, atol=1e-4)  # the two keys differ: the test could fail
    v_star, _ = editor._value(request)
    w0 = editor.weights[1].detach().clone()
    editor._write(request, v_star)
    delta = (editor.weights[1].detach() - w0).double()
    written = k_plain if write_key == "plain_prompt" else k_star
    assert torch.allclose(editor.module(written[None])[0], v_star, atol=1e-4)
    u = torch.linalg.solve(editor.cov.double(), k_star.double())
    right = torch.linalg.svd(delta).Vh[0]  # the update's one direction in key space
    assert abs(float(right @ u / u.norm())) == pytest.approx(1.0, abs=1e-5)


# -- PRUNE ----------------------------------------------------------------------------------------------
def test_prune_restraint_bounds_every_singular_value():
    update, sigma_max = _randn(8, 12) * 5, 3.0
    s = torch.linalg.svdvals(update)
    restrained = restrain_singular_values(update, sigma_max, torch.float64)
    s_after = torch.linalg.svdvals(restrained)
    expected = torch.where(s > sigma_max, torch.log(s) - torch.log(torch.tensor(sigma_max)) + sigma_max, s)
    assert torch.allclose(s_after, expected.sort(descending=True).values, atol=1e-10)
    bound = sigma_max + torch.log(s.max() / sigma_max)  # F is increasing: F(s_max) bounds all
    assert (s_after <= bound + 1e-10).all() and s.max() > bound  # the test could fail


@pytest.mark.parametrize("onto", ["theta0", "edited_weight"])
def test_prune_sets_theta0_plus_restrained_change(tiny_llama, onto):
    """Default: W = theta0 + restrained(W - theta0). ``edited_weight`` reproduces the original code,
    which adds the restrained change to the already edited W, counting it twice."""
    _, tok = tiny_llama
    hparams = _memit_hparams(MEMITPruneHyperParams, prune_svd_dtype="float64", prune_restrained_onto=onto)
    editor = MEMITPruneEditor(tiny_model("llama"), tok, hparams, progress=False)
    w, theta0 = editor.weights[0], editor.original[0]
    with torch.no_grad():
        w.add_(torch.randn(w.shape, generator=G).float() * 10)  # a change with large singular values
    change = (w.detach() - theta0).double()
    sigma_max = float(torch.linalg.matrix_norm(theta0.double(), ord=2))
    editor.restrain()
    restrained = restrain_singular_values(change, sigma_max, torch.float64)
    paper, original = theta0.double() + restrained, theta0.double() + change + restrained
    expected, other = (paper, original) if onto == "theta0" else (original, paper)
    assert torch.allclose(w.double(), expected, atol=1e-4)
    assert not torch.allclose(w.double(), other, atol=1e-2)


def test_prune_defaults_are_the_originals_timing_and_the_papers_formula():
    hp = _memit_hparams(MEMITPruneHyperParams)
    assert (hp.prune_timing, hp.prune_restrained_onto) == ("final", "theta0")


# -- RECT ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("percent", [40.0, 12.5, 100.0])
def test_rect_exact_share_keeps_exactly_the_stated_share(percent):
    delta, weight = _randn(20, 30), _randn(20, 30)
    kept = rectify(delta, weight, percent, rule="exact_share")
    mask = kept != 0
    assert int(mask.sum()) == round(percent / 100 * delta.numel())
    relative = delta.abs() / (weight.abs() + 1e-8)
    if percent < 100:
        assert relative[mask].min() >= relative[~mask].max()  # the largest relative changes
    assert torch.equal(kept[mask], delta[mask])


def test_rect_original_rule_cuts_at_the_kth_smallest_and_keeps_ties():
    """As the original: |delta / (W + 1e-8)| (W signed), threshold = k-th smallest with
    k = int(numel * 0.6), kept where >= threshold: 600 entries -> k = 360 -> 241 kept."""
    delta, weight = _randn(20, 30), _randn(20, 30)
    kept = rectify(delta, weight, 40.0)
    relative = (delta / (weight + 1e-8)).abs().flatten()
    threshold = relative.sort().values[359]
    assert int((kept != 0).sum()) == 241 == int((relative >= threshold).sum())
    assert torch.equal(kept, delta * (relative >= threshold).view_as(delta))
    tied = torch.ones(4, 5, dtype=torch.float64)  # all relative changes equal: every entry is kept
    assert torch.equal(rectify(tied, torch.ones_like(tied), 40.0), tied)
    assert torch.equal(rectify(delta, weight, 100.0), delta)


def _rect_after_one_batch(tok, tmp_path, **options):
    from helpers import REQUESTS

    from memit.hparams import MEMITRectHyperParams
    from memit.rect import MEMITRectEditor

    editor = MEMITRectEditor(tiny_model("llama"), tok, _memit_hparams(MEMITRectHyperParams, **options),
                             stats_dir=tmp_path, progress=False)
    editor.edit(REQUESTS[:2])
    return editor


def test_rect_rectifies_after_all_layers_as_the_original(tiny_llama, tmp_path):
    """Default: every layer computed as plain MEMIT, then W = W0 + rectified(W_memit - W0, W0)."""
    from helpers import REQUESTS

    _, tok = tiny_llama
    memit = MEMITEditor(tiny_model("llama"), tok, _memit_hparams(), stats_dir=tmp_path, progress=False)
    memit.edit(REQUESTS[:2])
    rect = _rect_after_one_batch(tok, tmp_path)
    for layer in (0, 1):
        w0 = memit.original[layer].double()
        expected = w0 + rectify(memit.weights[layer].detach().double() - w0, w0, 40.0)
        assert torch.allclose(rect.weights[layer].detach().double(), expected, atol=1e-6)
        assert not torch.allclose(rect.weights[layer].detach(), memit.weights[layer].detach(), atol=1e-6)
    per_layer = _rect_after_one_batch(tok, tmp_path, rect_timing="per_layer")
    # The first layer sees nothing rectified before it either way; the second solves for what layer 0
    # actually received, so it differs.
    assert torch.allclose(per_layer.weights[0].detach(), rect.weights[0].detach(), atol=1e-6)
    assert not torch.allclose(per_layer.weights[1].detach(), rect.weights[1].detach(), atol=1e-6)


# -- FT -----------------------------------------------------------------------------------------------
def _ft(tok, **overrides):
    hp = FTHyperParams(**{"layers": [1], "num_steps": 5, "lr": 1e-1, "weight_decay": 0, "kl_factor": 0,
                          "norm_constraint": 1e-3, **overrides})
    return FTEditor(tiny_model("llama"), tok, hp, progress=False)


@pytest.mark.parametrize("theta0", ["batch_start", "pre_edit"])
def test_ft_respects_the_norm_constraint(tiny_llama, theta0):
    """Every entry stays within theta0 +- eps; theta0 is the weights when the batch began (the
    original) or before the first batch (``pre_edit``)."""
    _, tok = tiny_llama
    request = {"case_id": 0, "prompt": "One day Tom met {}", "subject": "Lily", "target_new": {"str": "happy"}}
    editor = _ft(tok, ft_theta0=theta0)
    editor.edit([request])
    after_first = {k: w.detach().clone() for k, w in editor.weights.items()}
    editor.edit([dict(request, case_id=1, subject="Max")])
    for k, w in editor.weights.items():
        base = after_first[k] if theta0 == "batch_start" else editor.original[k]
        change = (w.detach() - base).abs().max()
        assert 0.9e-3 < change <= 1e-3 + 1e-7, k  # moved, to the bound and not past it
        total = (w.detach() - editor.original[k]).abs().max()
        assert (total > 1.1e-3) == (theta0 == "batch_start"), k  # two batches may move it 2 eps
    free = _ft(tok, norm_constraint=False)
    free.edit([request])
    assert max((w.detach() - free.original[k]).abs().max() for k, w in free.weights.items()) > 1e-2


def test_ft_loss_is_the_originals_last_position_bag_of_tokens(tiny_llama):
    """Default: every token of tok(" " + target) (BOS included for Llama; no unk token here, so
    nothing masked) is scored at the last prompt position; per request the mean, then over requests."""
    _, tok = tiny_llama
    editor = _ft(tok)
    requests = [{"case_id": 0, "prompt": "One day Tom met {}", "subject": "Lily", "target_new": {"str": "happy dog"}},
                {"case_id": 1, "prompt": "The dog was named {}", "subject": "Max", "target_new": {"str": " red"}}]
    from util.tokens import encode

    expected = []
    for r, text in zip(requests, (" happy dog", " red")):
        prompt = encode(tok, r["prompt"].replace("{}", r["subject"]))
        target = tok(text)["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(editor.model(torch.tensor([prompt])).logits[0, -1], -1)
        padded = target + [tok.pad_token_id or tok.eos_token_id] * (len(tok(" happy dog")["input_ids"]) - len(target))
        expected.append(-sum(lp[t] for t in padded) / len(padded))  # no unk token: the padding counts
    assert tok.unk_token_id is None or tok.unk_token_id not in sum((tok(t)["input_ids"] for t in (" happy dog", " red")), [])
    with torch.no_grad():
        assert torch.allclose(editor._loss(requests), sum(expected) / 2, atol=1e-5)


def test_ft_loss_teacher_forced_on_request(tiny_llama):
    """``ft_loss="teacher_forced"``: each target token is scored at its own position."""
    _, tok = tiny_llama
    editor = _ft(tok, ft_loss="teacher_forced")
    request = {"case_id": 0, "prompt": "One day Tom met {}", "subject": "Lily", "target_new": {"str": " happy dog"}}
    from util.tokens import encode, encode_target

    prompt, target = encode(tok, "One day Tom met Lily"), encode_target(tok, " happy dog")
    assert len(target) > 1
    with torch.no_grad():
        lp = torch.log_softmax(editor.model(torch.tensor([prompt + target])).logits[0], -1)
        expected = -sum(lp[len(prompt) - 1 + i, t] for i, t in enumerate(target)) / len(target)
        assert torch.allclose(editor._loss([request]), expected, atol=1e-5)


def test_ft_weight_decay_power_law_only_on_request(tiny_llama):
    _, tok = tiny_llama
    assert _ft(tok, wd_power_law=[-0.5, 0.0], weight_decay=0)._weight_decay(4) == 0.0  # as the original
    assert _ft(tok, wd_power_law=[-0.5, 0.0], apply_wd_power_law=True)._weight_decay(4) == pytest.approx(0.5)


def test_ft_a_block_template_trains_every_parameter_under_it(tiny_llama):
    """The original's GPT-J ``_wd`` file names a whole block (``transformer.h.{}``)."""
    _, tok = tiny_llama
    editor = _ft(tok, rewrite_module_tmp="model.layers.{}")
    names = set(editor.weights)
    block = {f"model.layers.1.{n}" for n, _ in editor.model.model.layers[1].named_parameters()}
    assert names == block and any("self_attn" in n for n in names) and any("mlp" in n for n in names)


def test_ft_the_original_gptj_wd_file_names_a_block_that_trains():
    """hparams/FT/EleutherAI_gpt-j-6B_wd.json (verbatim) on a tiny GPT-J, at a layer it has."""
    import dataclasses

    hp = dataclasses.replace(FTHyperParams.from_json(ROOT / "hparams/FT/EleutherAI_gpt-j-6B_wd.json"), layers=[1])
    model = tiny_model("gptj")
    hp.check_against(model)
    names = set(hp.parameters_of(model, 1))
    assert names == {f"transformer.h.1.{n}" for n, _ in model.transformer.h[1].named_parameters()} and len(names) > 4


# -- NSE's original selection rule --------------------------------------------------------------------
def test_original_neuron_rule_matches_the_official_formula():
    keys = torch.rand(50, 4, generator=G)
    for threshold in (0.3, 0.8, 0.95):
        scores = torch.zeros(50)
        for j in range(4):
            scores += keys[:, j].abs()
        sorted_scores, order = torch.sort(scores, descending=True)
        count = torch.where(torch.cumsum(sorted_scores, 0) <= threshold * scores.sum())[0][-1] + 1
        official = sorted(order[:count].tolist())
        assert select_neurons(keys, threshold, "original").tolist() == official
        assert len(select_neurons(keys, threshold, "reaching")) == len(official) + 1  # ours keeps one more


# -- hyperparameter files -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(ORIGINALS))
def test_every_original_file_loads_verbatim(name, caplog):
    shipped = ROOT / "hparams" / name
    algs = [a for a in ALGORITHMS.values() if a.hparams_dir == shipped.parent.name]
    assert algs, f"no method reads {shipped.parent.name}"
    assert hashlib.sha256(shipped.read_bytes()).hexdigest() == ORIGINALS[name]  # shipped verbatim
    original = json.loads(shipped.read_text())
    with caplog.at_level(logging.INFO, logger="util.hparams"):
        for alg in algs:
            hp = alg.hparams_class.from_json(shipped)
            assert hp.layers == original["layers"]
    if "model_name" in original:
        assert "ignores key(s)" in caplog.text and "model_name" in caplog.text


def test_every_hparams_file_is_an_original_or_ours():
    names = {p.relative_to(ROOT / "hparams").as_posix() for p in (ROOT / "hparams").glob("*/*.json")}
    # hparams/ENCORE: the published values written here (docs/frontier_notes.md 2.c), not fetched files.
    names = {n for n in names if not n.startswith("ENCORE/")}
    # The manifest names each file once, and the shipped files outside OURS are exactly the manifest's.
    assert ORIGINALS and len(ORIGINALS) == len(MANIFEST)
    assert {n for n in names if n.split("/")[1] not in OURS} == set(ORIGINALS)


@pytest.mark.parametrize("method", sorted(ALGORITHMS))
def test_misspelt_key_is_an_error_naming_it(method, tmp_path):
    alg = ALGORITHMS[method]
    source = next((ROOT / "hparams" / alg.hparams_dir).glob("*.json"))
    data = json.loads(source.read_text())
    data["layerz"] = data.pop("layers")
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(HyperParamsError, match=r"unknown key\(s\) \['layerz'\]"):
        alg.hparams_class.from_json(path)


def test_original_neox_rome_file_resolves_its_renamed_head():
    from transformers import AutoModelForCausalLM, GPTNeoXConfig

    from rome import ROMEHyperParams

    hp = ROMEHyperParams.from_json(ROOT / "hparams/ROME/EleutherAI_gpt-neox-20b.json")
    assert hp.lm_head_module == "embed_out"  # the file as shipped
    config = GPTNeoXConfig(num_hidden_layers=44, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                           vocab_size=64)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert hp.resolved_for(model).lm_head_module == "lm_head"
