"""The experiment's settings: one declaration per setting, from which the CLI and the resume rules follow.

Each field of :class:`RunConfig` carries its help text, its choices or valid range, its group on
``--help``, and whether a resumed run may change it. ``experiments.evaluate`` builds its parser from
these fields (:func:`add_run_arguments`); :func:`check_values` applies the same rules to a config
built in Python; the resume check reads :func:`resumable_settings`.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from experiments.algorithms import ALGORITHMS
from experiments.downstream.evaluation import PROTOCOLS
from experiments.metrics.fluency import DEPARTURES
from util.model_loading import DEVICE_MAPS, DTYPES

SEED_LIMIT = 2**32 - 1  # case seeds are offsets from --seed; torch generators take < 2**64


class RunError(ValueError):
    """A bad experiment setting, reported before any run folder is created."""


class SettingError(RunError):
    """A setting outside its choices or range; the message names the flag and what it accepts."""


@dataclass(frozen=True)
class Rule:
    """Valid values of a numeric setting: ``low <= value <= high``, or one of ``also`` (e.g. -1: none)."""

    low: int
    meaning: str
    high: int | None = None
    also: tuple[int, ...] = ()

    def problem(self, value: int) -> str | None:
        if value in self.also or (value >= self.low and (self.high is None or value <= self.high)):
            return None
        allowed = f">= {self.low}" if self.high is None else f"between {self.low} and {self.high}"
        allowed += "".join(f" or {v}" for v in self.also)
        return f"must be {allowed} ({self.meaning}), got {value}"


def setting(default: Any = dataclasses.MISSING, help: str = "", *, group: str, rule: Rule | None = None,
            choices: Callable[[], Sequence[str]] | None = None, resumable: bool = False, metavar: str | None = None,
            factory: Callable[[], Any] | None = None, before: Any = dataclasses.MISSING) -> Any:
    """A RunConfig field with what the CLI and the checks need to know about it.

    ``before``: what a run folder written before this setting existed meant, where that is not the
    default (a default that changed what is computed); resuming such a run keeps that meaning."""
    metadata = {"help": help, "group": group, "rule": rule, "choices": choices, "resumable": resumable,
                "metavar": metavar, "before": before}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


GROUPS = {
    "run": "what to run",
    "data": "which records",
    "scoring": "scoring and curves",
    "compute": "device and memory",
    "folders": "folders (default: globals.yml)",
    "resume": "stopping, resuming and saving",
}


def _algorithms() -> list[str]:
    return sorted(ALGORITHMS)


def _ds_names() -> Sequence[str]:
    from experiments.ds_kinds import ds_names

    return ds_names()


@dataclass
class RunConfig:
    """The experiment's settings (the CLI flags); saved as ``args`` in the run folder's config.json."""

    alg_name: str = setting(help="editing method", group="run", choices=_algorithms, metavar="ALG")
    model_name: str = setting(help="hub id, local model folder, or a .gguf file", group="run", metavar="MODEL")
    hparams_fname: str = setting(help="file name under hparams/<ALG>/, or a path to a JSON file", group="run",
                                 resumable=True, metavar="FILE")  # compared by content (params.json), not by name
    ds_name: str = setting(help="mcf (MultiCounterFact), cf (CounterFact) or zsre", group="data", choices=_ds_names,
                           metavar="DS")
    dataset_size_limit: int | None = setting(None, "edit only the first N records", group="data",
                                             rule=Rule(1, "leave it out to edit every record"))
    num_edits: int = setting(1, "edits per batch (cf allows only 1)", group="run", rule=Rule(1, "edits per batch"))
    downstream_eval_steps: int = setting(
        0, "run the general-capability tasks on the unedited model and every N batches (0: never)", group="scoring",
        rule=Rule(0, "0 turns the general-capability tasks off"))
    continue_from_run: str | None = setting(None, "resume results/<ALG>/<run_NNN> from its last completed batch",
                                            group="resume", resumable=True)
    skip_generation_tests: bool = setting(False, "no generation metrics (Fluency, Consistency)", group="scoring")
    generation_test_interval: int = setting(1, "generation metrics on every N-th case (-1: none)", group="scoring",
                                            rule=Rule(1, "every N-th case, or -1 for none", also=(-1,)))
    conserve_memory: bool = setting(False, "keep the rewinding copy of the original weights on the CPU",
                                    group="compute", resumable=True)
    use_cache: bool = setting(False, "cache target values z per case on disk and reuse them", group="compute",
                              resumable=True)
    device: str | None = setting(None, "torch device (default: cuda if available, else mps, else cpu)",
                                 group="compute", resumable=True)
    device_map: str | None = setting(
        None, "spread the model over every GPU (and the CPU) with accelerate instead of one --device; edited "
        "layers must not be offloaded", group="compute", choices=lambda: DEVICE_MAPS, resumable=True)
    dtype: str = setting("float32", "model weights (solves stay float64)", group="compute", choices=lambda: list(DTYPES))
    seed: int = setting(0, "seeds context templates and generation tests", group="run",
                        rule=Rule(0, "a seed for the random generators", high=SEED_LIMIT))
    data_dir: str | None = setting(None, "dataset folder (default DATA_DIR in globals.yml)", group="folders")
    ds_file: str | None = setting(None, "read the dataset from this JSON file instead of the data folder",
                                  group="data")
    mom2_dataset: str | None = setting(
        None, "override the hparams' statistics corpus: a datasets hub name, or a local .txt/.jsonl file or folder",
        group="run", resumable=True)  # compared by content (params.json)
    stats_dir: str | None = setting(None, "covariance cache folder (default STATS_DIR in globals.yml)",
                                    group="folders", resumable=True)
    results_dir: str | None = setting(None, "where run folders go (default RESULTS_DIR in globals.yml)",
                                      group="folders", resumable=True)
    glue_dir: str | None = setting(None, "general-capability task files (default: experiments/downstream/data)",
                                   group="folders")
    downstream_n_per_task: int = setting(100, "examples per general-capability task", group="scoring",
                                         rule=Rule(1, "examples per task"))
    downstream_protocol: str = setting(
        "original", "how the general-capability tasks are scored: original (the original code's prompts, greedy "
        "answers, weighted F1) or likelihood (the label word of highest likelihood)", group="scoring",
        choices=lambda: PROTOCOLS, before="likelihood")
    values_batch_size: int | None = setting(
        None, "requests whose values are optimised together (default: the whole batch; lower it if memory runs out)",
        group="compute", rule=Rule(1, "leave it out for the whole batch"))
    eval_pre_edit: bool = setting(False, "also score every case on the unedited model ('pre' row)", group="scoring")
    generation_eval: bool = setting(
        False, "also score every case by greedy generation (answer up to a period or newline; exact match and "
        "token F1) beside teacher forcing", group="scoring")
    stop_after_batches: int | None = setting(
        None, "stop cleanly after N batches (e.g. a time-limited job); continue with --continue_from_run",
        group="resume", rule=Rule(0, "batches to edit before stopping"), resumable=True)
    dataset_offset: int = setting(
        0, "skip the first N records (with --dataset_size_limit: edit records N..N+limit-1), e.g. to continue "
        "editing a --save_model folder with the records after the ones it was edited with", group="data",
        rule=Rule(0, "records to skip"))
    curve_every: int = setting(
        0, "every N batches, score the cases edited so far teacher-forced (Efficacy, Generalization, "
        "Specificity) into curves/edits_NNNNNN.json, for summarize.py --plot (0: never)", group="scoring",
        rule=Rule(0, "0 turns curves off"))
    save_model: str | None = setting(
        None, "after the last batch, write the edited model and tokenizer (Hugging Face folder, safetensors) and "
        "the editor state to DIR; --model_name=DIR continues editing from it", group="resume", metavar="DIR",
        resumable=True)
    load_editor_state: str | None = setting(
        None, "editor state to continue from (a file, or a --save_model folder); default: <model_name>/"
        "editor_state.pt when the model is a --save_model folder; 'none': start from the model's weights",
        group="resume", metavar="PATH")
    metric_departures: list[str] = setting(
        help="depart from the original Fluency/Consistency code (README, comparability): "
        + "; ".join(f"{k}: {v}" for k, v in DEPARTURES.items()), group="scoring", choices=lambda: sorted(DEPARTURES),
        metavar="NAME", factory=list)


def resumable_settings() -> frozenset[str]:
    """Settings a resumed run may change: they change neither what is computed nor how it is scored."""
    return frozenset(f.name for f in dataclasses.fields(RunConfig) if f.metadata["resumable"])


def default_settings() -> dict[str, Any]:
    """Every optional setting's default."""
    return {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in dataclasses.fields(RunConfig) if not _required(f)}


