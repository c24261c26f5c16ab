"""FLOPs and seconds of the value phase, per part, for the code of any checkout of this project.

    python bench/value_phase.py [TREE] [--batch protocol|time_batch] [--alg NSE|ENCORE]
                                [--z_out FILE.pt] [--compare_z FILE.pt] [--out FILE.json] [--no_flops]
                                [--dtype float32|bfloat16] [--model_name MODEL --hparams FILE.json]

TREE (default: this checkout) is the root of a checkout whose value code (``util/values.py``,
``util/prefix_cache.py``) is measured, e.g. an older commit extracted with ``git worktree add
/tmp/values_before <commit>``; the model, the data and this script come from this checkout, so both
trees see identical inputs. SmolLM2-135M-Instruct (or ``--model_name``) in float32 (``--dtype``), the method's
hyperparameter file (``hparams/<alg>/SmolLM2-135M.json``, or ``--hparams``) and the editor's own context templates (seed 0), no statistics.
Batches: ``protocol``, the protocol's first batch (the first 100 records of
``assets/counterfact_test2191_first2000.json``, the file's value settings); ``time_batch``,
``bench/time_batch.py``'s (the first 4 records of ``assets/counterfact_test2191_first200.json``,
20 value steps at lr 0.1).

Parts, by where the work runs: ``prefill`` (building the value forward, ``util.values._value_forward``:
the pass that fills the key/value cache), ``forward`` (the forward's calls, one per pass), ``backward``
(``Tensor.backward``), ``rest`` (the LM head and losses outside the forward, Adam). FLOPs are counted per
operation (torch's formulas for matmuls; CPU's fused attention, which torch's FlopCounterMode does not
count, as its two matmuls forward and four backward) and split into the LM head (a matmul with a
vocabulary-sized operand), attention and the other layers' matmuls. Seconds include the counting's
overhead (a Python call per operation) unless ``--no_flops``; read them beside the load in the stamp.
``--z_out`` keeps z, ``--compare_z`` reports the relative difference per request to a kept z (the
other tree's, say). Nothing here is asserted: it measures.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
BATCHES = {
    "protocol": ("assets/counterfact_test2191_first2000.json", 100, {}),
    "time_batch": ("assets/counterfact_test2191_first200.json", 4, {"v_num_grad_steps": 20, "v_lr": 0.1}),
}
PARTS = ("prefill", "forward", "backward", "rest")


class _PartCounter:
    """FLOPs per (part, kind) and seconds per part; ``part`` is set by the wrappers of :func:`_measured`."""

    def __init__(self, vocab: int, count: bool) -> None:
        self.vocab, self.count = vocab, count
        self.part = "rest"
        self.flops: collections.Counter = collections.Counter()
        self.seconds: collections.Counter = collections.Counter()

    def mode(self):
        """The dispatch mode that counts (a null context with counting off)."""
        if not self.count:
            return contextlib.nullcontext()
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry

        counter = self
        attention = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: 2,
                     torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: 4}

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                packet = func._overloadpacket
                if packet in attention:  # query (B, Hq, L, D), key (B, Hk, S, D): matmuls of L x S x D per head
                    q, k = args[1], args[2]
                    if packet is torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                        q, k = args[0], args[1]
                    flops = attention[packet] * 2 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]
                    counter.flops[(counter.part, "attention")] += flops
                elif packet in flop_registry:
                    flops = flop_registry[packet](*args, **kwargs, out_val=out)
                    head = any(isinstance(a, torch.Tensor) and counter.vocab in a.shape for a in args)
                    counter.flops[(counter.part, "lm_head" if head else "layers")] += flops
                return out
        return Mode()

    @contextlib.contextmanager
    def labelled(self, part: str):
        outer, self.part = self.part, part
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[part] += time.perf_counter() - start
            self.part = outer


@contextlib.contextmanager
def _measured(values, counter: _PartCounter, calls: list):
    """The tree's value module with its prefill, its forwards' calls and the backward labelled."""
    import torch

    real_build, real_backward = values._value_forward, torch.Tensor.backward
    real_calls = {cls: cls.__call__ for cls in (values._FullForward, values._SuffixOnlyForward)}

    def build(*args, **kwargs):
        with counter.labelled("prefill"):
            return real_build(*args, **kwargs)

    def backward(self, *args, **kwargs):
        with counter.labelled("backward"):
            return real_backward(self, *args, **kwargs)

    def wrap(cls):
        def call(self, *args, **kwargs):
            calls.append(getattr(getattr(self, "run", None), "tokens", None))  # slots per layer, where known
            with counter.labelled("forward"):
                return real_calls[cls](self, *args, **kwargs)
        return call

    values._value_forward, torch.Tensor.backward = build, backward
    for cls in real_calls:
        cls.__call__ = wrap(cls)
    try:
        yield
    finally:
        values._value_forward, torch.Tensor.backward = real_build, real_backward
        for cls, call in real_calls.items():
            cls.__call__ = call


def _tree_modules(root: Path):
    """The value module, ``get_algorithm`` and ``normalize_request`` of the checkout at ``root``. The
    project's packages imported so far (bench/smollm2.py imports this checkout's util) are dropped
    first, so that nothing of this checkout stands in for the tree's code."""
    packages = {p.name for base in (root, HERE) for p in base.iterdir() if (p / "__init__.py").is_file()}
    for name in [m for m in sys.modules if m.split(".")[0] in packages]:
        del sys.modules[name]
    sys.path.insert(0, str(root))
    import util.values as values
    from experiments.algorithms import get_algorithm
    from util.requests import normalize_request

    if not Path(values.__file__).resolve().is_relative_to(root):
        raise RuntimeError(f"{values.__file__} is not the code of {root}")
    return values, get_algorithm, normalize_request


