"""k-NN probe: ``python probes/knn.py --ckpt RUN_DIR [--data DIR] [--pool avg]``.

Scores the exported backbone (and, for comparison, raw pixels and a random-init backbone)
with weighted k-NN, prints a table and writes ``knn.json`` next to the checkpoint."""
from sslvit.eval.cli import main
from sslvit.eval.knn_probe import KNNProbeConfig, format_table, run_knn_probe

if __name__ == "__main__":
    main(KNNProbeConfig, run_knn_probe, format_table)
