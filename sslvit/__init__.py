"""sslvit: self-supervised pretraining for Vision Transformers (MAE, BEiT-style, DINO)."""
__version__ = "0.1.0"
