"""Is bf16's Fluency gap the edits or the dtype? The unedited model's Fluency in fp32 and in bf16.

    python bench/bf16_fluency.py [--out bench/results/stream/bf16_fluency_unedited.json]

The NSE protocol run in bf16 ends with Fluency 5.9 ± 1.65 above the fp32 run (paired over the same 200
cases, ``bench/bf16_protocol.py``). Generation samples (top-k 5, each case from its own seed), so a
model whose logits move by bf16 round-off draws other texts. This script samples the same 200 cases
(every 10th of the first 2000 protocol records, seeds 0 + case id, as the run's final scoring) from the
*unedited* SmolLM2-135M in both dtypes and reports the paired bf16 − fp32 Fluency (×100, n-gram entropy,
the untrained Punkt fallback both runs' Fluency was recomputed with). Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from bf16_protocol import case_fluency  # noqa: E402
from provenance import Provenance  # noqa: E402
from readings import mean_se, paired  # noqa: E402
from smollm2 import load_smollm2  # noqa: E402

from experiments.metrics.fluency import generate_texts_many, punkt_word_tokenizer  # noqa: E402

DATA = ROOT / "assets" / "counterfact_test2191_first2000.json"
EVERY, CHUNK = 10, 8


def fluency(dtype: torch.dtype, records: list[dict], tokenize) -> tuple[dict[str, dict], float]:
    """Per case id, {"ngram_entropy": Fluency ×100}; and the seconds the sampling took."""
    model, tok = load_smollm2(dtype)
    start, rows = time.perf_counter(), {}
    for begin in range(0, len(records), CHUNK):
        part = records[begin : begin + CHUNK]
        texts = generate_texts_many(model, tok, [r["generation_prompts"] for r in part], [int(r["case_id"]) for r in part])
        for record, case_texts in zip(part, texts):
            rows[str(record["case_id"])] = {"ngram_entropy": case_fluency(case_texts, tokenize)}
    return rows, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/stream/bf16_fluency_unedited.json")
    args = ap.parse_args()
    stamp = Provenance.start(__file__)
    records = [r for i, r in enumerate(json.loads(DATA.read_text())) if i % EVERY == 0 and r.get("generation_prompts")]
    tokenize = punkt_word_tokenizer()
    fp32, fp32_s = fluency(torch.float32, records, tokenize)
    bf16, bf16_s = fluency(torch.bfloat16, records, tokenize)
    out = {"cases": len(records),
           "means": {name: mean_se([r["ngram_entropy"] for r in rows.values()]) for name, rows in
                     (("fp32", fp32), ("bf16", bf16))},
           "bf16_minus_fp32": paired(bf16, fp32)["ngram_entropy"],
           "seconds": {"fp32": round(fp32_s, 1), "bf16": round(bf16_s, 1)}}
    args.out.write_text(json.dumps({"provenance": stamp.finish(), **out}, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
