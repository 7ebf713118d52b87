#!/usr/bin/env bash
# MAE's cluttered preset (seed 0) with other keys, each judged by the linear probe quality.py uses
# (average-pooled features, BatchNorm head, 50 epochs, the same lr grid): which of them buys MAE's
# linear probe the most. The runs go at once. The three default ones are the preset before
# 2026-12-04 (mask ratio 0.5, blr 1.5e-3, 25 epochs) with more epochs, a higher mask ratio or a
# higher lr, spelled in full so they stay that: about 2 minutes on a GPU (where they were
# measured), about an hour on 2 CPU cores.
#   bash benchmarks/mae_budget.sh OUT_ROOT [NAME 'KEYS OVER THE PRESET' ...]
#   WORKERS=0 OMP_NUM_THREADS=1 bash benchmarks/mae_budget.sh OUT e45 '--train.epochs 45' ...   # on a CPU
#   ENTRY=beit bash benchmarks/mae_budget.sh OUT e48 '--train.epochs 48'   # another objective's preset, same probe
set -uo pipefail
cd "$(dirname "$0")/.."
root=${1:?give an output folder}
shift
(( $# % 2 == 0 )) || { echo "give each run as a NAME and its KEYS (one quoted word)" >&2; exit 2; }
py=${PYTHON:-python3}
mkdir -p "$root"
$py -c "import sys; sys.path.insert(0, 'benchmarks'); from flops import print_machine; print_machine()"
job() {  # name, keys over the preset...
  local name=$1; shift
  $py "pretrain/${ENTRY:-mae}.py" --data cluttered --out "$root/$name" --train.num_workers "${WORKERS:-5}" --train.knn_every 0 "$@" \
    > "$root/$name.log" 2>&1 &&
  $py - "$root/$name" "$name" "$*" <<'PY' 2>&1 | tail -n 1
import json, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from quality import linear  # quality.py's own probe: the same head, epochs and lr grid

run, name, keys = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
top1 = linear(run)
print(f"| {name} | `{keys}` | {top1:.1f} | {json.loads((run / 'linear.json').read_text())['best']['lr']} |")
PY
}
echo "| run | keys over the preset | linear | best lr |"
echo "|---|---|---|---|"
if (( $# )); then
  while (( $# )); do
    # shellcheck disable=SC2086  # the keys are words
    job "$1" $2 &
    shift 2
  done
else
  old=(--mae.mask_ratio 0.5 --train.blr 1.5e-3 --train.epochs 25 --train.warmup_epochs 1)
  job e50 "${old[@]}" --train.epochs 50 --train.warmup_epochs 2 &
  job e50_m75 "${old[@]}" --train.epochs 50 --train.warmup_epochs 2 --mae.mask_ratio 0.75 &
  job e25_blr3e-3 "${old[@]}" --train.blr 3e-3 &
fi
wait
