"""What bf16 weights change on SmolLM2 (the opt-in row of README's stream table): z and the metrics.

    python bench/bf16_effect.py [--requests 100] [--cases 100] [--out FILE.json]

The value optimisation of the first ``--requests`` CounterFact records (one batch, the NSE file's
settings; the fp32 model's context templates for both) runs with the model in float32 and in
bfloat16; the script reports the seconds of each and, per request, ``|z_bf16 - z_fp32| / |z_fp32|``.
Then the unedited model scores the first ``--cases`` cases teacher-forced in both dtypes: the
largest NLL difference and how many prompt-level successes (P(new) > P(true), and for neighbours
the reverse) flip. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from provenance import Provenance  # noqa: E402
from smollm2 import load_smollm2  # noqa: E402

from experiments.algorithms import get_algorithm  # noqa: E402
from experiments.metrics.counterfact import probability_metrics_many  # noqa: E402
from util.requests import normalize_request  # noqa: E402
from util.values import compute_values  # noqa: E402

DATA = ROOT / "assets" / "counterfact_test2191_first2000.json"
GROUPS = ("rewrite", "paraphrase", "neighborhood")


def _values(dtype: torch.dtype, requests: list[dict], templates: list[list[str]] | None = None
            ) -> tuple[torch.Tensor, float, list[list[str]]]:
    model, tok = load_smollm2(dtype)
    alg = get_algorithm("NSE")
    data = json.loads((ROOT / "hparams/NSE/SmolLM2-135M.json").read_text())
    editor = alg.make_editor(model, tok, alg.hparams_class.from_dict(data, source="bf16_effect"), progress=False)
    templates = templates or editor.make_context_templates(model, tok, editor.hparams, 0)
    start = time.perf_counter()
    z = compute_values(model, tok, requests, editor.value_spec, templates).z
    return z.float(), time.perf_counter() - start, templates


def _successes(post: dict) -> list[bool]:
    out = []
    for group in GROUPS:
        for p in post[f"{group}_prompts_probs"]:
            better_new = p["target_new"] < p["target_true"]
            out.append(better_new if group != "neighborhood" else not better_new)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--cases", type=int, default=100)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    stamp = Provenance.start(__file__)
    records = json.loads(DATA.read_text())
    requests = [normalize_request({"case_id": r["case_id"], **r["requested_rewrite"]}) for r in records[: args.requests]]
    z32, s32, t32 = _values(torch.float32, requests)
    z16, s16, _ = _values(torch.bfloat16, requests, t32)  # the same templates: z's own difference
    rel = ((z16 - z32).norm(dim=1) / z32.norm(dim=1)).tolist()
    posts = {}
    for dtype in (torch.float32, torch.bfloat16):
        model, tok = load_smollm2(dtype)
        start = time.perf_counter()
        posts[dtype] = probability_metrics_many(model, tok, records[: args.cases])
        posts[f"{dtype}_s"] = time.perf_counter() - start
    nll_diff = max(abs(a[f"{g}_prompts_probs"][i][k] - b[f"{g}_prompts_probs"][i][k])
                   for a, b in zip(posts[torch.float32], posts[torch.bfloat16]) for g in GROUPS
                   for i in range(len(a[f"{g}_prompts_probs"])) for k in ("target_new", "target_true"))
    flips = sum(x != y for a, b in zip(posts[torch.float32], posts[torch.bfloat16])
                for x, y in zip(_successes(a), _successes(b)))
    prompts = sum(len(_successes(a)) for a in posts[torch.float32])
    out = {"requests": len(requests), "values_seconds_fp32": round(s32, 1),
           "values_seconds_bf16": round(s16, 1), "z_relative_difference_median": statistics.median(rel),
           "z_relative_difference_max": max(rel), "cases": args.cases,
           "teacher_forced_seconds_fp32": round(posts[f"{torch.float32}_s"], 1),
           "teacher_forced_seconds_bf16": round(posts[f"{torch.bfloat16}_s"], 1),
           "max_nll_difference_unedited": nll_diff, "prompt_successes_flipped": flips, "prompts": prompts,
           "provenance": stamp.finish()}
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
