"""Fine-tuning: ``python probes/finetune.py --ckpt RUN_DIR [--mode full|attention]
[--img_size N]``.

Full fine-tuning with layer-wise lr decay, drop path, label smoothing and DeiT III's 3-Augment,
or attention-only (attention weights, head and position embedding); prints val accuracy, the
trainable parameter count, step time and peak memory, and writes RUN_DIR/finetune_<mode>/."""
from sslvit.eval.cli import main
from sslvit.eval.finetune import FinetuneConfig, format_report, run_finetune

if __name__ == "__main__":
    main(FinetuneConfig, run_finetune, format_report)
