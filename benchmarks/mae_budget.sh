#!/usr/bin/env bash
# MAE's cluttered preset (seed 0) against more steps, a higher mask ratio and a higher lr, each
# judged by the linear probe quality.py uses (average-pooled features, BatchNorm head, 50 epochs,
# the same lr grid): which of them buys MAE's linear probe the most. The three runs go at once;
# on a GPU (where it was measured) that takes about 2 minutes, on 2 CPU cores about an hour.
#   bash benchmarks/mae_budget.sh OUT_ROOT
set -uo pipefail
cd "$(dirname "$0")/.."
root=${1:?give an output folder}
py=${PYTHON:-python3}
mkdir -p "$root"
$py -c "import sys; sys.path.insert(0, 'benchmarks'); from flops import print_machine; print_machine()"
job() {  # name, keys over the preset...
  local name=$1; shift
  $py pretrain/mae.py --data cluttered --out "$root/$name" --train.num_workers 5 --train.knn_every 0 "$@" \
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
job e50 --train.epochs 50 --train.warmup_epochs 2 &
job e50_m75 --train.epochs 50 --train.warmup_epochs 2 --mae.mask_ratio 0.75 &
job e25_blr3e-3 --train.blr 3e-3 &
wait
