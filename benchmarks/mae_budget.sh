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
  $py probes/linear.py --ckpt "$root/$name" --recipe avg --head mae --epochs 50 \
    --lrs "[0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0]" > "$root/$name-linear.log" 2>&1
  $py -c "import json, sys; b = json.load(open(sys.argv[1]))['best']; print(f\"| {sys.argv[2]} | \`{sys.argv[3]}\` | {b['val_top1']:.1f} | {b['lr']} |\")" \
    "$root/$name/linear.json" "$name" "$*" 2>&1 | tail -n 1
}
echo "| run | keys over the preset | linear | best lr |"
echo "|---|---|---|---|"
job e50 --train.epochs 50 --train.warmup_epochs 2 &
job e50_m75 --train.epochs 50 --train.warmup_epochs 2 --mae.mask_ratio 0.75 &
job e25_blr3e-3 --train.blr 3e-3 &
wait
