"""Visual tokenizers that sslvit fits itself: images -> token ids on the patch grid (BEiT's targets).
Names are imported on first use (PEP 562): ``sslvit.tokenizers.tokenizer_config`` comes without faiss."""
import importlib

_HOMES = {"FeatureTokenizer": "sslvit.tokenizers.features", "PixelTokenizer": "sslvit.tokenizers.pixel",
          "Tokenizer": "sslvit.tokenizers.base", "load_tokenizer": "sslvit.tokenizers.base"}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'sslvit.tokenizers' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
