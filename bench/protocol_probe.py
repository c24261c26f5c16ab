"""Unit costs of the protocol run's phases, for the code of any checkout of this project.

    python bench/protocol_probe.py [TREE] [--alg NSE] [--edits 100] [--cases 40] [--gen_cases 4]

TREE (default: this checkout) is the root of a checkout, e.g. an older commit extracted with
``git worktree add /tmp/before <commit>``. On SmolLM2-135M (fp32, the method's ``SmolLM2-135M.json``,
C0 cached before the clock starts), it times: one edit batch of ``--edits`` CounterFact records;
teacher-forced scoring of ``--cases`` cases (the curve points' and the final scoring's work);
generation metrics of ``--gen_cases`` cases; one pass of the general-capability tasks. It prints
one JSON object, with the protocol run (2000 edits in batches of 100; 4 curve points of 500, 1000, 1500
and 2000 cases plus the final scoring of 2000 = 7000 teacher-forced cases; 200 generation cases;
5 downstream passes) extrapolated from these unit
costs. Used for the "before" row of README's stream table; the "after" rows are whole runs
(``bench/stream.py``). Nothing here is asserted: it measures.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
DATA = HERE / "assets" / "counterfact_test2191_first2000.json"


def _clock(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tree", nargs="?", default=str(HERE))
    ap.add_argument("--alg", default="NSE")
    ap.add_argument("--edits", type=int, default=100)
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--gen_cases", type=int, default=4)
    ap.add_argument("--stats_dir", default=str(HERE / "data" / "stats"))
    ap.add_argument("--dtype", default="float32", help="the model's dtype (bfloat16: the opt-in row)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    root = Path(args.tree).resolve()
    sys.path[:0] = [str(root), str(HERE / "bench")]
    import torch
    from provenance import Provenance, commit
    from smollm2 import load_smollm2

    from experiments.algorithms import get_algorithm
    from experiments.downstream import SHIPPED_GLUE_DIR, run_downstream_eval
    from experiments.metrics import compute_rewrite_quality_counterfact
    from util.requests import normalize_request

    stamp = Provenance.start(__file__)
    model, tok = load_smollm2(getattr(torch, args.dtype))
    tok.pad_token = tok.pad_token or tok.eos_token
    records = json.loads(DATA.read_text())
    alg = get_algorithm(args.alg)
    hp_dir = root / "hparams" / alg.hparams_dir
    data = json.loads((hp_dir / "SmolLM2-135M.json").read_text())
    data["mom2_dataset"] = str(HERE / "assets" / "corpus")
    editor = alg.make_editor(model, tok, alg.hparams_class.from_dict(data, source="protocol_probe"),
                             stats_dir=args.stats_dir, progress=False)
    editor.prepare()
    out: dict = {"tree": str(root), "tree_commit": commit(root)["commit"], "alg": args.alg, "dtype": args.dtype, "machine": platform.processor() or platform.machine(),
                 "threads": torch.get_num_threads()}
    requests = [normalize_request({"case_id": r["case_id"], **r["requested_rewrite"]}) for r in records[: args.edits]]
    out["edit_batch_s"], report = _clock(lambda: editor.edit(requests))
    out["edit_phases"] = getattr(report, "phase_seconds", {})
    out["edit_log"] = report.log_line()
    tf = records[: args.cases]
    seconds, _ = _clock(lambda: [compute_rewrite_quality_counterfact(model, tok, r, generation=False) for r in tf])
    out["teacher_forced_s_per_case"] = seconds / len(tf)
    gen = records[: args.gen_cases]
    seconds, _ = _clock(lambda: [compute_rewrite_quality_counterfact(model, tok, r, generation=True, seed=i)
                                 for i, r in enumerate(gen)])
    out["generation_case_s"] = seconds / len(gen) - out["teacher_forced_s_per_case"]
    out["downstream_pass_s"], _ = _clock(lambda: run_downstream_eval(model, tok, SHIPPED_GLUE_DIR, progress=False))
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    protocol = {"edits": 20 * out["edit_batch_s"], "teacher_forced": 7000 * out["teacher_forced_s_per_case"],
                "generation": 200 * out["generation_case_s"], "downstream": 5 * out["downstream_pass_s"]}
    protocol["total"] = sum(protocol.values())
    out["protocol_extrapolated_s"] = {k: round(v, 1) for k, v in protocol.items()}
    out["provenance"] = stamp.finish()
    text = json.dumps(out, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
