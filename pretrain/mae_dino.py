"""MAE + DINO in one step: ``python pretrain/mae_dino.py [--weights.mae W] [--weights.dino W] ...``
(several processes: ``accelerate launch --config_file launch/multi_gpu.yaml pretrain/mae_dino.py ...``).

With no arguments it pretrains a ViT-Ti/4 on the embedded digits with both presets' keys."""
from sslvit.recipes.mae_dino import MAEDINORunConfig
from sslvit.train.entry import main

if __name__ == "__main__":
    main(MAEDINORunConfig, preset="mae_dino")
