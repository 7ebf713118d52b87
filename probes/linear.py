"""Linear probe: ``python probes/linear.py --ckpt RUN_DIR [--recipe cls|avg|dino|dino_avg|blocks|pixels]``.

Extracts the frozen backbone's features once (cached under RUN_DIR/features/), trains a grid
of learning rates at once, picks the best on a held-out part of the train split, prints the
grid and writes ``linear.json`` next to the checkpoint. ``--recipe pixels`` puts the raw-pixel
baseline through the same heads and grid (``linear_pixels.json``)."""
from sslvit.eval.cli import main
from sslvit.eval.linear_probe import LinearProbeConfig, format_report, run_linear_probe

if __name__ == "__main__":
    main(LinearProbeConfig, run_linear_probe, format_report)
