"""Attention maps: ``python probes/attention.py --ckpt RUN_DIR [--image PATH] [--img_size N]``.

Draws the last block's cls-token attention per head over the run's validation images (or one
image of yours, at any size) and writes ``attention.png`` next to the checkpoint."""
from sslvit.eval.attention_probe import AttentionConfig, format_report, run_attention
from sslvit.eval.cli import main

if __name__ == "__main__":
    main(AttentionConfig, run_attention, format_report)
