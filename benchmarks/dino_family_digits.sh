#!/usr/bin/env bash
# DINO, DINO + KoLeo (0.1) and iBOT on the embedded digits with their digits presets (same seed,
# same keys but the one compared), then k-NN (k = 20, cls and avg pool) and the linear probe (cls)
# of each teacher.   bash benchmarks/dino_family_digits.sh [OUT_ROOT]
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-runs/dino-family}
py=${PYTHON:-.venv/bin/python}
$py -c "import sys; sys.path.insert(0, 'benchmarks'); from flops import print_machine; print_machine()"
run() {  # name script extra...
  local name=$1 script=$2; shift 2
  [ -f "$root/$name/backbone.safetensors" ] || $py "$script" --out "$root/$name" --train.precision fp32 "$@" > "$root/$name.log" 2>&1
  grep -o '"knn_top1": [0-9.]*' "$root/$name/log.jsonl" | tr '\n' ' ' | sed "s/^/$name online k-NN by epoch: /"; echo
}
mkdir -p "$root"
# from random weights in iBOT's digits shape (learned positions, no LayerScale): DINO's digits preset has MAE's
# shape since 2026-12-06, for its start from MAE's run, which this comparison of losses leaves out
shape=(--model.pos_embed learned --model.init_values null)
run dino pretrain/dino.py "${shape[@]}"
run dino_koleo pretrain/dino.py --dino.koleo_weight 0.1 "${shape[@]}"
run ibot pretrain/ibot.py
for name in dino dino_koleo ibot; do
  for pool in cls avg; do
    echo "$name k-NN ($pool): $($py probes/knn.py --ckpt "$root/$name" --ks 20 --pool $pool --baselines false \
      --picture_queries 0 | awk '/^pretrained/ {print $3}')"
  done
  echo "$name linear (cls): $($py probes/linear.py --ckpt "$root/$name" | grep -o 'val top-1 [0-9.]*' | tail -1)"
done
