"""Value optimisation on this machine: batched vs one request at a time, or the suffix-only path
(util/prefix_cache.py) vs the whole model per step, and one NSE batch with C0 given.

    python bench/bench_values.py [--model assets/tinystories-260k-llama] [--n 16]
    python bench/bench_values.py --paths --smollm2 --n 4 [--batch]

Both comparisons compute the same z (tests/test_values.py, tests/test_prefix_cache.py pin that);
this measures what each buys. ``--paths`` also counts the FLOPs of the value phase analytically
and measures this CPU's float32 matmul rate, so the report says how close the phase runs to it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.provenance import Provenance  # noqa: E402
from nse import NSEHyperParams  # noqa: E402
from util.model_loading import load_model_and_tokenizer  # noqa: E402
from util.requests import normalize_request  # noqa: E402
from util.values import compute_values  # noqa: E402

TEMPLATES = [["{}"], ["The day was warm. {}", "Therefore it was. {}", "Because of that. {}", "I think. {}",
                      "You know. {}"]]
# The original code's settings transplanted to SmolLM2 (docs/MODELS.md): layers 3-7, loss at the
# last layer, 20 steps at lr 0.1, lambda 15000.
ORIGINAL_STYLE = dict(layers=[3, 4, 5, 6, 7], v_num_grad_steps=20, v_lr=0.1, v_loss_layer=29,
                      mom2_update_weight=15000.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="assets/tinystories-260k-llama")
    ap.add_argument("--hparams", default="hparams/NSE/tinystories-260k.json")
    ap.add_argument("--smollm2", action="store_true", help="SmolLM2-135M with the original-style NSE settings")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--steps", type=int, default=None, help="value steps (default: the hparams')")
    ap.add_argument("--data", default="assets/counterfact_test2191_first200.json")
    ap.add_argument("--paths", action="store_true", help="suffix-only vs whole-model steps (else batching)")
    ap.add_argument("--batch", action="store_true", help="with --paths: also time one NSE batch, C0 given")
    ap.add_argument("--repeat", type=int, default=1, help="timings: the best of this many runs")
    ap.add_argument("--suffix_only", action="store_true",
                    help="with --paths: time only the suffix-only path (the whole-model one takes minutes)")
    ap.add_argument("--step_trials", type=int, default=0,
                    help="with --paths: also the best of this many single steps per path (robust to a shared CPU)")
    args = ap.parse_args()
    stamp = Provenance.start(__file__)
    model, tok, hp = _load(args)
    records = json.load(open(args.data))[: args.n]
    reqs = [normalize_request({"case_id": r["case_id"], **r["requested_rewrite"]}) for r in records]
    out = {"model": "SmolLM2-135M" if args.smollm2 else args.model, "requests": args.n,
           "max_steps": hp.v_num_grad_steps, "device": str(next(model.parameters()).device),
           "torch_threads": torch.get_num_threads(), "load_before": _load_average()}
    if args.paths:
        templates = _templates(model, tok, args.smollm2)
        if args.step_trials:
            out.update(_step_times(model, tok, reqs, hp.value_spec(model), templates, args.step_trials))
            print(json.dumps(out), flush=True)  # partial results first: the full runs take long on a busy CPU
        out.update(_compare_paths(model, tok, reqs, hp, templates, args.repeat, with_full=not args.suffix_only))
        if args.batch:
            out.update(_nse_batch(model, tok, reqs, hp, templates, args.repeat, args.suffix_only))
    else:
        out.update(_compare_batching(model, tok, reqs, hp.value_spec(model)))
    out["load_after"] = _load_average()
    out["provenance"] = stamp.finish()
    print(json.dumps(out, indent=1))


def _load(args):
    if args.smollm2:
        from bench.smollm2 import load_smollm2

        model, tok = load_smollm2()
        hp = dataclasses.replace(NSEHyperParams.from_json("hparams/NSE/SmolLM2-135M.json"), **ORIGINAL_STYLE)
    else:
        model, tok = load_model_and_tokenizer(args.model)
        hp = NSEHyperParams.from_json(args.hparams)
    if args.steps is not None:
        hp = dataclasses.replace(hp, v_num_grad_steps=args.steps)
    return model, tok, hp.resolved_for(model)


def _templates(model, tok, generated: bool) -> list[list[str]]:
    """The editor's own (sampled) templates for a real model, so prompt lengths are the real ones."""
    if not generated:
        return TEMPLATES
    from util.context_templates import generate_context_templates

    return generate_context_templates(model, tok, seed=0)


