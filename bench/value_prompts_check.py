"""How often the original's text-built value rows differ from this harness's id-built rows.

For every record of a CounterFact file, the plain rewriting prompt and one context-prefixed prompt are
built both ways (util.values, ``value_prompts`` "ids" and "text"); a record counts as differing when
any of its rows or target positions differ. Tokenizer only: no model forward.

    python bench/value_prompts_check.py [--ds_file F] [--tokenizer smollm2|PATH] [--out bench/results/value_prompts_smollm2.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from provenance import Provenance  # noqa: E402
from util.requests import normalize_request  # noqa: E402
from util.values import build_batch  # noqa: E402

TEMPLATES = [["{}"], ["The first thing I noticed was. {}"]]  # a prefix ending like the generated ones


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    if name == "smollm2":
        from smollm2 import GGUF_FILE, smollm2_dir

        return AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=GGUF_FILE)
    return AutoTokenizer.from_pretrained(name)


def differing_cases(tok, records: list[dict]) -> list[int]:
    out = []
    for record in records:
        request = normalize_request(record["requested_rewrite"] | {"case_id": record["case_id"]})
        by_ids = build_batch(tok, [request], TEMPLATES, "subject_last", "ids")
        by_text = build_batch(tok, [request], TEMPLATES, "subject_last", "text")
        same = (by_ids.ids.shape == by_text.ids.shape and bool((by_ids.ids == by_text.ids).all())
                and bool((by_ids.tgt_pos == by_text.tgt_pos).all()))
        if not same:
            out.append(record["case_id"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ds_file", default=str(ROOT / "assets/counterfact_test2191_first2000.json"))
    parser.add_argument("--tokenizer", default="smollm2")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    stamp = Provenance.start(__file__)
    records = json.loads(Path(args.ds_file).read_text())
    tok = load_tokenizer(args.tokenizer)
    differ = differing_cases(tok, records)
    result = {"ds_file": Path(args.ds_file).name, "tokenizer": args.tokenizer, "records": len(records),
              "templates": TEMPLATES, "differing": len(differ), "differing_case_ids": differ,
              "provenance": stamp.finish()}
    print(json.dumps({k: v for k, v in result.items() if k not in ("differing_case_ids", "provenance")}))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
