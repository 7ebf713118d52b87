"""The backbone. Names are imported on first use (PEP 562), so ``sslvit.models.backbone_config``
(the keys a command's ``--help`` lists) comes without timm and torchvision."""
import importlib

_HOMES = {"HMLPStem": "sslvit.models.hmlp_stem", "VIT_SIZES": "sslvit.models.backbone_config",
          "BackboneConfig": "sslvit.models.backbone_config", "SSLViT": "sslvit.models.vit",
          "build_backbone": "sslvit.models.vit", "timm_spec": "sslvit.models.vit"}

__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'sslvit.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
