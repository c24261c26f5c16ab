#!/usr/bin/env bash
# Copy a finished run's files into bench/results so the README's numbers can be checked from a clone:
# config, params, edit reports, log, completion, timings, curve and downstream points, and the per-case
# files as one archive (the editor state files, hundreds of MB, stay out).
#   bash bench/archive_run.sh results/stream/AlphaEdit/run_001 bench/results/frontier/AlphaEdit_NAS_run_001
set -euo pipefail
run=${1:?usage: bench/archive_run.sh RUN_DIR DEST_DIR}; dest=${2:?usage: bench/archive_run.sh RUN_DIR DEST_DIR}
[ -f "$run/run_complete.json" ] || { echo "error: $run has no run_complete.json (not finished); resume it first" >&2; exit 2; }
mkdir -p "$dest"
for f in config.json params.json edit_reports.json run.log run_complete.json timings.json; do
    [ -f "$run/$f" ] && cp "$run/$f" "$dest/"
done
for d in curves downstream pre_edit; do
    [ -d "$run/$d" ] && { rm -rf "${dest:?}/$d"; cp -r "$run/$d" "$dest/"; }
done
( cd "$run" && ls | grep -E '^[0-9]+_edits-case_.+\.json$' | tar -czf - -T - ) > "$dest/case_files.tar.gz"
echo "archived $run -> $dest ($(du -sh "$dest" | cut -f1))"
