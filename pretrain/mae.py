"""MAE pretraining: ``python pretrain/mae.py [--config FILE.yaml] [--key value ...]``
(several processes: ``accelerate launch --config_file launch/multi_gpu.yaml pretrain/mae.py ...``).

With no arguments it pretrains a ViT-Ti/4 on the embedded digits; ``--data DIR`` trains on
your own folder of images with the MAE reference defaults. ``--help`` lists every key."""
from sslvit.recipes.mae import MAERunConfig
from sslvit.train.entry import main

if __name__ == "__main__":
    main(MAERunConfig, preset="mae")
