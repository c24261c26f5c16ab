"""Seconds of one NSE batch and of its value phase, for the code of any checkout of this project.

    python bench/time_batch.py [TREE] [--stats_dir DIR]

TREE (default: this checkout) is the root of a checkout, e.g. an older commit extracted with
``git worktree add /tmp/before <commit>``, so that code without the per-phase timers of
``bench/bench_edit.py`` is timed the same way: SmolLM2-135M, the first 4 CounterFact records of
``assets/``, the original-style settings (20 value steps at lr 0.1, lambda 15000), C0 computed
before the clock starts. Prints one JSON line. Nothing here is asserted: it measures.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def _provenance():
    """This checkout's bench/provenance.py (a TREE's bench/ may have none, or its own)."""
    spec = importlib.util.spec_from_file_location("this_checkout_provenance", HERE / "bench" / "provenance.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tree", nargs="?", default=str(HERE))
    ap.add_argument("--stats_dir", default=None, help="statistics cache (default: <tree>/data/stats)")
    args = ap.parse_args()
    provenance = _provenance()
    stamp = provenance.Provenance.start(__file__)
    root = Path(args.tree).resolve()
    sys.path[:0] = [str(root), str(root / "bench")]
    import torch
    from smollm2 import load_smollm2

    import memit.editor as engine
    from experiments.algorithms import get_algorithm
    from util.requests import normalize_request

    model, tok = load_smollm2(torch.float32)
    tok.pad_token = tok.pad_token or tok.eos_token
    alg = get_algorithm("NSE")
    data = json.loads((root / "hparams/NSE/SmolLM2-135M.json").read_text())
    data.update(v_num_grad_steps=20, v_lr=0.1, mom2_update_weight=15000, mom2_dataset=str(HERE / "assets/corpus"))
    editor = alg.make_editor(model, tok, alg.hparams_class.from_dict(data, source="time_batch"),
                             stats_dir=args.stats_dir or root / "data/stats", progress=False)
    records = json.loads((HERE / "assets/counterfact_test2191_first200.json").read_text())[:4]
    requests = [normalize_request({"case_id": r["case_id"], **r["requested_rewrite"]}) for r in records]
    editor.prepare()
    values = {"seconds": 0.0}
    compute_values = engine.compute_values

    def timed(*a, **kw):
        start = time.perf_counter()
        try:
            return compute_values(*a, **kw)
        finally:
            values["seconds"] += time.perf_counter() - start

    engine.compute_values = timed
    start = time.perf_counter()
    report = editor.edit(requests)
    total = time.perf_counter() - start
    print(json.dumps({"tree": str(root), "tree_commit": provenance.commit(root)["commit"], "batch_s": round(total, 2),
                      "values_s": round(values["seconds"], 2), "rest_s": round(total - values["seconds"], 2),
                      "log": report.log_line(), "provenance": stamp.finish()}))


if __name__ == "__main__":
    main()
