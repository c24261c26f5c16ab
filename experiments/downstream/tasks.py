"""The downstream task table: one row per general-capability task.

A row says which JSON file holds the task, how to turn one record into a zero-shot prompt, which
record field holds the gold label, and which label word stands for each gold value. Adding a
task is adding a row to ``TASKS``; nothing else branches on a task's name.

Every prompt ends with ``ANSWER_CUE``: the label words are tokenized as a continuation of that
cue (see ``scoring.continuation_ids``), so all prompts must share it.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

ANSWER_CUE = "Answer:"
LETTERS = ("A", "B", "C", "D")

Record = Mapping[str, Any]


@dataclass(frozen=True)
class DownstreamTask:
    name: str
    filename: str                        # inside the glue folder, e.g. "sst2.json"
    prompt: Callable[[Record], str]      # record -> prompt text ending in ANSWER_CUE
    label_field: str                     # record field holding the gold label
    labels: tuple[tuple[Any, str], ...]  # (gold value as stored in the file, label word) pairs
    positive: Any = None                 # gold value counted as positive for binary F1

    def __post_init__(self) -> None:
        values = self.label_values
        if len(values) < 2 or len(set(values)) != len(values):
            raise ValueError(f"task {self.name}: labels need >= 2 distinct gold values, got {values}")
        if len(values) == 2 and self.positive not in values:
            raise ValueError(f"task {self.name}: binary task needs positive in {values}")

    @property
    def label_values(self) -> tuple[Any, ...]:
        return tuple(value for value, _ in self.labels)

    @property
    def label_words(self) -> tuple[str, ...]:
        return tuple(word for _, word in self.labels)

    @property
    def is_binary(self) -> bool:
        return len(self.labels) == 2

    def gold_index(self, record: Record) -> int:
        """Index into ``labels`` of a record's gold label (type-strict: "1" is not 1)."""
        value = record[self.label_field]
        for index, (expected, _) in enumerate(self.labels):
            if type(value) is type(expected) and value == expected:
                return index
        raise ValueError(f"task {self.name}: label {value!r} not in the declared set {self.label_values}")


def _clean(text: str) -> str:
    # Several GLUE files keep tokenizer-style trailing spaces ("the film . "); drop them.
    return " ".join(str(text).split())


def _lettered(options: Sequence[str]) -> str:
    if len(options) != len(LETTERS):
        raise ValueError(f"expected {len(LETTERS)} options, got {len(options)}")
    return "".join(f"({letter}) {_clean(option)}\n" for letter, option in zip(LETTERS, options))


def _sentiment_prompt(record: Record) -> str:
    return f"Review: {_clean(record['sentence'])}\nIs the sentiment of this review positive or negative?\n{ANSWER_CUE}"


def _paraphrase_prompt(record: Record) -> str:
    return (f"Sentence 1: {_clean(record['sentence1'])}\nSentence 2: {_clean(record['sentence2'])}\n"
            f"Do both sentences mean the same thing? Yes or No?\n{ANSWER_CUE}")


def _acceptability_prompt(record: Record) -> str:
    return f"Sentence: {_clean(record['sentence'])}\nIs this sentence grammatically correct? Yes or No?\n{ANSWER_CUE}"


def _entailment_prompt(record: Record) -> str:
    return f"{_clean(record['sentence1'])}\nQuestion: {_clean(record['sentence2'])} True or False?\n{ANSWER_CUE}"


def _mmlu_prompt(record: Record) -> str:
    subject = str(record["subject"]).replace("_", " ")
    return (f"The following is a multiple choice question about {subject}.\n"
            f"Question: {_clean(record['question'])}\n{_lettered(record['choices'])}{ANSWER_CUE}")


def _dialogue_prompt(record: Record) -> str:
    return (f"Dialogue: {_clean(record['article'])}\nWhich option is the best next turn of the dialogue?\n"
            f"{_lettered(record['options'])}{ANSWER_CUE}")


_LETTER_WORDS = tuple(f" {letter}" for letter in LETTERS)

