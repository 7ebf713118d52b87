"""sslvit's Attention: the explicit kernel for CPU bf16 training of short sequences, timm's fused
kernel everywhere else, and both equal to multi-head attention as Vaswani et al. write it."""
import math

import pytest
import torch
import torch.nn.functional as F

from sslvit.models.attention import MAX_EXPLICIT_TOKENS, Attention

DIM, HEADS = 64, 4


def reference_attention(attn: Attention, x: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d_h)) V per head, heads concatenated, then the output projection;
    Q, K, V rows of the qkv projection in timm's (3, heads, d_h) order. x (B, N, D), fp32."""
    B, N, D = x.shape
    d_h = D // HEADS
    qkv = x @ attn.qkv.weight.T + attn.qkv.bias  # (B, N, 3D)
    q, k, v = qkv.reshape(B, N, 3, HEADS, d_h).permute(2, 0, 3, 1, 4)  # each (B, H, N, d_h)
    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d_h), dim=-1)
    heads = (weights @ v).transpose(1, 2).reshape(B, N, D)
    return heads @ attn.proj.weight.T + attn.proj.bias


@pytest.fixture
def sdpa_calls(monkeypatch):
    calls = []
    fused = F.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(args[0].dtype)
        return fused(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counted)
    return calls


def make(n_tokens: int, seed: int = 0):
    torch.manual_seed(seed)
    attn = Attention(DIM, num_heads=HEADS, qkv_bias=True)
    assert attn.fused_attn, "these tests need timm's fused default (unset TIMM_FUSED_ATTN)"
    return attn, torch.randn(3, n_tokens, DIM, requires_grad=True)


def test_cpu_bf16_training_takes_the_explicit_kernel_and_matches_the_formula(sdpa_calls):
    attn, x = make(17)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attn(x)
    assert sdpa_calls == []  # the explicit path: no fused kernel call
    ref = reference_attention(attn, x)
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)  # bf16 has 8 bits of mantissa
    (grad,) = torch.autograd.grad(out.float().square().sum(), x)
    (ref_grad,) = torch.autograd.grad(ref.square().sum(), x)
    assert torch.nn.functional.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0) > 0.999


@pytest.mark.parametrize("case", ["fp32 training", "bf16 inference", "bf16 long sequence"])
def test_every_other_call_keeps_timms_fused_kernel_and_the_same_attention(sdpa_calls, case):
    n = MAX_EXPLICIT_TOKENS + 1 if case == "bf16 long sequence" else 17
    attn, x = make(n)
    bf16 = case != "fp32 training"
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.set_grad_enabled(case != "bf16 inference"):
        out = attn(x)
    assert sdpa_calls == [torch.bfloat16 if bf16 else torch.float32]
    tol = 0.05 if bf16 else 1e-5
    torch.testing.assert_close(out.float().detach(), reference_attention(attn, x).detach(), atol=tol, rtol=tol)


def test_the_kernel_choice_follows_each_call_not_the_first(sdpa_calls):
    attn, x = make(17)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn(x)
    assert attn.fused_attn  # timm's setting is back after the call
    attn(x)  # fp32 after a bf16 call: timm's fused kernel again
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn(x)
    assert sdpa_calls == [torch.float32]


def test_a_callers_explicit_setting_is_kept(sdpa_calls):
    attn, x = make(17)
    attn.fused_attn = False  # as timm's users switch it off (e.g. to read the weights)
    attn(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn(x)
    assert sdpa_calls == [] and not attn.fused_attn


def test_the_backbones_attention_loads_into_timms_own_block():
    from timm.layers import Attention as TimmAttention
    from timm.models.vision_transformer import VisionTransformer

    from sslvit.models.backbone_config import BackboneConfig
    from sslvit.models.vit import build_backbone, timm_spec

    cfg = BackboneConfig(size="tiny", patch_size=8, img_size=32)
    ours = build_backbone(cfg)
    assert all(type(b.attn) is Attention for b in ours.blocks)
    spec = timm_spec(cfg)
    spec.pop("model_name"), spec.pop("pretrained")
    theirs = VisionTransformer(**spec)
    assert all(type(b.attn) is TimmAttention for b in theirs.blocks)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    imgs = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # grad on: ours takes the explicit ops, theirs the fused kernel
        a = ours.forward_features(imgs)
        b = theirs.forward_features(imgs)
    torch.testing.assert_close(a.float(), b.float(), atol=0.1, rtol=0.05)
