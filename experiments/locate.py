"""``python -m experiments.locate``: find the layers to edit in a new model.

1. Causal tracing (ROME, Meng et al. 2022) on facts the model knows (ROME's known_1000.json by
   default): the subject's embeddings corrupted by noise of 3 x the subjects' embedding std, the
   indirect effect of restoring the residual stream, the MLPs and the attention at each layer and
   token, averaged per token class x layer; written as trace.json and drawn as trace.png.
2. An edit sweep: windows of consecutive layers ending around the layer where the MLP's effect at
   the last subject token peaks (or the windows given) are each edited, one batch, with a MEMIT-family
   method on held-out CounterFact records (records 2000-2190 of the test file by default, not the
   2000 the protocol reports), and scored teacher-forced: Efficacy / Generalization / Specificity
   (sweep.json, sweep.csv). Tracing does not reliably predict where editing works (Hase et al. 2023,
   arXiv 2301.04213): the sweep picks the window, the tracing peak is reported beside it.
3. One starting hyperparameter file per method (hparams/<METHOD>.json) with the chosen layers and a
   ``notes`` field saying how they were chosen.

Example:
    python -m experiments.locate --model_name=HuggingFaceTB/SmolLM2-135M --out=results/locate_smollm2 \\
        --methods=NSE,MEMIT,AlphaEdit --n_facts=100 --samples=10
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Sequence
from io import StringIO
from pathlib import Path
from typing import Any

import torch
from torch import nn

from experiments.algorithms import get_algorithm
from experiments.anchor_pool import editor_inputs
from experiments.ds_kinds import kind_named, load_edit_dataset
from experiments.hparams_files import load_hparams
from experiments.metrics.summary import summarize_cases
from experiments.records import request_of
from memit.hparams import MEMITHyperParams
from rome.hparams import ROMEHyperParams
from util.architectures import num_layers
from util.atomic_files import write_json_atomic, write_text_atomic
from util.causal_trace import (KINDS, TOKEN_CLASSES, ClassAverages, Tracer, draw_noise, prepare_fact, site_names,
                               subject_embedding_std, token_classes, trace_table)
from util.globals import REPO_ROOT, resolve_global_dir
from util.greedy import greedy_token_ids
from util.model_loading import DTYPES, load_model_and_tokenizer
from util.module_hparams import MODULE_KEYS
from util.requests import with_leading_space
from util.tokens import encode_target, pad_token_id

log = logging.getLogger("experiments.locate")

KNOWNS = REPO_ROOT / "assets" / "known_1000.json"
HELD_OUT = REPO_ROOT / "assets" / "counterfact_test2191_last191.json"  # not among the protocol's 2000 records
PROTOCOL_RECORDS = REPO_ROOT / "assets" / "counterfact_test2191_first2000.json"
# Used where no shipped file matches the model: the paper's own settings (GPT-2 XL) for every value
# but the layers, which every window method has a file of.
FALLBACK_STEM = "gpt2-xl"
MLP_PEAK_CLASS = "last subject token"  # where ROME and MEMIT read their keys


class LocateError(RuntimeError):
    """A problem the user can fix; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class LocateConfig:
    model_name: str
    out: str
    methods: tuple[str, ...] = ("NSE", "MEMIT", "AlphaEdit")
    facts: str = str(KNOWNS)
    n_facts: int = 1000
    samples: int = 10
    noise_factor: float = 3.0
    window: int = 10
    seed: int = 0
    trace_rows: int = 256
    positions: str = "all"
    trace: str | None = None
    command: str = ""  # as typed, for the notes
    base_hparams: str | None = None
    windows: str | None = None
    spread: int = 2
    sweep_method: str = "MEMIT"
    sweep_file: str = str(HELD_OUT)
    sweep_size: int = 10
    mom2_dataset: str | None = None
    mom2_n_samples: int | None = None
    stats_dir: str | None = None
    device: str | None = None
    dtype: str = "float32"


# --- facts and tracing -------------------------------------------------------------------------

def load_facts(path: str) -> list[dict]:
    """Known facts (ROME's layout): each with prompt, subject (inside the prompt) and attribute."""
    try:
        facts = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LocateError(f"--facts: cannot read {path} as JSON ({err})") from None
    if not isinstance(facts, list) or not facts:
        raise LocateError(f"--facts: {path} must hold a non-empty JSON list of facts")
    for index, fact in enumerate(facts):
        if not isinstance(fact, dict) or not all(isinstance(fact.get(k), str) and fact[k].strip()
                                                 for k in ("prompt", "subject", "attribute")):
            raise LocateError(f"--facts: fact #{index} of {path} needs non-empty 'prompt', 'subject' and 'attribute'")
        if fact["subject"] not in fact["prompt"]:
            raise LocateError(f"--facts: fact #{index} of {path}: subject {fact['subject']!r} is not in its prompt")
    return facts


