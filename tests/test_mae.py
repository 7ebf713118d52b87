import numpy as np
import pytest
import torch

from sslvit.models import BackboneConfig, build_backbone
from sslvit.objectives.mae import MAE, MAEConfig, mae_loss


def reference_mae_loss(pred, target, mask, norm_pix=True):
    """MAE (He et al. 2022), written from the paper: each target patch normalised by its own mean
    and (unbiased) variance + 1e-6, MSE per patch, averaged over the masked patches only."""
    pred, target, mask = (np.asarray(a, dtype=np.float64) for a in (pred, target, mask))
    total, count = 0.0, 0.0
    for b in range(target.shape[0]):
        for n in range(target.shape[1]):
            if mask[b, n] == 0:
                continue
            t = target[b, n]
            if norm_pix:
                t = (t - t.mean()) / np.sqrt(t.var(ddof=1) + 1e-6)
            total += ((pred[b, n] - t) ** 2).mean()
            count += 1
    return total / count


def test_mae_loss_equals_paper_formula():
    pred, target = torch.randn(3, 16, 48, dtype=torch.float64), torch.randn(3, 16, 48, dtype=torch.float64) * 2 + 1
    mask = (torch.rand(3, 16) < 0.75).double()
    for norm_pix in (True, False):
        got = mae_loss(pred, target, mask, norm_pix).item()
        assert abs(got - reference_mae_loss(pred, target, mask, norm_pix)) < 1e-6


def test_unmasked_target_pixels_do_not_change_the_loss():
    pred, target = torch.randn(2, 16, 48), torch.randn(2, 16, 48)
    mask = torch.zeros(2, 16)
    mask[:, :12] = 1
    before = mae_loss(pred, target, mask)
    target[:, 12:] += 5.0  # the visible patches' pixels
    assert torch.equal(before, mae_loss(pred, target, mask))
    target[0, 0, 0] += 5.0  # a masked patch's pixel does matter
    assert not torch.equal(before, mae_loss(pred, target, mask))


def test_mae_objective_shapes_and_gradients():
    backbone = build_backbone(BackboneConfig(size="tiny", patch_size=8, img_size=32, depth=2))
    mae = MAE(backbone, MAEConfig(decoder_dim=64, decoder_depth=1, decoder_heads=4))
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)
    pred, target, mask = mae.forward_pred(x)
    assert pred.shape == target.shape == (4, 16, 3 * 8 * 8) and mask.shape == (4, 16)
    out = mae(x)
    out["loss"].backward()
    assert backbone.patch_embed.proj[0].weight.grad.abs().sum() > 0
    assert not backbone.pos_embed.requires_grad and not mae.decoder.decoder_pos_embed.requires_grad
    torch.manual_seed(1)  # the same mask again
    pics = mae.pictures(x)
    assert list(pics) == ["original", "masked", "reconstruction", "reconstruction + visible"]
    # pasted-back visible patches are the input pixels exactly
    vis = (1 - mask)[:, :, None] * target
    torch.testing.assert_close(mae.backbone.patchify(pics["reconstruction + visible"]).flatten(2)
                               * (1 - mask)[:, :, None],
                               vis)


def test_init_is_the_official_initialize_weights():
    """models_mae.py initialize_weights: cls and mask tokens N(0, 0.02); the patch projection
    xavier-uniform of its weight viewed as (out, in * k * k); every Linear xavier-uniform, bias 0."""
    import math

    import torch.nn as nn

    from sslvit.models.vit import BackboneConfig, build_backbone
    from sslvit.objectives.mae import MAE, MAEConfig

    torch.manual_seed(0)
    mae = MAE(build_backbone(BackboneConfig(size="small", depth=1, patch_size=16, img_size=32)),
              MAEConfig(decoder_dim=64, decoder_depth=1, decoder_heads=2))
    for token in (mae.backbone.cls_token, mae.decoder.mask_token):
        assert 0.017 < token.std().item() < 0.023, token.std()  # 384 and 64 draws of N(0, 0.02)
    convs = [m for m in mae.backbone.patch_embed.proj.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in mae.modules() if isinstance(m, nn.Linear)]
    for w in [c.weight.view(c.weight.shape[0], -1) for c in convs] + [m.weight for m in linears]:
        bound = math.sqrt(6.0 / (w.shape[0] + w.shape[1]))  # xavier-uniform: U(-a, a)
        assert w.abs().max().item() <= bound
        assert abs(w.std().item() / (bound / math.sqrt(3.0)) - 1.0) < 0.1
    assert all(m.bias.abs().max() == 0 for m in linears if m.bias is not None)


def test_weight_decay_groups_are_the_officials():
    """main_pretrain.py: ``optim_factory.add_weight_decay(model, 0.05)`` exempts only biases and
    1-D parameters, so the cls token and the mask token are decayed."""
    from sslvit.models.vit import BackboneConfig, build_backbone
    from sslvit.objectives.mae import MAE, MAEConfig
    from sslvit.train.optim import param_groups

    mae = MAE(build_backbone(BackboneConfig(size="tiny", depth=1, patch_size=4, img_size=16)),
              MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2))
    names = {id(p): n for n, p in mae.named_parameters()}
    decay, no_decay = ({names[id(p)] for p in g["params"]} for g in param_groups(mae, 0.05))
    official_no_decay = {n for n, p in mae.named_parameters()
                         if p.requires_grad and (p.ndim == 1 or n.endswith(".bias"))}
    assert no_decay == official_no_decay
    assert {"backbone.cls_token", "decoder.mask_token"} <= decay


def test_luma_target_is_each_patchs_grey_values():
    """mae.target luma: the decoder regresses P*P values a patch, the luma of the real pixels
    (0.299 R + 0.587 G + 0.114 B, as PIL's convert("L")) up to the per-patch normalisation."""
    backbone = build_backbone(BackboneConfig(size="tiny", patch_size=8, img_size=32, depth=1))
    mae = MAE(backbone, MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2, target="luma"))
    mean, std = (torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
                 torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
    real = torch.rand(2, 3, 32, 32)
    torch.manual_seed(0)
    pred, target, mask = mae.forward_pred((real - mean) / std)
    assert pred.shape == target.shape == (2, 16, 64)
    grey = (real * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1)  # (B, H, W)
    patches = grey.reshape(2, 4, 8, 4, 8).permute(0, 1, 3, 2, 4).reshape(2, 16, 64)
    z = lambda t: (t - t.mean(-1, keepdim=True)) / t.std(-1, keepdim=True)  # normalised, scale and offset go
    torch.testing.assert_close(z(target), z(patches), atol=1e-4, rtol=1e-4)
    torch.manual_seed(0)  # the same mask again
    pics = mae.pictures((real - mean) / std)
    assert pics["reconstruction"].shape == (2, 3, 32, 32)  # drawn as grey RGB
    with pytest.raises(ValueError, match="mae.target 'rgb' is unknown; use pixels"):
        MAEConfig(target="rgb").validate(16, 192)
    shown = pics["masked"] * std + mean  # the visible patches drawn grey, at their own luma
    torch.testing.assert_close(shown[:, 0], shown[:, 2])
    visible = (1 - mask).reshape(2, 4, 1, 4, 1).expand(-1, -1, 8, -1, 8).reshape(2, 32, 32).bool()
    torch.testing.assert_close(shown[:, 1][visible], grey[visible], atol=1e-5, rtol=1e-5)
