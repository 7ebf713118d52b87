"""iBOT pretraining: ``python pretrain/ibot.py [--config FILE.yaml] [--key value ...]``
(several processes: ``accelerate launch --config_file launch/multi_gpu.yaml pretrain/ibot.py ...``).

DINO's cls self-distillation plus masked-patch self-distillation. With no arguments it
pretrains a ViT-Ti/4 on the embedded digits; ``--data DIR`` uses iBOT's ViT-S/16 recipe."""
from sslvit.recipes.ibot import IBOTRunConfig
from sslvit.train.entry import main

if __name__ == "__main__":
    main(IBOTRunConfig, preset="ibot")
