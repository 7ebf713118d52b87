"""DINO pretraining: ``accelerate launch pretrain/dino.py [--config FILE.yaml] [--key value ...]``.

With no arguments it pretrains a small ViT on the embedded digits; ``--data DIR`` trains on
your own folder of images with the DINO reference defaults. ``--help`` lists every key."""
from sslvit.recipes.dino import DINORunConfig
from sslvit.train.entry import main

if __name__ == "__main__":
    main(DINORunConfig, preset="dino")
