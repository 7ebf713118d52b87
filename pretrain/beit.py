"""BEiT pretraining: ``python pretrain/beit.py [--config FILE.yaml] [--key value ...]``
(several processes: ``accelerate launch --config_file launch/multi_gpu.yaml pretrain/beit.py ...``).

With no arguments it pretrains a ViT-Ti/4 on the embedded digits, fitting a pixel k-means
tokenizer on them first; ``--tokenizer.path FILE`` uses one fitted with
``python -m sslvit.tokenizers fit``. ``--help`` lists every key."""
from sslvit.recipes.beit import BEiTRunConfig
from sslvit.train.entry import main

if __name__ == "__main__":
    main(BEiTRunConfig, preset="beit")
