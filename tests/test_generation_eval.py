"""Generation-based evaluation beside teacher forcing (--generation_eval): greedy answers up to a
period or newline, exact match and token F1 after SQuAD normalisation; per case, summarized."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from helpers import CORPUS, COUNTERFACT, TINY_LLAMA, ZSRE

import summarize
from dsets import CounterFactDataset, ZsreDataset
from experiments.ds_kinds import kind_named
from experiments.evaluate import main as evaluate
from experiments.metrics import generation_eval as ge
from util.tokens import encode


def test_normalisation_exact_match_and_token_f1_by_hand():
    assert ge.normalize("  The Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"
    assert ge.exact_match("the Louvre", "Louvre") and not ge.exact_match("Louvre museum", "Louvre")
    # answer "paris france" vs target "paris": precision 1/2, recall 1 -> F1 2/3
    assert ge.token_f1("Paris, France", "Paris") == pytest.approx(2 / 3)
    assert ge.token_f1("London", "Paris") == 0.0 and ge.token_f1("", "") == 1.0
    assert ge.answer_of(" Paris. It is") == "Paris" and ge.answer_of(" Rome\nand") == "Rome"


def _greedy_by_hand(model, tok, prompt: str) -> str:
    ids = encode(tok, prompt)
    new = []
    with torch.no_grad():
        for _ in range(ge.MAX_NEW):
            nxt = int(model(torch.tensor([ids + new])).logits[0, -1].argmax())
            if nxt == tok.eos_token_id:
                break
            new.append(nxt)
    full, head = tok.decode(ids + new, skip_special_tokens=True), tok.decode(ids, skip_special_tokens=True)
    return ge.answer_of(full[len(head):])


def test_answers_are_greedy_and_scored_against_the_right_target(tiny_llama):
    model, tok = tiny_llama
    record = CounterFactDataset(COUNTERFACT, size=1)[0]
    items = kind_named("counterfact").generation_eval_items(record)
    rewrite = record["requested_rewrite"]
    assert items["rewrite"] == [(rewrite["prompt"].format(rewrite["subject"]), rewrite["target_new"]["str"])]
    assert {t for _, t in items["neighborhood"]} == {rewrite["target_true"]["str"]}
    [scores] = ge.generation_eval_many(model, tok, [items])
    for group in ge.GROUPS:
        expected = [_greedy_by_hand(model, tok, p) for p, _ in items[group]]
        assert scores[f"{group}_gen_answer"] == expected
        assert scores[f"{group}_gen_em"] == [ge.exact_match(a, t) for a, (_, t) in zip(expected, items[group])]
        assert scores[f"{group}_gen_f1"] == [ge.token_f1(a, t) for a, (_, t) in zip(expected, items[group])]


def test_zsre_neighbourhood_expects_the_nq_answer(tiny_llama):
    _, tok = tiny_llama
    raw = json.loads(ZSRE.read_text())[0]
    case = ZsreDataset(ZSRE, tok, size=1)[0]
    items = kind_named("zsre").generation_eval_items(case)
    [(question, answer)] = items["neighborhood"]
    assert question.startswith(raw["loc"]) and answer.strip() == raw["loc_ans"].strip()
    assert items["paraphrase"] == [(raw["rephrase"], raw["answers"][0])]


def test_a_run_with_generation_eval_writes_and_summarizes_both_families(tmp_path, capsys):
    hp = json.loads((TINY_LLAMA.parents[1] / "hparams/MEMIT/tinystories-260k.json").read_text())
    (tmp_path / "hp.json").write_text(json.dumps({**hp, "mom2_n_samples": 40, "mom2_max_length": 64}))
    args = {"alg_name": "MEMIT", "model_name": str(TINY_LLAMA), "hparams_fname": str(tmp_path / "hp.json"),
            "ds_name": "mcf", "ds_file": str(COUNTERFACT), "dataset_size_limit": "2", "num_edits": "2",
            "mom2_dataset": CORPUS, "results_dir": str(tmp_path / "results"), "stats_dir": str(tmp_path / "stats"),
            "data_dir": str(tmp_path / "none")}
    flags = [f"--{k}={v}" for k, v in args.items()] + ["--generation_eval", "--skip_generation_tests", "--curve_every=1"]
    assert evaluate(flags) == 0
    run = tmp_path / "results" / "MEMIT" / "run_000"
    posts = [json.loads(p.read_text())["post"] for p in sorted(run.glob("*_edits-case_*.json"))]
    assert all("rewrite_prompts_probs" in p and "neighborhood_gen_em" in p for p in posts)  # both families
    point = json.loads((run / "curves" / "edits_000002.json").read_text())
    assert all("paraphrase_gen_f1" in post for post in point["cases"].values())  # curve points carry them too
    capsys.readouterr()
    assert summarize.main(["--dir_name=MEMIT", f"--results_dir={tmp_path / 'results'}", f"--out={tmp_path / 's'}",
                           "--plot"]) == 0
    printed = capsys.readouterr().out
    assert "CounterFact, generation-based (--generation_eval)" in printed and "Efficacy EM" in printed
    summary = json.loads((tmp_path / "s.json").read_text())["runs"][0]
    by_hand = 100 * sum(sum(p["paraphrase_gen_em"]) / len(p["paraphrase_gen_em"]) for p in posts) / len(posts)
    assert summary["post"]["paraphrase_gen_em"]["mean"] == pytest.approx(by_hand)
    with (tmp_path / "s_figures" / "metrics_vs_edits.csv").open() as f:
        [row] = list(csv.DictReader(f))  # the curve point after 2 edits is the final one (same weights)
    assert float(row["Generalization EM"]) == pytest.approx(by_hand)