def greedy_answer(model: nn.Module, tok, fact, n_tokens: int) -> str:
    """The clean run's answer continued greedily to ``n_tokens`` tokens, as text."""
    ids = list(fact.input_ids) + [fact.answer]
    rest = greedy_token_ids(model, [ids], n_tokens - 1, pad_token_id(tok), getattr(tok, "eos_token_id", None))[0]
    return tok.decode([fact.answer] + rest)


def knows(model: nn.Module, tok, fact, attribute: str) -> bool:
    """Whether the greedy answer starts with the known attribute (ROME asks that its first token be the
    whole attribute; a tokenizer that splits the word is allowed its tokens here)."""
    n_tokens = len(encode_target(tok, with_leading_space(attribute)))
    return greedy_answer(model, tok, fact, n_tokens).strip().startswith(attribute.strip())


@dataclasses.dataclass
class TraceTotals:
    """What the tracing pass collects over facts."""

    averages: dict[str, ClassAverages]
    corrupted: list[float] = dataclasses.field(default_factory=list)
    clean: list[float] = dataclasses.field(default_factory=list)
    traced_ids: list[Any] = dataclasses.field(default_factory=list)
    unknown_ids: list[Any] = dataclasses.field(default_factory=list)
    unusable_ids: list[Any] = dataclasses.field(default_factory=list)  # subject not found as tokens


def trace_one(model: nn.Module, fact, cfg: LocateConfig, level: float, names: dict[str, list[str]],
              seed: int, totals: TraceTotals) -> None:
    """Every kind's table of one known fact, added to the class averages."""
    start, end = fact.subject
    hidden = model.get_input_embeddings().weight.shape[-1]
    noise = draw_noise(level, cfg.samples, end - start, hidden, seed)  # the same draws for every restoration
    tracer = Tracer(model, fact, noise, [n for kind in KINDS for n in names[kind]], cfg.trace_rows)
    corrupted = float(tracer.probs([frozenset()])[0])
    positions = traced_positions(fact, cfg.positions)
    # With --positions=last_subject only that class is filled: a one-token subject's first token is its
    # last, and a row of one-token subjects alone would read as "the first subject token".
    classes = {name: where if cfg.positions == "all" or name == MLP_PEAK_CLASS else []
               for name, where in token_classes(fact.subject, len(fact.input_ids)).items()}
    for kind in KINDS:
        table = trace_table(tracer, kind, names[kind], positions, cfg.window)
        totals.averages[kind].add(table, positions[0], corrupted, classes)
    totals.corrupted.append(corrupted)
    totals.clean.append(fact.clean_prob)


def traced_positions(fact, which: str) -> range:
    """"all": from the subject's first token to the last (tokens before the subject belong to no class);
    "last_subject": its last token only (ROME's token_range="subject_last"; about a tenth of the work)."""
    start, end = fact.subject
    return range(end - 1, end) if which == "last_subject" else range(start, len(fact.input_ids))


def trace_facts(model: nn.Module, tok, facts: list[dict], cfg: LocateConfig) -> dict:
    """Causal tracing over the first ``cfg.n_facts`` facts the model knows; the trace.json payload."""
    sigma = subject_embedding_std(model, tok, [f["subject"] for f in facts])  # over every fact's subject, as ROME
    level = cfg.noise_factor * sigma
    log.info("noise: %.4g = %g x %.4g (std of the embeddings of the %d facts' subject tokens)", level,
             cfg.noise_factor, sigma, len(facts))
    n_layers = num_layers(model)
    if cfg.window >= 2 * n_layers - 1:
        log.warning("--window=%d restores every layer's MLP and attention wherever it is centred (the model has %d "
                    "layers): their columns will all be the same; pass a smaller --window", cfg.window, n_layers)
    names = {kind: site_names(model, kind) for kind in KINDS}
    totals = TraceTotals({kind: ClassAverages(n_layers) for kind in KINDS})
    started, examined = time.time(), 0
    for index, raw in enumerate(facts):
        if len(totals.traced_ids) >= cfg.n_facts:
            break
        examined += 1
        if examine(model, tok, raw, index, cfg, level, names, totals):
            _log_progress(len(totals.traced_ids), cfg.n_facts, examined, len(totals.unknown_ids), started)
    if not totals.traced_ids:
        raise LocateError(f"the model knows none of the {examined} facts of {cfg.facts} examined: its greedy answer "
                          "starts with the fact's attribute for none. Pass --facts with facts it knows (same layout), "
                          "or check that --model_name is the model meant")
    log.info("traced %d known facts; %d of the %d examined skipped: the model's greedy answer does not start with "
             "their attribute", len(totals.traced_ids), len(totals.unknown_ids), examined)
    return trace_payload(cfg, totals, sigma, level, examined, time.time() - started)


