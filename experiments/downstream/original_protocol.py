"""The general-capability tasks as the original NSE/AlphaEdit code measured them (``glue_eval/``).

Per task: the original's prompt, the test examples ``[10:10+n]`` of the task file (the first ten
were its few-shot pool, unused at zero shots), greedy generation of at most 5 new tokens, and the
answer found by case-insensitive substring tests in the original's order; an answer matching none
is invalid (-1). Accuracy counts invalid answers as wrong; F1 is sklearn's weighted F1 and MCC
sklearn's, both over the labels seen, -1 included, as the original computed them.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sklearn.metrics import f1_score, matthews_corrcoef
from torch import nn

from util.generation import sample_continuations

FEW_SHOT_POOL = 10      # the original's test examples start after its few-shot pool
NEW_TOKENS = 5          # GLUEEval.evaluate(gen_len=5), for every task
INVALID = -1
Record = dict[str, Any]


@dataclass(frozen=True)
class OriginalTask:
    name: str
    prompt: Callable[[Record], str]
    answer: Callable[[str, str], str]        # (prompt, decoded prompt + generation) -> the text searched
    matches: tuple[tuple[str, int], ...]     # (lower-case substring, label), the first found wins
    gold: Callable[[Record], int]

    def predict(self, prompt: str, decoded: str) -> int:
        text = self.answer(prompt, decoded).lower()
        return next((label for word, label in self.matches if word in text), INVALID)


def _after(cue: str, strip: bool = False) -> Callable[[str, str], str]:
    def answer(prompt: str, decoded: str) -> str:
        text = decoded.split(cue)[-1]
        return text.strip() if strip else text
    return answer


def _continuation(prompt: str, decoded: str) -> str:
    return decoded.replace(prompt, "")  # MMLU: the generated part only


def _label(record: Record) -> int:
    return int(record["label"])


ORIGINAL_TASKS: dict[str, OriginalTask] = {task.name: task for task in (
    OriginalTask("sst2", lambda r: f"Review :{r['sentence']}\nSentiment :", _after("Sentiment :", strip=True),
                 (("positive", 1), ("negative", 0)), _label),
    OriginalTask("mrpc", lambda r: ("Are the sentences paraphrases of each other.\n"
                                    f"Sentence 1: {r['sentence1']}\nSentence 2: {r['sentence2']}\nAnswer:"),
                 _after("Answer:"), (("yes", 1), ("no", 0)), _label),
    OriginalTask("cola", lambda r: f"Is this sentence linguistically acceptable?\nSentence: {r['sentence']}\nAnswer: ",
                 _after("Answer:"), (("yes", 1), ("no", 0)), _label),
    # As the original: 'false' is tested first, and 'true' -> 1 is scored against GLUE's label 1
    # (not_entailment), the inversion its RTE code has.
    OriginalTask("rte", lambda r: f"{r['sentence1']}\nquestion: {r['sentence2']} True or False?\nanswer:",
                 _after("answer:"), (("false", 0), ("true", 1)), _label),
    OriginalTask("mmlu", lambda r: (f"Question: {r['question']}\n" + "".join(
                     f"({letter}) {choice}\n" for letter, choice in zip("ABCD", r["choices"])) + "Answer:"),
                 _continuation, (("a\n", 0), ("b\n", 1), ("c\n", 2), ("d\n", 3)), lambda r: int(r["answer"])),
    OriginalTask("nli", lambda r: f"{r['sentence1']} entails the {r['sentence2']} True or False? Answer:",
                 _after("True or False? Answer:"), (("true", 1), ("false", 0)),
                 lambda r: int(r["label"] == "entailment")),
)}


def original_metrics(gold: Sequence[int], pred: Sequence[int]) -> dict[str, float | int]:
    """Accuracy (invalid = wrong), weighted F1 and MCC over the labels seen (-1 included), n, invalid."""
    if len(gold) != len(pred) or not gold:
        raise ValueError(f"need equally many gold and predicted labels (got {len(gold)}, {len(pred)})")
    accuracy = sum(g == p for g, p in zip(gold, pred)) / len(gold)
    return {"accuracy": float(accuracy), "f1": float(f1_score(gold, pred, average="weighted", zero_division=0)),
            "mcc": float(matthews_corrcoef(gold, pred)), "n": len(gold), "invalid": sum(p == INVALID for p in pred)}


def examples_after_pool(records: Sequence[Record], n: int) -> list[Record]:
    """The original's test examples: ``[10 : 10 + n]`` of the file, in file order."""
    return list(records[FEW_SHOT_POOL : FEW_SHOT_POOL + n])


def evaluate_original(model: nn.Module, tok, task: OriginalTask, records: Sequence[Record],
                      batch_size: int = 16) -> dict[str, float | int]:
    """The task's metrics on ``records`` with greedy answers (top-1 sampling is greedy)."""
    prompts = [task.prompt(r) for r in records]
    decoded: list[str] = []
    for start in range(0, len(prompts), batch_size):
        decoded += sample_continuations(model, tok, prompts[start : start + batch_size], NEW_TOKENS, top_k=1)
    pred = [task.predict(p, d) for p, d in zip(prompts, decoded)]
    return original_metrics([task.gold(r) for r in records], pred)
