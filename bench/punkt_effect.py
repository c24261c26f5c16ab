"""What NLTK's trained English Punkt model changes in Fluency, against the untrained fallback.

Fluency (``ngram_entropy``) splits words with NLTK's ``word_tokenize``: Punkt sentences, then
NLTK's word tokenizer. With NLTK's punkt_tab data installed the trained English model splits the
sentences (config.json: ``"word_tokenizer": "nltk.word_tokenize"``); without it an untrained Punkt
model does (``"nltk-untrained-punkt"``), which only lacks abbreviation knowledge ("Mr." then ends a
sentence). This script recomputes every stored generation's Fluency of each run from its archived
case files with both, per case, and checks that the tokenizer the run recorded gives back the
stored ``ngram_entropy`` exactly.

    python bench/punkt_effect.py [--punkt_dir DIR] [--runs RUN_DIR ...] [--out FILE]

The trained model is NLTK's installed one (``nltk.download('punkt_tab')``) unless ``--punkt_dir``
names a punkt_tab ``english/`` folder. Writes ``bench/results/punkt_effect.json`` by default.
Fluency points are ×100, as in the README's tables. The published result read the copy of NLTK's
English model this repository shipped until commit 1ebe193 (``experiments/metrics/punkt_tab/english``,
removed for its unclarified licence; ``git archive 1ebe193 experiments/metrics/punkt_tab | tar x -C /tmp``
gives it back for a rerun); the result records the four files' sha256, to compare with an installed model.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from experiments.metrics.fluency import (  # noqa: E402
    NLTK_EXACT,
    NLTK_FALLBACK,
    punkt_word_tokenizer,
    read_punkt_params,
    tokens_ngram_entropy,
)
from provenance import Provenance  # noqa: E402

# The published runs: the 2000-edit protocol (computed with the fallback) and the five 1000-edit
# frontier runs (computed with the trained model).
RUNS = [f"bench/results/stream/{alg}_run_000" for alg in ("NSE", "MEMIT", "AlphaEdit")] + [
    f"bench/results/frontier/{name}" for name in
    ("AlphaEdit_run_000", "AlphaEdit_NAS_run_001", "NSE_run_000", "ENCORE_run_000", "NSE_NAS_run_001")]
MODEL_FILES = ("abbrev_types.txt", "collocations.tab", "ortho_context.tab", "sent_starters.txt")


def trained_model(punkt_dir: Path | None) -> tuple[object, dict]:
    """The trained English Punkt parameters and where they came from (folder and file sha256)."""
    if punkt_dir is None:
        import nltk

        try:
            punkt_dir = Path(str(nltk.data.find("tokenizers/punkt_tab/english/")))
        except LookupError:
            raise SystemExit("NLTK's punkt_tab data is not installed: run nltk.download('punkt_tab') "
                             "or pass --punkt_dir DIR (a punkt_tab english/ folder)") from None
    sha = {name: hashlib.sha256((punkt_dir / name).read_bytes()).hexdigest() for name in MODEL_FILES}
    return read_punkt_params(punkt_dir), {"dir": str(punkt_dir), "sha256": sha}


def cases_with_texts(run_dir: Path):
    """(case id, stored ngram_entropy, texts) of each case file that has generated texts."""
    with tarfile.open(run_dir / "case_files.tar.gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".json"):
                continue
            record = json.load(tar.extractfile(member))
            post = record.get("post", {})
            if "text" in post:
                yield record["case_id"], post["ngram_entropy"], post["text"]


def entropy(tokenize, texts: list[str]) -> float:
    """ngram_entropy of one case's texts with this tokenizer (the same sum order as the metric)."""
    return sum(tokens_ngram_entropy(tokenize(t)) for t in texts) / len(texts)


def measure(run_dir: Path, tokenizers: dict) -> dict:
    config = json.loads((run_dir / "config.json").read_text())
    recorded = config["metrics"]["word_tokenizer"]
    per_case, stored_gap, n_texts, texts_split_differently = [], 0.0, 0, 0
    for case_id, stored, texts in sorted(cases_with_texts(run_dir)):
        values = {name: entropy(tok, texts) for name, tok in tokenizers.items()}
        stored_gap = max(stored_gap, abs(values[recorded] - stored))
        n_texts += len(texts)
        texts_split_differently += sum(tokenizers[NLTK_EXACT](t) != tokenizers[NLTK_FALLBACK](t) for t in texts)
        per_case.append({"case_id": case_id, "stored": 100 * stored, "trained": 100 * values[NLTK_EXACT],
                         "fallback": 100 * values[NLTK_FALLBACK]})
    n = len(per_case)
    diffs = [c["trained"] - c["fallback"] for c in per_case]
    mean = lambda key: sum(c[key] for c in per_case) / n  # noqa: E731
    return {
        "run": str(run_dir.relative_to(ROOT)) if run_dir.is_relative_to(ROOT) else str(run_dir),
        "recorded_word_tokenizer": recorded,
        "cases_with_generation": n,
        "texts": n_texts,
        "fluency_stored": mean("stored"),
        "fluency_trained": mean("trained"),
        "fluency_fallback": mean("fallback"),
        "trained_minus_fallback": {"mean": mean("trained") - mean("fallback"),
                                   "max_abs_per_case": max(abs(d) for d in diffs),
                                   "cases_changed": sum(d != 0 for d in diffs)},
        "texts_split_differently": texts_split_differently,
        "recomputed_equals_stored": stored_gap == 0.0,
        "max_abs_recomputed_minus_stored": stored_gap,
        "per_case": per_case,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--punkt_dir", type=Path, help="a punkt_tab english/ folder (default: NLTK's installed data)")
    parser.add_argument("--runs", nargs="+", type=Path, default=[ROOT / r for r in RUNS])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "punkt_effect.json")
    args = parser.parse_args()
    stamp = Provenance.start(__file__)
    params, model = trained_model(args.punkt_dir)
    tokenizers = {NLTK_EXACT: punkt_word_tokenizer(params), NLTK_FALLBACK: punkt_word_tokenizer()}
    runs = []
    for run_dir in args.runs:
        row = measure(run_dir.resolve(), tokenizers)
        runs.append(row)
        d = row["trained_minus_fallback"]
        print(f"{row['run']}: {row['cases_with_generation']} cases, recorded {row['recorded_word_tokenizer']}, "
              f"stored {row['fluency_stored']:.4f}, trained {row['fluency_trained']:.4f}, fallback "
              f"{row['fluency_fallback']:.4f}; trained - fallback {d['mean']:+.4f} (max per case {d['max_abs_per_case']:.4f}, "
              f"{d['cases_changed']} cases changed); recomputed == stored: {row['recomputed_equals_stored']}")
    out = {"provenance": stamp.finish(), "trained_model": model, "units": "Fluency points (ngram_entropy x 100)",
           "runs": runs}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