def examine(model: nn.Module, tok, raw: dict, index: int, cfg: LocateConfig, level: float,
            names: dict[str, list[str]], totals: TraceTotals) -> bool:
    """Trace fact ``raw`` if the model knows it; whether it was traced. Facts skipped are counted."""
    fact_id = raw.get("known_id", index)
    try:
        fact = prepare_fact(model, tok, raw["prompt"], raw["subject"])
    except ValueError as err:  # one odd fact must not end hours of tracing
        log.warning("fact %s skipped: %s", fact_id, err)
        totals.unusable_ids.append(fact_id)
        return False
    if not knows(model, tok, fact, raw["attribute"]):
        totals.unknown_ids.append(fact_id)
        return False
    trace_one(model, fact, cfg, level, names, cfg.seed * 1_000_003 + index, totals)  # a noise seed per fact
    totals.traced_ids.append(fact_id)
    return True


def _log_progress(done: int, wanted: int, examined: int, unknown: int, started: float) -> None:
    if done % max(1, wanted // 20) and done != wanted:
        return
    per_fact = (time.time() - started) / done
    log.info("traced %d/%d known facts (%d examined, %d unknown so far), %.1f s per traced fact, about %.0f min "
             "left", done, wanted, examined, unknown, per_fact, per_fact * (wanted - done) / 60)


def _finite(values: torch.Tensor) -> list:
    """Nested lists of floats, NaN (an empty class) as null: JSON has no NaN."""
    return [[None if math.isnan(v) else v for v in row] for row in values.tolist()]


def trace_payload(cfg: LocateConfig, totals: TraceTotals, sigma: float, level: float, examined: int,
                  seconds: float) -> dict:
    kinds = {}
    for kind, averages in totals.averages.items():
        probs, effects = averages.means()
        kinds[kind] = {"mean_indirect_effect": _finite(effects), "mean_restored_prob": _finite(probs),
                       "positions_per_class": averages.counts.tolist()}
    payload = {
        "model": cfg.model_name, "facts_file": cfg.facts, "token_classes": list(TOKEN_CLASSES),
        "noise": {"factor": cfg.noise_factor, "subject_embedding_std": sigma, "level": level,
                  "samples_per_fact": cfg.samples, "seed": cfg.seed},
        "window": cfg.window, "positions": cfg.positions,
        "facts": {"examined": examined, "traced": len(totals.traced_ids), "skipped_unknown": len(totals.unknown_ids),
                  "traced_ids": totals.traced_ids, "unknown_ids": totals.unknown_ids,
                  "skipped_subject_not_in_tokens": totals.unusable_ids},
        "mean_clean_prob": sum(totals.clean) / len(totals.clean),
        "mean_corrupted_prob": sum(totals.corrupted) / len(totals.corrupted),
        "kinds": kinds, "seconds": round(seconds, 1),
    }
    payload["peaks"] = {kind: peak_of(payload, kind) for kind in KINDS}
    return payload


def peak_of(trace: dict, kind: str, token_class: str = MLP_PEAK_CLASS) -> dict:
    """The layer where ``kind``'s mean indirect effect at ``token_class`` is highest."""
    row = trace["kinds"][kind]["mean_indirect_effect"][trace["token_classes"].index(token_class)]
    values = [v for v in row if v is not None]
    if not values:
        raise LocateError(f"no traced fact has a {token_class!r}; nothing to find a peak in")
    layer = row.index(max(values))
    return {"token_class": token_class, "layer": layer, "indirect_effect": row[layer]}


def read_trace(path: str, model_name: str) -> dict:
    """An earlier run's trace.json (tracing a large model takes hours; a sweep of other windows needs none)."""
    try:
        trace = json.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise LocateError(f"--trace: cannot read {path} as JSON ({err})") from None
    if not isinstance(trace, dict) or not {"model", "kinds", "peaks", "facts"} <= set(trace):
        raise LocateError(f"--trace: {path} is not a trace.json written by python -m experiments.locate")
    if trace["model"] != model_name:
        raise LocateError(f"--trace: {path} traced {trace['model']}, not --model_name={model_name}")
    log.info("tracing read from %s (%d facts)", path, trace["facts"]["traced"])
    return trace


# --- the figure --------------------------------------------------------------------------------

def draw_figure(trace: dict, path: Path) -> None:
    """Three heatmaps (residual, MLP, attention): mean indirect effect per token class x layer."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display is needed or wanted
    from matplotlib import pyplot as plt

    titles = {"residual": ("single restored layer output", "Purples"),
              "mlp": (f"center of {trace['window']} restored MLP layers", "Greens"),
              "attn": (f"center of {trace['window']} restored attention layers", "Reds")}
    fig, axes = plt.subplots(1, len(KINDS), figsize=(5.2 * len(KINDS), 2.8), constrained_layout=True)
    for ax, kind in zip(axes, KINDS):
        values = torch.tensor([[math.nan if v is None else v for v in row]
                               for row in trace["kinds"][kind]["mean_indirect_effect"]])
        image = ax.pcolormesh(values.numpy(), cmap=titles[kind][1])
        ax.invert_yaxis()
        step = max(1, values.shape[1] // 10)  # about ten labelled layers, at the cells' centres
        ax.set_xticks([i + 0.5 for i in range(0, values.shape[1], step)], list(range(0, values.shape[1], step)))
        ax.set_yticks([i + 0.5 for i in range(len(TOKEN_CLASSES))], TOKEN_CLASSES if kind == KINDS[0] else [])
        ax.set_xlabel(titles[kind][0])
        ax.set_title(f"{kind}: peak at layer {trace['peaks'][kind]['layer']} (last subject token)", fontsize=9)
        fig.colorbar(image, ax=ax, label="mean indirect effect")
    facts = trace["facts"]
    fig.suptitle(f"{Path(trace['model']).name}: {facts['traced']} known facts, P(answer) clean "
                 f"{trace['mean_clean_prob']:.3f}, corrupted {trace['mean_corrupted_prob']:.3f}", fontsize=10)
    fig.savefig(path, dpi=150)
    plt.close(fig)


# --- base hyperparameters ----------------------------------------------------------------------

def _normalised(name: str) -> str:
    return name.lower().replace("/", "_")


def base_hparams(alg_name: str, model_name: str, stem: str | None) -> tuple[Any, str, bool]:
    """(hyperparameters to start from, where they come from, whether they were made for this model).

    ``stem`` names a shipped file (hparams/<dir>/<stem>.json); without it the longest shipped stem
    inside the model's name (e.g. SmolLM2-135M in SmolLM2-135M-Instruct); failing that the paper's
    GPT-2 XL file, its module paths dropped so the model's own table fills them.
    """
    alg = get_algorithm(alg_name)
    folder = resolve_global_dir("HPARAMS_DIR") / alg.hparams_dir
    if stem is None:
        matches = [p.stem for p in folder.glob("*.json") if _normalised(p.stem) in _normalised(Path(model_name).name)
                   or _normalised(p.stem) in _normalised(model_name)]
        stem = max(matches, key=len, default=None)
        if stem is None:
            return _fallback(alg_name, folder)
    path = folder / f"{stem}.json"
    if not path.is_file():
        raise LocateError(f"--base_hparams={stem}: {path} does not exist (available: "
                          f"{', '.join(sorted(p.stem for p in folder.glob('*.json')))})")
    return load_hparams(alg_name, path), _shown(path), True


def _fallback(alg_name: str, folder: Path) -> tuple[Any, str, bool]:
    path = folder / f"{FALLBACK_STEM}.json"
    if not path.is_file():
        raise LocateError(f"no shipped {alg_name} file matches the model and {path} is missing: pass --base_hparams")
    hp = dataclasses.replace(load_hparams(alg_name, path), **{k: None for k in MODULE_KEYS})
    return hp, f"{_shown(path)} (the paper's GPT-2 XL values; module paths from the model's table)", False


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def window_hparams(base: Any, layers: Sequence[int], n_layers: int, own_model: bool) -> Any:
    """``base`` editing ``layers``; v_loss_layer kept where the base was made for this model and it still
    lies at or after the last edited layer, else the model's last layer."""
    keep = own_model and max(layers) <= base.v_loss_layer < n_layers
    return dataclasses.replace(base, layers=list(layers), v_loss_layer=base.v_loss_layer if keep else n_layers - 1)


def with_statistics(hp: Any, cfg: LocateConfig) -> Any:
    overrides = {k: v for k, v in (("mom2_dataset", cfg.mom2_dataset), ("mom2_n_samples", cfg.mom2_n_samples))
                 if v is not None}
    return dataclasses.replace(hp, **overrides)


# --- windows and the sweep ---------------------------------------------------------------------

def window_label(layers: Sequence[int]) -> str:
    contiguous = list(layers) == list(range(layers[0], layers[-1] + 1))
    return f"{layers[0]}-{layers[-1]}" if contiguous and len(layers) > 1 else ",".join(map(str, layers))


def parse_windows(text: str, n_layers: int) -> list[tuple[int, ...]]:
    """``"3-7,5-9"`` -> [(3..7), (5..9)]; every layer must exist."""
    windows = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            first, _, last = part.partition("-")
            low, high = int(first), int(last or first)
        except ValueError:
            raise LocateError(f"--windows: {part!r} is not FIRST-LAST (e.g. 3-7)") from None
        if not 0 <= low <= high < n_layers:
            raise LocateError(f"--windows: {part!r} must satisfy 0 <= first <= last < {n_layers} (the model's layers)")
        windows.append(tuple(range(low, high + 1)))
    if not windows:
        raise LocateError("--windows is empty; give windows such as 3-7,5-9")
    return windows


def candidate_windows(peak: int, size: int, n_layers: int, spread: int) -> list[tuple[int, ...]]:
    """Windows of ``size`` layers ending at peak - spread .. peak + spread, moved inside the model."""
    size = min(size, n_layers)
    windows: list[tuple[int, ...]] = []
    for end in range(peak - spread, peak + spread + 1):
        end = min(max(end, size - 1), n_layers - 1)
        window = tuple(range(end - size + 1, end + 1))
        if window not in windows:
            windows.append(window)
    return windows


def sweep_records(cfg: LocateConfig, tok) -> list[dict]:
    """The first ``sweep_size`` records of the sweep file, one per subject (they are edited as one batch)."""
    records = list(load_edit_dataset("cf", cfg.sweep_file, tok=tok))
    chosen, subjects = [], set()
    for record in records:
        subject = record["requested_rewrite"]["subject"]
        if subject not in subjects:
            chosen.append(record)
            subjects.add(subject)
        if len(chosen) == cfg.sweep_size:
            break
    if len(chosen) < cfg.sweep_size:
        log.warning("--sweep_size=%d: %s holds %d record(s) with distinct subjects; editing those", cfg.sweep_size,
                    cfg.sweep_file, len(chosen))
    _warn_if_reported(chosen)
    return chosen


def _warn_if_reported(records: list[dict]) -> None:
    if not PROTOCOL_RECORDS.is_file():
        return
    reported = {r["case_id"] for r in json.loads(PROTOCOL_RECORDS.read_text(encoding="utf-8"))}
    shared = [r["case_id"] for r in records if r["case_id"] in reported]
    if shared:
        log.warning("%d sweep record(s) are among the protocol's reported records (%s): the window would be chosen "
                    "on the records it is later scored on", len(shared), PROTOCOL_RECORDS.name)


def scores(model: nn.Module, tok, records: list[dict]) -> dict[str, float]:
    """Efficacy / Generalization / Specificity (x100) and their harmonic mean, as experiments.evaluate scores."""
    kind = kind_named("counterfact")
    summary = summarize_cases(kind.teacher_forced(model, tok, records), kind)
    return {"efficacy": summary["rewrite_success"][0], "generalization": summary["paraphrase_success"][0],
            "specificity": summary["neighborhood_success"][0], "score": summary["score"][0]}


def _restore(editor) -> None:
    """Put back the weights the editor changed: the next window edits the unedited model."""
    with torch.no_grad():
        for key, weight in editor.weights.items():
            weight.copy_(editor.original[key])


def edit_and_score(model: nn.Module, tok, alg_name: str, hp: Any, records: list[dict], templates, stats_dir: Path,
                   seed: int) -> dict:
    """One window: edit every record in one batch, score, undo."""
    started = time.time()
    # No progress bars: the sweep logs one line per window.
    editor = get_algorithm(alg_name).make_editor(model, tok, hp, stats_dir=stats_dir, context_templates=templates,
                                                 seed=seed, progress=False, **editor_inputs(hp))
    try:
        editor.edit([request_of(r, tok) for r in records])
        row = scores(model, tok, records)
    finally:
        _restore(editor)
    return {**row, "records": len(records), "seconds": round(time.time() - started, 1)}


def run_sweep(model: nn.Module, tok, cfg: LocateConfig, windows: list[tuple[int, ...]], base: Any,
              own_model: bool, why: dict[tuple[int, ...], str]) -> list[dict]:
    """The unedited model's scores, then each window's."""
    records = sweep_records(cfg, tok)
    stats_dir = resolve_global_dir("STATS_DIR", cfg.stats_dir)
    templates = get_algorithm(cfg.sweep_method).editor_class.make_context_templates(model, tok, base, cfg.seed)
    n_layers = num_layers(model)
    rows = [{"window": "unedited", "layers": [], "why": "before any edit", **scores(model, tok, records),
             "records": len(records)}]
    for number, window in enumerate(windows, 1):
        hp = with_statistics(window_hparams(base, window, n_layers, own_model), cfg)
        log.info("sweep %d/%d: %s edits layers %s (%d records, one batch)", number, len(windows), cfg.sweep_method,
                 window_label(window), len(records))
        row = edit_and_score(model, tok, cfg.sweep_method, hp, records, templates, stats_dir, cfg.seed)
        rows.append({"window": window_label(window), "layers": list(window), "why": why[window], **row})
        log.info("  %s: efficacy %.1f, generalization %.1f, specificity %.1f, score %.1f (%.0f s)", rows[-1]["window"],
                 row["efficacy"], row["generalization"], row["specificity"], row["score"], row["seconds"])
    return rows


def best_window(rows: list[dict], peak: int) -> dict:
    """The highest Score; ties go to the window ending nearest the tracing peak, then the earlier one."""
    edited = [r for r in rows if r["layers"]]
    return max(edited, key=lambda r: (r["score"], -abs(r["layers"][-1] - peak), -r["layers"][0]))


# --- the written files -------------------------------------------------------------------------

def clean_dict(hp: Any) -> dict:
    """The hyperparameters as JSON, without the None defaults (module paths the model's table fills)."""
    defaults = {f.name: f.default for f in dataclasses.fields(hp)}
    values = {k: v for k, v in hp.to_dict().items() if not (v is None and defaults.get(k) is None)}
    return {**{k: v for k, v in values.items() if k != "notes"}, "notes": values["notes"]}  # notes last, to read


def method_layers(alg_name: str, hp_class: type, window: Sequence[int], peak: int) -> list[int]:
    if issubclass(hp_class, ROMEHyperParams):
        return [peak]  # one layer: the MLP peak, ROME's own choice
    if issubclass(hp_class, MEMITHyperParams):
        return list(window)
    raise LocateError(f"--methods: {alg_name} does not edit a window of layers (only the MEMIT family and ROME "
                      "do); leave it out and set its layer by hand from trace.json's peaks")


def write_hparams(model: nn.Module, cfg: LocateConfig, window: Sequence[int], peak: int, notes: str,
                  out: Path) -> list[Path]:
    written = []
    for alg_name in cfg.methods:
        base, source, own = base_hparams(alg_name, cfg.model_name, cfg.base_hparams)
        layers = method_layers(alg_name, type(base), window, peak)
        hp = with_statistics(window_hparams(base, layers, num_layers(model), own), cfg)
        how = f" ROME edits one layer: the MLP peak, {peak}." if isinstance(hp, ROMEHyperParams) else ""
        hp = dataclasses.replace(hp, notes=f"{notes}{how} Other values from {source}.")
        hp.resolved_for(model)  # the layers exist and the module paths resolve, or it fails here
        path = out / "hparams" / f"{alg_name}.json"
        written.append(write_json_atomic(path, clean_dict(hp)))
    return written


def notes_text(cfg: LocateConfig, trace: dict, rows: list[dict] | None, chosen: Sequence[int]) -> str:
    facts, peak = trace["facts"], trace["peaks"]["mlp"]
    text = (f"Layers {window_label(chosen)} chosen by python -m experiments.locate on {datetime.date.today()}. "
            f"Causal tracing of {facts['traced']} known facts ({facts['skipped_unknown']} of the {facts['examined']} "
            f"examined skipped: not known to the model; {trace['noise']['samples_per_fact']} noise samples of "
            f"{trace['noise']['level']:.3g}): "
            f"the MLP's indirect effect at the last subject token peaks at layer {peak['layer']} "
            f"({peak['indirect_effect']:.3f}; P(answer) clean {trace['mean_clean_prob']:.3f}, corrupted "
            f"{trace['mean_corrupted_prob']:.3f}). ")
    if rows:
        table = "; ".join(f"{r['window']} {r['efficacy']:.0f}/{r['generalization']:.0f}/{r['specificity']:.0f}/"
                          f"{r['score']:.1f}" for r in rows)
        text += (f"Edit sweep ({cfg.sweep_method}, one batch of {rows[0]['records']} held-out CounterFact records of "
                 f"{Path(cfg.sweep_file).name}; Efficacy/Generalization/Specificity/Score): {table}. "
                 "Chosen: the best Score.")
    else:
        text += "No edit sweep (--sweep_size=0): the window ending at the tracing peak."
    return text + (f" Command: {cfg.command}." if cfg.command else "")


def write_sweep(rows: list[dict], out: Path) -> None:
    write_json_atomic(out / "sweep.json", rows)
    columns = ["window", "efficacy", "generalization", "specificity", "score", "records", "seconds", "why"]
    lines = [columns] + [[_csv_value(r.get(c)) for c in columns] for r in rows]
    buffer = StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(lines)
    write_text_atomic(out / "sweep.csv", buffer.getvalue())


def _csv_value(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else ("" if value is None else str(value))


# --- the command -------------------------------------------------------------------------------

def choose_windows(cfg: LocateConfig, trace: dict, base: Any, own_model: bool,
                   n_layers: int) -> tuple[list[tuple[int, ...]], dict[tuple[int, ...], str]]:
    """The windows to sweep and why each is there."""
    if cfg.windows:
        windows = parse_windows(cfg.windows, n_layers)
        return windows, {w: "given (--windows)" for w in windows}
    peak = trace["peaks"]["mlp"]["layer"]
    windows = candidate_windows(peak, len(base.layers), n_layers, cfg.spread)
    why = {w: f"ends {w[-1] - peak:+d} from the MLP peak" for w in windows}
    current = tuple(base.layers)
    if own_model and current not in why:  # the file's window, for comparison
        windows.append(current)
        why[current] = "the shipped file's layers"
    return windows, why


def locate(cfg: LocateConfig) -> dict:
    """Trace, sweep, write; returns the chosen window and the paths written."""
    out = Path(cfg.out).expanduser()
    for name in cfg.methods:  # fail on a wrong method before hours of tracing
        method_layers(name, get_algorithm(name).hparams_class, [0], 0)
    facts = None if cfg.trace else load_facts(cfg.facts)
    log.info("loading %s", cfg.model_name)
    model, tok = load_model_and_tokenizer(cfg.model_name, device=cfg.device, dtype=cfg.dtype)
    n_layers = num_layers(model)
    trace = read_trace(cfg.trace, cfg.model_name) if cfg.trace else trace_facts(model, tok, facts, cfg)
    write_json_atomic(out / "trace.json", trace)
    draw_figure(trace, out / "trace.png")
    peak = trace["peaks"]["mlp"]["layer"]
    log.info("MLP indirect effect at the last subject token peaks at layer %d (%.3f); residual at %d, attention at %d",
             peak, trace["peaks"]["mlp"]["indirect_effect"], trace["peaks"]["residual"]["layer"],
             trace["peaks"]["attn"]["layer"])
    base, _source, own = base_hparams(cfg.sweep_method, cfg.model_name, cfg.base_hparams)
    windows, why = choose_windows(cfg, trace, base, own, n_layers)
    rows = None
    if cfg.sweep_size > 0:
        rows = run_sweep(model, tok, cfg, windows, base, own, why)
        write_sweep(rows, out)
        chosen = best_window(rows, peak)["layers"]
    else:
        chosen = list(candidate_windows(peak, len(base.layers), n_layers, 0)[0])
    written = write_hparams(model, cfg, chosen, peak, notes_text(cfg, trace, rows, chosen), out)
    log.info("chosen layers %s; wrote %s", window_label(chosen), ", ".join(str(p) for p in written))
    return {"layers": chosen, "hparams": written}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.locate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = LocateConfig.__dataclass_fields__
    p.add_argument("--model_name", required=True, help="hub id, local model folder, or a .gguf file")
    p.add_argument("--out", required=True, help="folder for trace.json, trace.png, sweep.json/csv, hparams/")
    p.add_argument("--methods", default=",".join(d["methods"].default),
                   help="methods to write a starting hparams file for (MEMIT family, ROME)")
    p.add_argument("--facts", default=d["facts"].default, help="known facts (ROME's known_1000.json layout)")
    p.add_argument("--n_facts", type=int, default=d["n_facts"].default,
                   help="trace this many facts the model knows (the first ones of --facts)")
    p.add_argument("--samples", type=int, default=d["samples"].default, help="noise draws per fact (ROME: 10)")
    p.add_argument("--noise_factor", type=float, default=d["noise_factor"].default,
                   help="noise std in units of the subjects' embedding std (ROME: 3)")
    p.add_argument("--window", type=int, default=d["window"].default,
                   help="MLP/attention layers restored together (ROME: 10)")
    p.add_argument("--positions", default="all", choices=("all", "last_subject"),
                   help="trace every token from the subject on (ROME's figures), or the last subject token only "
                        "(the MLP peak's class; about a tenth of the work)")
    p.add_argument("--trace", default=None,
                   help="take the tracing from this earlier trace.json instead of tracing again (same model)")
    p.add_argument("--seed", type=int, default=d["seed"].default, help="seeds the noise and context templates")
    p.add_argument("--trace_rows", type=int, default=d["trace_rows"].default,
                   help="rows per tracing forward pass (lower it if memory runs out)")
    p.add_argument("--base_hparams", default=None,
                   help="stem of the shipped files to start from (hparams/<ALG>/<stem>.json); default: the stem "
                        "inside the model's name, else the paper's gpt2-xl values")
    p.add_argument("--windows", default=None, help="sweep these windows instead, e.g. 3-7,5-9")
    p.add_argument("--spread", type=int, default=d["spread"].default,
                   help="sweep windows ending from peak-spread to peak+spread")
    p.add_argument("--sweep_method", default=d["sweep_method"].default, help="MEMIT-family method of the sweep")
    p.add_argument("--sweep_file", default=d["sweep_file"].default,
                   help="held-out CounterFact records (default: test records 2000-2190, not the reported ones)")
    p.add_argument("--sweep_size", type=int, default=d["sweep_size"].default,
                   help="records edited (one batch) per window; 0: no sweep, the window ending at the peak")
    p.add_argument("--mom2_dataset", default=None,
                   help="statistics corpus for the sweep and the files (default: the base file's; for a model no "
                        "shipped file matches, the paper's wikipedia: offline, pass assets/corpus)")
    p.add_argument("--mom2_n_samples", type=int, default=None,
                   help="statistics texts for the sweep and the files (default: the base file's)")
    p.add_argument("--stats_dir", default=None, help="covariance cache folder (default STATS_DIR in globals.yml)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else mps, else cpu)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES))
    p.add_argument("--log_level", default="INFO", type=str.upper, choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return p


def config_from(args: dict) -> LocateConfig:
    methods = tuple(m.strip() for m in args.pop("methods").split(",") if m.strip())
    cfg = LocateConfig(methods=methods, **args)
    for name in ("n_facts", "samples", "window", "trace_rows"):
        if getattr(cfg, name) < 1:
            raise LocateError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.sweep_size < 0 or cfg.spread < 0 or cfg.noise_factor <= 0:
        raise LocateError("--sweep_size and --spread must be >= 0 and --noise_factor > 0")
    if not methods:
        raise LocateError("--methods is empty; name at least one method, e.g. MEMIT")
    for name in (*methods, cfg.sweep_method):
        try:
            get_algorithm(name)
        except ValueError as err:
            raise LocateError(str(err).replace("--alg_name", "method")) from None
    if not issubclass(get_algorithm(cfg.sweep_method).hparams_class, MEMITHyperParams):
        raise LocateError(f"--sweep_method={cfg.sweep_method} is not of the MEMIT family (it edits no window)")
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = vars(build_parser().parse_args(argv))
    args["command"] = shlex.join(["python", "-m", "experiments.locate", *argv])
    logging.basicConfig(level=args.pop("log_level"), format="%(asctime)s %(name)s %(message)s")
    from experiments.evaluate import user_message  # the harness's list of errors that explain themselves

    try:
        locate(config_from(args))
    except Exception as err:
        message = str(err) if isinstance(err, LocateError) else user_message(err)
        if message is None:
            raise  # a bug: keep its traceback
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
