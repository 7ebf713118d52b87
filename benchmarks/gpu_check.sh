#!/usr/bin/env bash
# On one CUDA GPU, in one go (the device lease is short):
#  1. smoke: every pretraining entry for one epoch on the cluttered set at `train.precision auto`
#     (bf16 on a GPU), then the k-NN, linear and both fine-tuning probes on the MAE run;
#  2. budget: DINO and MAE at their cluttered presets with 6x and 4x the epochs the 2-core CPU
#     budget allows, through benchmarks/quality.py (k-NN, linear, fine-tune against the random twin):
#     does the recipe learn when it gets the steps, or is it the recipe?
# Every job writes under ROOT; ROOT/summary.txt holds the tables; ROOT/logs.tgz the logs and jsons.
#   bash benchmarks/gpu_check.sh ROOT [BUDGET_S]
set -uo pipefail
cd "$(dirname "$0")/.."
root=${1:?give an output folder}; budget=${2:-420}
py=${PYTHON:-python3}
mkdir -p "$root"
$py -c "import sys; sys.path.insert(0, 'benchmarks'); from flops import print_machine; print_machine()
import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$root/summary.txt"

# the set once, before three processes would each build it
$py -c "from sslvit.data.cluttered import cluttered_split as c; c('train', 32); c('val', 32)"
# 2. the long runs first, in the background: they are the slow part (crops are augmented on the CPU)
timeout "$budget" $py benchmarks/quality.py --objectives dino --out "$root/q-dino-long" \
  --extra "--train.epochs 30 --train.warmup_epochs 3 --train.knn_every 3 --train.num_workers 10" \
  > "$root/q-dino-long.txt" 2>&1 &
dino=$!
timeout "$budget" $py benchmarks/quality.py --objectives mae --out "$root/q-mae-long" \
  --extra "--train.epochs 100 --train.warmup_epochs 5 --train.knn_every 20 --train.num_workers 3" \
  > "$root/q-mae-long.txt" 2>&1 &
mae=$!

# 1. smoke, one process at a time beside them
smoke() {  # name, command...
  local name=$1; shift
  if timeout 240 "$@" > "$root/smoke-$name.log" 2>&1; then echo "ok    $name"; else echo "FAIL  $name (rc $?)"; fi
}
{
  for obj in mae beit dino ibot mae_dino; do
    smoke "$obj" $py "pretrain/$obj.py" --data cluttered --out "$root/smoke/$obj" --train.epochs 1 --train.num_workers 1
    grep -m1 -i 'precision' "$root/smoke-$obj.log" || true
  done
  smoke knn $py probes/knn.py --ckpt "$root/smoke/mae" --pool avg
  smoke linear $py probes/linear.py --ckpt "$root/smoke/mae" --epochs 5
  smoke finetune_full $py probes/finetune.py --ckpt "$root/smoke/mae" --epochs 2 --mode full
  smoke finetune_attention $py probes/finetune.py --ckpt "$root/smoke/mae" --epochs 2 --mode attention
  smoke resume $py pretrain/mae.py --data cluttered --out "$root/smoke/mae" --train.epochs 2 --resume \
    --train.num_workers 1
} | tee -a "$root/summary.txt"

wait $dino; dino_rc=$?  # here, not in the piped group below: a subshell cannot wait for these jobs
wait $mae; mae_rc=$?
{
echo "dino long: rc $dino_rc"; echo "mae long: rc $mae_rc"
for q in dino mae; do
  echo "== $q, long budget =="
  tail -n 12 "$root/q-$q-long.txt"
  $py -c "import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if 'knn_top1' in l]
print('online k-NN by epoch:', ' '.join(f\"{r.get('epoch')}:{r['knn_top1']:.1f}\" for r in rows))" \
    "$root/q-$q-long/seed0/$q/log.jsonl" 2>&1
done
} | tee -a "$root/summary.txt"
tar czf "$root/logs.tgz" --exclude='*.safetensors' --exclude='*.png' --exclude='*.pt' --exclude='checkpoints' \
  --exclude='*.html' --exclude='*.npy' -C "$root" . 2>/dev/null
