import numpy as np
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
    torch.testing.assert_close(mae.backbone.patchify(pics["reconstruction + visible"]).flatten(2) * (1 - mask)[:, :, None],
                               vis)
