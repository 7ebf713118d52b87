from sslvit.models.hmlp_stem import HMLPStem
from sslvit.models.vit import VIT_SIZES, BackboneConfig, SSLViT, build_backbone, timm_spec

__all__ = ["HMLPStem", "VIT_SIZES", "BackboneConfig", "SSLViT", "build_backbone", "timm_spec"]