def _z_difference(z, updates: list[int], other_file: Path) -> dict:
    import torch

    other = torch.load(other_file)
    rel = ((z - other["z"]).norm(dim=1) / other["z"].norm(dim=1)).tolist()
    return {"other": str(other_file), "other_tree": other["tree"], "relative_difference_max": max(rel),
            "relative_difference_median": statistics.median(rel), "same_updates": updates == other["updates"],
            "updates_differ_for": [i for i, (a, b) in enumerate(zip(updates, other["updates"])) if a != b]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tree", nargs="?", default=str(HERE))
    ap.add_argument("--batch", choices=sorted(BATCHES), default="protocol")
    ap.add_argument("--alg", choices=("NSE", "ENCORE"), default="NSE")
    ap.add_argument("--z_out", type=Path, default=None, help="keep z, updates and the tree in this .pt file")
    ap.add_argument("--compare_z", type=Path, default=None, help="a --z_out file to compare z with")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON (default: bench/results/value_phase/<alg>_<batch>_<tree commit>.json)")
    ap.add_argument("--no_flops", action="store_true", help="time only (no counting overhead)")
    ap.add_argument("--model_name", default=None,
                    help="hub id, folder or .gguf, loaded as experiments.evaluate does (default: SmolLM2-135M's wheel)")
    ap.add_argument("--hparams", type=Path, default=None,
                    help="hyperparameter file (default: hparams/<alg>/SmolLM2-135M.json)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="the model's dtype (the context templates are that model's own)")
    args = ap.parse_args()
    root = Path(args.tree).resolve()
    sys.path.insert(0, str(HERE / "bench"))
    import torch
    from provenance import Provenance, commit
    from smollm2 import load_model

    stamp = Provenance.start(__file__)
    model, tok = load_model(args.model_name, args.dtype)
    values, get_algorithm, normalize_request = _tree_modules(root)
    tok.pad_token = tok.pad_token or tok.eos_token
    alg = get_algorithm(args.alg)
    data_file, n, overrides = BATCHES[args.batch]
    hparams_file = args.hparams or HERE / f"hparams/{args.alg}/SmolLM2-135M.json"
    data = {**json.loads(hparams_file.read_text()), **overrides}
    editor = alg.make_editor(model, tok, alg.hparams_class.from_dict(data, source="value_phase"), progress=False)
    templates = editor.make_context_templates(model, tok, editor.hparams, 0)
    records = json.loads((HERE / data_file).read_text())[:n]
    requests = [normalize_request({"case_id": r["case_id"], **r["requested_rewrite"]}) for r in records]
    spec = editor.value_spec
    counter, calls = _PartCounter(model.config.vocab_size, count=not args.no_flops), []
    start = time.perf_counter()
    with _measured(values, counter, calls), counter.mode():
        result = values.compute_values(model, tok, requests, spec, templates)
    total = time.perf_counter() - start
    seconds = {p: round(counter.seconds[p], 2) for p in PARTS[:3]}
    seconds.update(rest=round(total - sum(counter.seconds[p] for p in PARTS[:3]), 2), total=round(total, 2))
    gflop = {f"{part}/{kind}": round(v / 1e9, 2) for (part, kind), v in sorted(counter.flops.items())}
    tree = commit(root)
    out = {"tree": str(root), "tree_commit": tree, "values_module": values.__file__, "batch": args.batch,
           "dtype": args.dtype, "model": args.model_name or "SmolLM2-135M (wheel)", "hparams": str(hparams_file),
           "vocab_size": model.config.vocab_size,
           "alg": args.alg, "requests": len(requests),
           "value_settings": {"num_steps": spec.num_steps, "lr": spec.lr, "stop": repr(spec.stop),
                              "site": spec.site, "loss_layer": spec.loss_layer},
           "templates": templates, "flops_counted": not args.no_flops,
           "gflop": gflop if gflop else None,
           "gflop_total": round(sum(counter.flops.values()) / 1e9, 2) if gflop else None,
           "gflop_without_attention": round(sum(v for (_, k), v in counter.flops.items() if k != "attention") / 1e9,
                                            2) if gflop else None,
           "seconds": seconds, "passes": len(calls), "slots_per_pass": calls,
           "steps_taken": sum(result.updates), "steps_possible": (spec.num_steps - 1) * len(requests),
           "updates": dict(sorted(collections.Counter(result.updates).items())),
           "loss_mean": sum(result.losses) / len(result.losses)}
    if args.compare_z:
        out["z_difference"] = _z_difference(result.z, result.updates, args.compare_z)
    if args.z_out:
        torch.save({"z": result.z, "updates": result.updates, "tree": tree}, args.z_out)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    out["provenance"] = stamp.finish()
    text = json.dumps(out, indent=1)
    print(text)
    suffix = "" if args.dtype == "float32" else f"_{args.dtype}"
    path = args.out or HERE / "bench/results/value_phase" / f"{args.alg}_{args.batch}_{tree['commit'][:7]}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


if __name__ == "__main__":
    main()
