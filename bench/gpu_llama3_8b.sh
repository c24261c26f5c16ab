#!/usr/bin/env bash
# One batch of 100 NSE edits on the Llama-3-8B shape (random bf16 weights) on one GPU, with the
# original Llama3-8B NSE hyperparameters: seconds per phase, peak memory, statistics tokens/s and
# the value phase's FLOP/s against the data sheet. Needs no network: the tokenizer is trained on
# assets/corpus, which also feeds the statistics (the hub's wikipedia is not reachable offline).
# Random weights keep every residual small, so the residual gate is opened (alpha 0, no upper
# bound): every request takes part in every round, the most work a batch can take.
#   bash bench/gpu_llama3_8b.sh                  # results in bench/results/edit_NSE_<time>.json
#   CONFIG=my.json DEVICE=cpu DTYPE=float32 N=4 bash bench/gpu_llama3_8b.sh   # a smoke run elsewhere
set -euo pipefail
cd "$(dirname "$0")/.."
python bench/bench_edit.py --model "config:${CONFIG:-bench/configs/llama-3-8b.json}" --alg NSE \
    --hparams hparams/NSE/Llama3-8B.json --n "${N:-100}" --device "${DEVICE:-cuda}" --dtype "${DTYPE:-bfloat16}" \
    --stats_dir "${STATS_DIR:-data/stats}" \
    --set mom2_dataset=assets/corpus "mom2_n_samples=${MOM2_N:-2000}" alpha=0 upper_bound=1e30 "$@"
