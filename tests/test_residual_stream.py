"""benchmarks/residual_stream.py measures what docs/results.md says of MAE's shared vector: a known
constant planted in the stream must come back as the shared part, in the branch that wrote it,
pointing along the final shared vector."""
import sys
from pathlib import Path

import pytest
import torch

from sslvit.models.backbone_config import BackboneConfig
from sslvit.models.vit import build_backbone

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import residual_stream  # noqa: E402


def test_split_recovers_a_planted_constant():
    g = torch.Generator().manual_seed(0)
    D = 64
    const = torch.full((D,), 3.0)
    varying = torch.randn(256, 8, D, generator=g)
    same, per_place, vary = residual_stream.split(varying + const)
    assert same == pytest.approx(3.0, abs=0.05)  # the mean over 256 images of unit noise is ~0.06 / sqrt(8)
    assert per_place < 0.15
    assert vary == pytest.approx(1.0, abs=0.05)


def test_a_bias_written_by_every_mlp_is_found_there_and_along_the_shared_vector():
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(size="tiny", patch_size=8, img_size=32, depth=3)).eval()
    direction = torch.randn(backbone.embed_dim)
    with torch.no_grad():
        for b in backbone.blocks:
            b.mlp.fc2.bias.copy_(2.0 * direction)  # each MLP adds the same constant to every token
    imgs = torch.rand(16, 3, 32, 32)
    rows = residual_stream.decomposition(backbone, imgs)
    assert len(rows) == 1 + 3
    same_after = [r[0] for r in rows]
    planted = 3 * 2.0 * direction.pow(2).mean().sqrt().item()  # three blocks' constants, in one direction
    assert same_after[-1] > 0.95 * planted and same_after[-1] > 3 * same_after[0]
    for _same, _place, _vary, attn_w, mlp_w, attn_cos, mlp_cos in rows[1:]:
        assert mlp_w > 5 * attn_w
        assert mlp_cos > 0.95  # not 1: the final shared vector also holds the embedding's own (rms ~1)
    assert residual_stream.output_bias_rms(backbone)[1] == pytest.approx(
        2.0 * direction.pow(2).mean().sqrt().item(), rel=1e-5)