def _load_average() -> float:
    return float(open("/proc/loadavg").read().split()[0])


def _timed(fn, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def _compare_batching(model, tok, reqs, spec) -> dict:
    t_batched, batched = _timed(lambda: compute_values(model, tok, reqs, spec, TEMPLATES), 1)
    t_single, singles = _timed(lambda: torch.cat([compute_values(model, tok, [r], spec, TEMPLATES).z for r in reqs]), 1)
    return {"batched_s": round(t_batched, 2), "one_at_a_time_s": round(t_single, 2),
            "speedup": round(t_single / t_batched, 2), "max_abs_z_diff": float((batched.z - singles).abs().max())}


def _compare_paths(model, tok, reqs, hp, templates, repeat: int, with_full: bool = True) -> dict:
    spec = hp.value_spec(model)
    t_fast, fast = _timed(lambda: compute_values(model, tok, reqs, spec, templates), repeat)
    flops = _value_flops(model, tok, reqs, spec, templates, fast.updates)
    out = {"values_suffix_only_s": round(t_fast, 2), "updates_suffix_only": fast.updates,
           "gflop_suffix_only": round(flops["suffix_only"] / 1e9, 1),
           "gflop_per_s_suffix_only": round(flops["suffix_only"] / t_fast / 1e9, 1),
           "gflop_full": round(flops["full"] / 1e9, 1), "tokens": flops["tokens"]}
    if with_full:
        full_spec = dataclasses.replace(spec, suffix_only=False)
        t_full, full = _timed(lambda: compute_values(model, tok, reqs, full_spec, templates), repeat)
        rel = ((fast.z - full.z).norm(dim=1) / full.z.norm(dim=1)).max()
        out.update({"values_full_s": round(t_full, 2), "speedup": round(t_full / t_fast, 2),
                    "updates_full": full.updates, "max_rel_z_diff": float(rel),
                    "max_abs_z_diff": float((fast.z - full.z).abs().max()),
                    "gflop_per_s_full": round(flops["full"] / t_full / 1e9, 1)})
    out["matmul_peak_gflop_per_s"] = round(_matmul_flops_per_s() / 1e9, 1)
    return out


def _step_times(model, tok, reqs, spec, templates, trials: int) -> dict:
    """Seconds of one optimisation step (forward to the losses' hidden states, the LM head, backward)
    per path, the best of ``trials`` alternating tries: a short try often runs while the CPU is free."""
    from util.values import build_batch, ValueBatch, _FullForward, _SuffixOnlyForward, frozen
    from util.prefix_cache import split_layer_name

    b = build_batch(tok, reqs, templates, spec.fact_token)
    b = ValueBatch(**{k: v.to(next(model.parameters()).device) for k, v in vars(b).items()})
    head = model.get_output_embeddings().weight
    delta = torch.zeros(len(reqs), model.config.hidden_size, requires_grad=True)
    best = {"full": float("inf"), "suffix_only": float("inf"), "cache_pass": float("inf")}
    with frozen(model):
        paths = {"full": _FullForward(model, spec, b)}
        for _ in range(trials):
            t0 = time.perf_counter()
            paths["suffix_only"] = _SuffixOnlyForward(model, spec, b, split_layer_name(spec.final_layer)[0])
            best["cache_pass"] = min(best["cache_pass"], time.perf_counter() - t0)
            for name, forward in paths.items():
                t0 = time.perf_counter()
                target, kl = forward(delta)
                loss = torch.log_softmax(torch.cat([target, kl]) @ head.T, -1).mean()
                loss.backward()
                best[name] = min(best[name], time.perf_counter() - t0)
    return {f"step_best_{k}_s": round(v, 3) for k, v in best.items()}


def _value_flops(model, tok, reqs, spec, templates, updates: list[int]) -> dict:
    """Multiply-adds x2 of the value phase, from its shapes: layers as 2 x params x tokens forward and
    the same again backward (weights are frozen: input gradients only), attention scores and mixing,
    and the LM head on the scored rows. Norms, softmax and elementwise work are left out."""
    from util.architectures import get_module
    from util.prefix_cache import split_layer_name
    from util.values import build_batch

    b = build_batch(tok, reqs, templates, spec.fact_token)
    layers_path, last = split_layer_name(spec.final_layer)
    site = int(spec.site[len(layers_path) + 1:].split(".")[0])
    layers = get_module(model, layers_path)
    per_layer = sum(p.numel() for p in layers[last].parameters() if p.dim() == 2)
    cfg = model.config.get_text_config()
    width = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    head = 2 * cfg.vocab_size * cfg.hidden_size * (len(b.tgt_row) + len(b.kl_rows))
    steps = max(updates) + 1  # evaluations: every update's forward, plus the last one
    rows, length = b.ids.shape
    end = b.fact_pos.clone().scatter_reduce(0, b.tgt_row, b.tgt_pos, reduce="amax")
    suffix = int((end - b.fact_pos + 1).max())
    above = last - site

    def layer(tokens: int, keys: int) -> float:
        return 2 * per_layer * tokens + 4 * width * tokens * keys

    def phase(tokens: int, keys: int, fwd_layers: int) -> float:
        forward = layer(tokens, keys) * fwd_layers + head
        backward = layer(tokens, keys) * above + head  # the last evaluation takes no step
        return steps * forward + (steps - 1) * backward

    full = phase(rows * length, length, last + 1)
    fast = phase(rows * suffix, length + suffix, above)
    fast += layer(rows * length, length) * (last + 1)  # the one full pass that fills the cache
    return {"full": full, "suffix_only": fast, "tokens": {"rows": rows, "length": length, "suffix": suffix,
                                                           "layers_above_site": above, "evaluations": steps}}


def _matmul_flops_per_s(n: int = 2048, repeat: int = 5) -> float:
    """This CPU's practical float32 peak: the best of a few large square matmuls."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm up the kernels and caches
    seconds, _ = _timed(lambda: a @ b, repeat)
    return 2 * n**3 / seconds


def _nse_batch(model, tok, reqs, hp, templates, repeat: int, suffix_only_alone: bool = False) -> dict:
    """One NSE batch with C0 given (a prepared editor), whole-model steps vs suffix-only; the
    value phase timed inside it."""
    from experiments.algorithms import ALGORITHMS

    out = {}
    cov = None
    paths = (("suffix_only", True),) if suffix_only_alone else (("full", False), ("suffix_only", True))
    for label, suffix_only in paths:
        times = []
        for _ in range(repeat):
            editor = ALGORITHMS["NSE"].make_editor(model, tok, hp, context_templates=templates, progress=False)
            editor.cov = cov if cov is not None else _given_c0(model, hp)
            cov = editor.cov
            editor.value_spec = dataclasses.replace(editor.value_spec, suffix_only=suffix_only)
            value_time = []
            real = editor._compute_values

            def timed_values(requests, real=real, value_time=value_time):
                t0 = time.perf_counter()
                result = real(requests)
                value_time.append(time.perf_counter() - t0)
                return result

            editor._compute_values = timed_values
            snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
            report = editor.edit(reqs)
            update = {n: (p.detach() - snapshot[n]) for n, p in model.named_parameters()
                      if not torch.equal(p, snapshot[n])}
            with torch.no_grad():  # back to the unedited model for the next run
                for n, p in model.named_parameters():
                    p.copy_(snapshot[n])
            times.append((report.seconds, value_time[0]))
        batch_s, values_s = min(times)
        out[f"batch_{label}_s"], out[f"batch_{label}_values_s"] = round(batch_s, 2), round(values_s, 2)
        out[f"_update_{label}"] = update
    fast, full = out.pop("_update_suffix_only"), out.pop("_update_full", None)
    if full is not None:
        out["update_max_rel_diff"] = max(float((fast[n] - full[n]).norm() / full[n].norm()) for n in full)
    return out


def _given_c0(model, hp) -> dict[int, torch.Tensor]:
    """A stand-in C0 (the statistics pass is not what this measures): E[k k^T] of random keys
    scaled like the MLP's inputs, positive definite."""
    from util.architectures import get_module
    from util.rewrite_weights import weight_d_by_f

    gen = torch.Generator().manual_seed(0)
    cov = {}
    for layer in hp.layers:
        f = weight_d_by_f(get_module(model, hp.rewrite_module(layer))).shape[1]
        keys = torch.randn(4 * f, f, generator=gen) * 0.1
        cov[layer] = (keys.T @ keys / keys.shape[0]).to(getattr(torch, hp.mom2_dtype))
    return cov


if __name__ == "__main__":
    main()
