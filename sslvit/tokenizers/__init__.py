"""Visual tokenizers that sslvit fits itself: images -> token ids on the patch grid (BEiT's targets)."""
from sslvit.tokenizers.base import Tokenizer, load_tokenizer
from sslvit.tokenizers.features import FeatureTokenizer
from sslvit.tokenizers.pixel import PixelTokenizer

__all__ = ["FeatureTokenizer", "PixelTokenizer", "Tokenizer", "load_tokenizer"]
