"""The general-capability tasks as the original code measured them: its prompts, examples [10:110],
greedy answers matched by substring in its order (-1 invalid), weighted F1 and MCC over the labels
seen. Each rule checked by hand; the run's default protocol."""
from __future__ import annotations

import json

import pytest
from helpers import TASKS_DIR

from experiments.downstream import run_downstream_eval
from experiments.downstream import original_protocol as op
from experiments.settings import RunConfig, default_settings, settings_before


def test_prompts_are_the_originals():
    t = op.ORIGINAL_TASKS
    assert t["sst2"].prompt({"sentence": "a fine film "}) == "Review :a fine film \nSentiment :"
    assert t["mrpc"].prompt({"sentence1": "A.", "sentence2": "B."}) == (
        "Are the sentences paraphrases of each other.\nSentence 1: A.\nSentence 2: B.\nAnswer:")
    assert t["cola"].prompt({"sentence": "He go."}) == "Is this sentence linguistically acceptable?\nSentence: He go.\nAnswer: "
    assert t["rte"].prompt({"sentence1": "P.", "sentence2": "H."}) == "P.\nquestion: H. True or False?\nanswer:"
    assert t["nli"].prompt({"sentence1": "P.", "sentence2": "H."}) == "P. entails the H. True or False? Answer:"
    assert t["mmlu"].prompt({"question": "Q?", "choices": ["w", "x", "y", "z"]}) == (
        "Question: Q?\n(A) w\n(B) x\n(C) y\n(D) z\nAnswer:")


@pytest.mark.parametrize("task, generated, label", [
    ("sst2", " Positive review", 1), ("sst2", " negative", 0), ("sst2", " ok", -1),
    ("mrpc", " Yes", 1), ("mrpc", " not sure", 0),          # a substring test: "not" holds "no"
    ("cola", " no", 0), ("cola", " maybe", -1),
    ("rte", " True or False", 0), ("rte", " TRUE", 1),     # 'false' is tested first
    ("nli", " true", 1), ("nli", " False.", 0),
    ("mmlu", " B\n(C)", 1), ("mmlu", " B", -1),            # the letter must be followed by a newline
])
def test_answers_are_matched_as_the_original(task, generated, label):
    t = op.ORIGINAL_TASKS[task]
    record = {"sentence": "s", "sentence1": "a", "sentence2": "b", "question": "q", "choices": list("wxyz")}
    prompt = t.prompt(record)
    assert t.predict(prompt, prompt + generated) == label


def test_gold_labels_follow_the_originals_reading():
    assert op.ORIGINAL_TASKS["nli"].gold({"label": "entailment"}) == 1
    assert op.ORIGINAL_TASKS["nli"].gold({"label": "not_entailment"}) == 0
    assert op.ORIGINAL_TASKS["rte"].gold({"label": 1}) == 1  # GLUE's not_entailment, scored against 'true'


def test_metrics_count_invalid_answers_as_the_original():
    """gold 1 0 1 0, answers 1 -1 0 0: accuracy 2/4; weighted F1 over {-1, 0, 1} with weights from
    the gold counts: class 1 P=1 R=1/2 F1=2/3, class 0 P=1/2 R=1/2 F1=1/2, class -1 weight 0 ->
    (2 * 2/3 + 2 * 1/2) / 4 = 7/12."""
    m = op.original_metrics([1, 0, 1, 0], [1, -1, 0, 0])
    assert m["accuracy"] == 0.5 and m["f1"] == pytest.approx(7 / 12) and m["invalid"] == 1 and m["n"] == 4
    assert op.original_metrics([1, 0], [1, 0])["mcc"] == pytest.approx(1.0)


def test_test_examples_are_those_after_the_few_shot_pool():
    records = [{"i": i} for i in range(30)]
    assert [r["i"] for r in op.examples_after_pool(records, 5)] == [10, 11, 12, 13, 14]


def test_a_pass_on_the_tiny_model_uses_greedy_answers(tiny_llama, monkeypatch):
    model, tok = tiny_llama
    seen = []
    real = op.sample_continuations
    monkeypatch.setattr(op, "sample_continuations",
                        lambda m, t, prompts, n, top_k: seen.append((list(prompts), n, top_k)) or real(m, t, prompts, n, top_k=top_k))
    result = run_downstream_eval(model, tok, TASKS_DIR, tasks=("sst2", "mmlu"), n_per_task=4, progress=False)
    records = json.loads((TASKS_DIR / "sst2.json").read_text())
    assert seen[0][0] == [op.ORIGINAL_TASKS["sst2"].prompt(r) for r in records[10:14]]
    assert all(n == 5 and k == 1 for _, n, k in seen)  # 5 new tokens, top-1 = greedy
    for metrics in result.values():
        assert metrics["n"] == 4 and 0 <= metrics["invalid"] <= 4 and 0 <= metrics["accuracy"] <= 1


def test_the_original_protocol_is_the_default_and_older_runs_keep_theirs():
    assert RunConfig(alg_name="NSE", model_name="m", hparams_fname="h", ds_name="mcf").downstream_protocol == "original"
    assert default_settings()["downstream_protocol"] == "original"
    assert settings_before()["downstream_protocol"] == "likelihood"  # a run folder from before the setting
    with pytest.raises(ValueError, match="dialogue have no original protocol"):
        run_downstream_eval(None, None, TASKS_DIR, tasks=("dialogue",))
