#!/usr/bin/env bash
# The paper's protocol on SmolLM2-135M (fp32, CPU): the first 2000 CounterFact test records in batches
# of 100, general-capability tasks and a curve point every 5 batches, generation on every 10th case,
# every case scored at the end. One method per call; all share one C0 (data/stats, by content).
#   bash bench/protocol_run.sh NSE                       # a new run in results/stream/NSE/run_NNN
#   bash bench/protocol_run.sh NSE --continue_from_run=run_000   # resume a killed one
#   DTYPE=bfloat16 bash bench/protocol_run.sh NSE        # the opt-in bf16 row
# The published runs scored the general-capability tasks by likelihood (the only protocol then), so
# that stays this script's default; DOWNSTREAM=original scores them as the original code did.
set -euo pipefail
cd "$(dirname "$0")/.."
alg=${1:?usage: bench/protocol_run.sh ALG [extra flags]}; shift
gguf=$(python -c "import sys; sys.path.insert(0, 'bench'); from smollm2 import smollm2_dir, GGUF_FILE; print(smollm2_dir() + '/' + GGUF_FILE)")
python -m experiments.evaluate --alg_name="$alg" --model_name="$gguf" --hparams_fname=SmolLM2-135M.json \
    --ds_name=mcf --ds_file=assets/counterfact_test2191_first2000.json --dataset_size_limit=2000 \
    --num_edits=100 --downstream_eval_steps=5 --curve_every=5 --generation_test_interval=10 \
    --dtype="${DTYPE:-float32}" --downstream_protocol="${DOWNSTREAM:-likelihood}" \
    --results_dir="${RESULTS:-results/stream}" "$@"