def settings_before() -> dict[str, Any]:
    """What a run folder that lacks a setting meant: the setting's ``before``, else its default."""
    marked = {f.name: f.metadata["before"] for f in dataclasses.fields(RunConfig)
              if f.metadata.get("before", dataclasses.MISSING) is not dataclasses.MISSING}
    return {**default_settings(), **marked}


def check_values(cfg: RunConfig) -> None:
    """Choices and ranges of a config built in Python (the CLI checks them while parsing)."""
    for f in dataclasses.fields(RunConfig):
        value, spec = getattr(cfg, f.name), f.metadata
        values = value if isinstance(value, list) else [value]
        for item in values:
            if item is None:
                continue
            if spec["choices"] and item not in spec["choices"]():
                raise SettingError(f"--{f.name}={item!r} is not one of {', '.join(spec['choices']())}")
            if spec["rule"] and (problem := spec["rule"].problem(item)):
                raise SettingError(f"--{f.name} {problem}")


class SettingsParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, like the run's own: ``error: <what> ...; <fix>``."""

    def error(self, message: str) -> typing.NoReturn:
        flag = message.split(": ", 1)
        if flag[0].startswith("argument ") and len(flag) == 2 and flag[1].startswith(flag[0][9:].split("/")[0]):
            message = flag[1]  # "argument --x: --x=... is not ...": the flag once
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field, grouped as GROUPS; types, defaults, choices and help from the field."""
    hints = typing.get_type_hints(RunConfig)
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for f in dataclasses.fields(RunConfig):
        groups[f.metadata["group"]].add_argument(f"--{f.name}", **_argument_options(f, hints[f.name]))


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _argument_options(f: dataclasses.Field, hint: Any) -> dict[str, Any]:
    spec = f.metadata
    options: dict[str, Any] = {"help": spec["help"]}
    if _required(f):
        options["required"] = True
    else:
        options["default"] = default_settings()[f.name]
    if hint is bool:
        return {**options, "action": "store_true"}
    if typing.get_origin(hint) is list:
        options["nargs"] = "+"
    if spec["choices"]:
        names = spec["choices"]()
        options["type"] = _choice_of(f.name, names)
        options["help"] += f" (one of: {', '.join(names)}; any case)"
    elif int in (hint, *typing.get_args(hint)):
        options["type"] = _number_in(f.name, spec["rule"])
    options["metavar"] = spec["metavar"] or _metavar(f.name, hint)
    if options.get("default") not in (None, [], False):
        options["help"] += f" (default: {options['default']})"
    return options


def _metavar(name: str, hint: Any) -> str:
    if int in (hint, *typing.get_args(hint)):
        return "N"
    return "DIR" if name.endswith("_dir") else "PATH" if name.endswith(("_file", "_dataset")) else "NAME"


def _choice_of(name: str, names: Sequence[str]) -> Callable[[str], str]:
    """A value from ``names`` typed in any case (nse, Nse -> NSE); anything else lists the choices."""
    by_lower = {name.lower(): name for name in names}

    def parse(text: str) -> str:
        if text.lower() in by_lower:
            return by_lower[text.lower()]
        raise argparse.ArgumentTypeError(f"--{name}={text!r} is not one of {', '.join(names)}")

    return parse


def _number_in(name: str, rule: Rule | None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--{name}={text!r} is not a whole number") from None
        if rule and (problem := rule.problem(value)):
            raise argparse.ArgumentTypeError(f"--{name} {problem}")
        return value

    return parse
