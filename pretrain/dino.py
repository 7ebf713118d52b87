"""DINO pretraining: ``python pretrain/dino.py [--config FILE.yaml] [--key value ...]``
(several processes: ``accelerate launch --config_file launch/multi_gpu.yaml pretrain/dino.py ...``).

With no arguments it pretrains a small ViT on the embedded digits; ``--data DIR`` trains on
your own folder of images with the DINO reference defaults. ``--help`` lists every key."""
from sslvit.recipes.dino import DINORunConfig
from sslvit.train.entry import main

if __name__ == "__main__":
    main(DINORunConfig, preset="dino")