TASKS: Mapping[str, DownstreamTask] = MappingProxyType({task.name: task for task in (
    DownstreamTask("sst2", "sst2.json", _sentiment_prompt, "label",
                   ((0, " negative"), (1, " positive")), positive=1),
    DownstreamTask("mrpc", "mrpc.json", _paraphrase_prompt, "label",
                   ((0, " No"), (1, " Yes")), positive=1),
    DownstreamTask("cola", "cola.json", _acceptability_prompt, "label",
                   ((0, " No"), (1, " Yes")), positive=1),
    # GLUE RTE stores 0 = entailment, 1 = not_entailment (the reverse of MRPC/CoLA).
    DownstreamTask("rte", "rte.json", _entailment_prompt, "label",
                   ((0, " True"), (1, " False")), positive=0),
    DownstreamTask("mmlu", "mmlu.json", _mmlu_prompt, "answer",
                   tuple(zip(range(4), _LETTER_WORDS))),
    DownstreamTask("nli", "nli.json", _entailment_prompt, "label",
                   (("entailment", " True"), ("not_entailment", " False")), positive="entailment"),
    DownstreamTask("sentiment_analysis", "sentiment_analysis.json", _sentiment_prompt, "label",
                   (("0", " negative"), ("1", " positive")), positive="1"),
    DownstreamTask("dialogue", "dialogue.json", _dialogue_prompt, "answers",
                   tuple(zip(LETTERS, _LETTER_WORDS))),
)})

# The six tasks the NSE/AlphaEdit papers report; the other rows are opt-in.
DEFAULT_TASKS: tuple[str, ...] = ("sst2", "mrpc", "cola", "rte", "mmlu", "nli")

# The task files ship with the project, as the original kept them in its repository (provenance
# in data/SOURCES.md); --glue_dir points elsewhere.
SHIPPED_GLUE_DIR = Path(__file__).resolve().parent / "data"


def get_task(name: str) -> DownstreamTask:
    if name not in TASKS:
        raise ValueError(f"unknown downstream task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name]


def check_glue_dir(glue_dir: str | Path) -> Path:
    path = Path(glue_dir)
    if not path.is_dir():
        raise FileNotFoundError(
            f"downstream data folder {path} does not exist; it must hold the task files "
            f"({', '.join(t.filename for t in TASKS.values())}); the shipped ones are in {SHIPPED_GLUE_DIR}")
    return path


def load_records(task: DownstreamTask, glue_dir: str | Path) -> list[dict]:
    """All records of a task's file, each checked to carry a gold label from the declared set."""
    path = check_glue_dir(glue_dir) / task.filename
    if not path.is_file():
        raise FileNotFoundError(
            f"task {task.name!r} needs {task.filename} in {path.parent}; put the file there "
            f"(the shipped copies are in {SHIPPED_GLUE_DIR})")
    with path.open(encoding="utf-8") as handle:
        records = json.load(handle)
    if not isinstance(records, list) or not records:
        raise ValueError(f"{path} must hold a non-empty JSON list of records")
    for position, record in enumerate(records):
        try:
            task.gold_index(record)
        except (KeyError, ValueError) as err:
            raise ValueError(f"{path}, record {position}: {err}") from err
    return records


def select_subset(task: DownstreamTask, records: Sequence[Record], n: int, seed: int) -> list[Record]:
    """A label-balanced, seeded choice of ``n`` records; the same for the same (data, n, seed).

    Labels are visited round-robin over independently shuffled per-label pools, so classes stay
    balanced while they last; the result depends on nothing but its arguments, which keeps the
    subset identical at every evaluation point of a run.
    """
    if n < 1:
        raise ValueError(f"n_per_task must be >= 1, got {n}")
    rng = random.Random(seed)
    pools: list[list[Record]] = [[] for _ in task.labels]
    for record in records:
        pools[task.gold_index(record)].append(record)
    for pool in pools:
        rng.shuffle(pool)
    chosen: list[Record] = []
    depth = 0
    while len(chosen) < min(n, len(records)):
        for pool in pools:
            if depth < len(pool) and len(chosen) < n:
                chosen.append(pool[depth])
        depth += 1
    return chosen
