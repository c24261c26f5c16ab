#!/usr/bin/env bash
# Issue 17's stream: SmolLM2-135M fp32, the first 1000 CounterFact records in batches of 100, both metric
# families (teacher forced and --generation_eval), the general-capability tasks as the original scored
# them, for AlphaEdit and NSE with and without NAS norm anchoring, and ENCORE. One run after another
# (the first took 2.3 h of process time on a 2-core CPU, other jobs beside it); a killed run resumes with its line and --continue_from_run=run_NNN.
# Both AlphaEdit rows use the float64 projection, as every published AlphaEdit run here.
#   bash bench/frontier_runs.sh                  # all five, each a new run folder in results/stream/<ALG>
#   bash bench/frontier_runs.sh NSE_NAS          # one of: AlphaEdit_NAS AlphaEdit NSE NSE_NAS ENCORE
set -euo pipefail
cd "$(dirname "$0")/.."
export DOWNSTREAM=original
common=(--dataset_size_limit=1000 --generation_eval)
run() {
    case "$1" in
        AlphaEdit_NAS) bash bench/protocol_run.sh AlphaEdit --hparams_fname=bench/configs/AlphaEdit_SmolLM2-135M_NAS_float64.json "${common[@]}" "${@:2}" ;;
        AlphaEdit) bash bench/protocol_run.sh AlphaEdit --hparams_fname=bench/configs/AlphaEdit_SmolLM2-135M_float64.json "${common[@]}" "${@:2}" ;;
        NSE) bash bench/protocol_run.sh NSE "${common[@]}" "${@:2}" ;;
        NSE_NAS) bash bench/protocol_run.sh NSE --hparams_fname=SmolLM2-135M_NAS.json "${common[@]}" "${@:2}" ;;
        ENCORE) bash bench/protocol_run.sh ENCORE "${common[@]}" "${@:2}" ;;
        *) echo "error: unknown variant '$1'; one of AlphaEdit_NAS AlphaEdit NSE NSE_NAS ENCORE" >&2; exit 2 ;;
    esac
}
if [ $# -gt 0 ]; then run "$@"; else for v in AlphaEdit_NAS AlphaEdit NSE NSE_NAS ENCORE; do run "$v"; done; fi
