#!/usr/bin/env bash
# Wall time of `make demo` as a new user gets it: a fresh clone, no .venv (install included).
# Prints the install, pretraining and probe phases and the k-NN and linear probe tables.
#   bash benchmarks/demo_time.sh
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
dir=$(mktemp -d)
git clone -q "$src" "$dir/sslvit"
cd "$dir/sslvit"
start=$(date +%s)
make venv > install.log 2>&1
installed=$(date +%s)
make demo > demo.log 2>&1
end=$(date +%s)
.venv/bin/python -c "import sys; sys.path.insert(0, 'benchmarks'); from flops import print_machine; print_machine()"
grep -E "^(features|pretrained|random_init|raw_pixels|k-NN|the same heads)" demo.log || true
echo "install: $((installed - start)) s, demo (pretrain + probe): $((end - installed)) s, total: $((end - start)) s"
rm -rf "$dir"
