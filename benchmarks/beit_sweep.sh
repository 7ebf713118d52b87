#!/usr/bin/env bash
# BEiT's pixel tokenizer on the embedded cluttered set (2026-12-06): the codebook's size (vocab 128
# or 512) and the side each 8 px patch is pooled to before it is quantised (pixel_size 8: none; 4:
# 2x2 means, BEiT's dVAE also sees the image at half resolution). Every run is benchmarks/quality.py
# for BEiT with no fine-tuning: k-NN (k = 20; cls, avg) and the three linear protocols, beside its
# random-init twin and raw pixels. The keys are spelt out, so the sweep reads the same whatever the
# preset says.
#   bash benchmarks/beit_sweep.sh [OUT_ROOT] [CONFIG:RUN ...]
#   default: the screen (all four configs on `cluttered` seed 0 and the hard variant seed 1), then
#   the old preset (base) and the chosen one (p4v512) on seeds 1 and 2 and the other variants.
# One thread per run (OMP_NUM_THREADS=1), which reproduces a run to the decimal; run two scripts
# at once on 2 cores, e.g. with the names split in halves.
set -euo pipefail
cd "$(dirname "$0")/.."
root=${1:-runs/beit-sweep}; shift || true
py=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
declare -A CONFIGS=(
  [base]="--tokenizer.pixel_size 8 --tokenizer.vocab 128"
  [pix4]="--tokenizer.pixel_size 4 --tokenizer.vocab 128"
  [v512]="--tokenizer.pixel_size 8 --tokenizer.vocab 512"
  [p4v512]="--tokenizer.pixel_size 4 --tokenizer.vocab 512"
)
declare -A DATA=([c0]="cluttered 0" [c1]="cluttered 1" [c2]="cluttered 2" [h1]="cluttered:seed=1,strength=1.5 1"
                 [h2]="cluttered:seed=1,strength=1.5 2" [m2]="cluttered:seed=2,strength=0.75 2")
names=("$@"); [ ${#names[@]} -gt 0 ] || names=(base:c0 base:h1 pix4:c0 pix4:h1 v512:c0 v512:h1 p4v512:c0 p4v512:h1
                                               base:c1 base:c2 base:h2 base:m2 p4v512:c1 p4v512:c2 p4v512:h2 p4v512:m2)
mkdir -p "$root"
for name in "${names[@]}"; do
  config=${name%%:*} run=${name#*:}
  read -r data seed <<< "${DATA[$run]}"
  out="$root/${config}_$run"
  [ -f "$out/quality.json" ] || $py benchmarks/quality.py --data "$data" --objectives beit --seeds "$seed" \
      --finetune_epochs 0 --out "$out" --extra "${CONFIGS[$config]}" > "$out.log" 2>&1
  echo "$name: $(grep -a '^| beit |' "$out.log")"
done
