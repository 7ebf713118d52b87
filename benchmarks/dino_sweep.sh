#!/usr/bin/env bash
# DINO on the embedded cluttered set: the preset against the changes tried to make its k-NN rise
# within the 10-minute budget (depth, lr, centring, grey crops, stronger colour jitter, fixed sin-cos
# positions, clean variant, clean variant with grey crops, longer run). Each run prints its online
# k-NN (k = 20, teacher cls) after every epoch, then the final k-NN (k = 20) of the teacher's cls and
# average-pooled features.
#   bash benchmarks/dino_sweep.sh [OUT_ROOT] [NAME ...]      (default: every run below)
# One thread per run (OMP_NUM_THREADS=1): the figures are about learning per step, not speed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-runs/dino-sweep}; shift || true
py=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
$py -c "import sys; sys.path.insert(0, 'benchmarks'); from flops import print_machine; print_machine()"
declare -A RUNS=(
  [d6_blr4e-3_8ep]="--model.depth 6 --train.blr 4e-3 --train.epochs 8"
  [d6_sinkhorn_4ep]="--model.depth 6 --train.blr 4e-3 --train.epochs 4 --dino.centering sinkhorn"
  [d6_grey_4ep]="--model.depth 6 --train.epochs 4 --crops.grayscale_p 1.0"
  [d6_sincos_6ep]="--model.depth 6 --train.epochs 6 --model.pos_embed sincos"
  [d6_batch16_3ep]="--model.depth 6 --train.batch_size 16 --train.blr 4e-3 --train.epochs 3"
  [d4_blr2e-3_12ep]="--model.depth 4 --train.blr 2e-3 --train.epochs 12"
  [d6_strength0_4ep]="--data cluttered:strength=0 --model.depth 6 --train.epochs 4"
  [d6_strongcolour_4ep]="--model.depth 6 --train.epochs 4 --crops.color_jitter [0.8,0.8,0.8,0.5] --crops.grayscale_p 0.5"
  [d6_strength0_grey_4ep]="--data cluttered:strength=0 --model.depth 6 --train.epochs 4 --crops.grayscale_p 1.0"
  [d6_strength0_grey_10ep]="--data cluttered:strength=0 --model.depth 6 --train.epochs 10 --crops.grayscale_p 1.0"
)
names=("$@"); [ ${#names[@]} -gt 0 ] || names=(d6_blr4e-3_8ep d6_sinkhorn_4ep d6_grey_4ep d6_sincos_6ep d4_blr2e-3_12ep
                                               d6_strength0_4ep d6_batch16_3ep d6_strongcolour_4ep d6_strength0_grey_4ep
                                               d6_strength0_grey_10ep)
mkdir -p "$root"
echo "| run | keys over the cluttered preset | online k-NN by epoch | k-NN cls | k-NN avg |"
echo "|---|---|---|---|---|"
for name in "${names[@]}"; do
  keys=${RUNS[$name]}
  # shellcheck disable=SC2086  # the keys are words
  data=(--data cluttered); [[ $keys == *--data* ]] && data=()
  [ -f "$root/$name/backbone.safetensors" ] || $py pretrain/dino.py "${data[@]}" --out "$root/$name" \
    --train.knn_every 1 --train.precision fp32 $keys > "$root/$name.log" 2>&1
  online=$(grep -o '"knn_top1": [0-9.]*' "$root/$name/log.jsonl" | awk '{printf "%.1f ", $2}')
  knn() { $py probes/knn.py --ckpt "$root/$name" --ks 20 --pool "$1" --baselines false --picture_queries 0 \
            | awk '/^pretrained/ {print $3; exit}'; }
  echo "| $name | \`$keys\` | $online| $(knn cls) | $(knn avg) |"
done
