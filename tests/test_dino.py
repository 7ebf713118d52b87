"""DINO parts against formulas written from the paper (Caron et al. 2021, Algorithm 1, sec. 3)."""
import dataclasses
import math

import pytest
import torch

from sslvit.models import BackboneConfig, build_backbone
from sslvit.objectives.dino import (DINO, CollapseGuard, DINOConfig, DINOHead, DINOLoss, teacher_momentum,
                                    teacher_temperature)
from sslvit.train.optim import build_adamw, clip_grad_per_param_
from sslvit.runtime.schedules import cosine_schedule

SMALL = DINOConfig(out_dim=64, hidden_dim=32, bottleneck_dim=16)


def _dino(cfg=SMALL, drop_path=0.0):
    model = BackboneConfig(size="tiny", depth=2, patch_size=4, img_size=16, pos_embed="learned",
                           dynamic_img_size=True, drop_path_rate=drop_path)
    return DINO(build_backbone(model), build_backbone(dataclasses.replace(model, drop_path_rate=0.0)), cfg)


def _crops(B=4, n_local=2):
    return [torch.randn(2 * B, 3, 16, 16), torch.randn(n_local * B, 3, 8, 8)]


def reference_dino_loss(s, t, c, n_views, B, Ts, Tt):
    """Per image b: H(P_t(view a), P_s(view v)) summed over a in {0, 1}, v != a, then averaged
    over the pairs and the images; P_t = softmax((t - c) / Tt), P_s = softmax(s / Ts)."""
    s, t, c = s.double(), t.double(), c.double()
    total, n_pairs = 0.0, 0
    for a in range(2):
        for v in range(n_views):
            if v == a:
                continue
            n_pairs += 1
            for b in range(B):
                lt = (t[a * B + b] - c[0]) / Tt
                p_t = torch.exp(lt - lt.max()) / torch.exp(lt - lt.max()).sum()
                ls = s[v * B + b] / Ts
                log_p_s = ls - (ls.max() + torch.log(torch.exp(ls - ls.max()).sum()))
                total += float(-(p_t * log_p_s).sum()) / B
    return total / n_pairs


def test_dino_loss_matches_the_paper_formula_and_updates_the_center():
    B, K, n_views = 3, 50, 5
    s, t = torch.randn(n_views * B, K) * 3, torch.randn(2 * B, K) * 3
    loss_fn = DINOLoss(K, student_temp=0.1, center_momentum=0.9)
    c0 = torch.randn(1, K)
    loss_fn.center.copy_(c0)
    loss, entropy = loss_fn(s, t, n_views, teacher_temp=0.04)
    ref = reference_dino_loss(s, t, c0, n_views, B, 0.1, 0.04)
    assert loss.item() == pytest.approx(ref, rel=1e-6, abs=1e-6)
    assert torch.equal(loss_fn.center, c0)  # the center moves once per optimizer step, not per forward
    loss_fn.update_center()
    torch.testing.assert_close(loss_fn.center, 0.9 * c0 + 0.1 * t.mean(0, keepdim=True), rtol=1e-6, atol=1e-7)
    p_t = torch.softmax((t.double() - c0.double()) / 0.04, -1)
    assert entropy.item() == pytest.approx(float(-(p_t * p_t.clamp_min(1e-30).log()).sum(-1).mean()), rel=1e-5)


def test_the_center_moves_by_the_whole_accumulated_batch():
    K = 20
    t1, t2 = torch.randn(6, K), torch.randn(6, K)
    split, whole = DINOLoss(K), DINOLoss(K)
    split(torch.randn(6, K), t1, 2, 0.04)
    split(torch.randn(6, K), t2, 2, 0.04)
    whole(torch.randn(12, K), torch.cat([t1, t2]), 2, 0.04)
    split.update_center()
    whole.update_center()
    torch.testing.assert_close(split.center, whole.center)
    torch.testing.assert_close(whole.center, 0.1 * torch.cat([t1, t2]).mean(0, keepdim=True))


def test_same_view_pairs_are_skipped():
    # two views only: the loss is H(t0, s1) + H(t1, s0) over 2; with s1 == t0's logits the
    # cross-entropy of view 0 against itself must not appear
    B, K = 2, 10
    s = torch.randn(2 * B, K)
    t = torch.randn(2 * B, K)
    loss, _ = DINOLoss(K)(s, t, n_views=2, teacher_temp=0.05)
    cross = reference_dino_loss(s, t, torch.zeros(1, K), 2, B, 0.1, 0.05)
    assert loss.item() == pytest.approx(cross, rel=1e-6)
    p0 = torch.softmax(t[:B] / 0.05, -1)
    same_view = float(-(p0 * torch.log_softmax(s[:B] / 0.1, -1)).sum(-1).mean())
    assert abs(loss.item() - same_view) > 1e-3


def test_ema_update_is_m_teacher_plus_one_minus_m_student_and_teacher_has_no_grad():
    dino = _dino()
    with torch.no_grad():  # make student and teacher differ
        for p in dino.student.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    teacher0 = {n: p.clone() for n, p in dino.teacher.module.named_parameters()}
    student = dict(dino.student.named_parameters())
    out = dino(_crops())
    out["loss"].backward()
    assert all(p.grad is None and not p.requires_grad for p in dino.teacher.parameters())
    dino.after_optimizer_step(_info(step=0, total_steps=10))
    m = teacher_momentum(0, 10, 0.996)
    assert m == pytest.approx(0.996)
    for n, p in dino.teacher.module.named_parameters():
        torch.testing.assert_close(p, m * teacher0[n] + (1 - m) * student[n], rtol=0, atol=1e-6, msg=n)
    for (n, b), (_, sb) in zip(dino.teacher.module.named_buffers(), dino.student.named_buffers()):
        torch.testing.assert_close(b, sb, msg=n)


def test_teacher_has_no_drop_path_and_follows_the_students_mode():
    dino = _dino(drop_path=0.5).train()
    assert dino.teacher.training  # as in DINO: a BatchNorm head uses batch statistics in both
    x = [torch.randn(32, 3, 16, 16)]  # 32 images: two equal drop-path draws have odds 2^-32
    torch.testing.assert_close(dino.teacher.module(x), dino.teacher.module(x))
    assert not torch.allclose(dino.student(x), dino.student(x))  # the student does drop paths


def test_schedules_at_their_endpoints():
    total = 100
    assert teacher_momentum(0, total) == pytest.approx(0.996)
    assert teacher_momentum(total, total) == pytest.approx(1.0)
    # DINOv2's final_momentum_teacher: a cosine from base to end, half way at the middle
    assert teacher_momentum(total // 2, total, 0.99, 0.995) == pytest.approx(0.995 + (0.99 - 0.995) * 0.5)
    assert teacher_momentum(total, total, 0.99, 0.995) == pytest.approx(0.995)
    dino = _dino(dataclasses.replace(SMALL, momentum_teacher=0.99, momentum_teacher_end=0.99))
    dino.after_optimizer_step(_info(step=9, total_steps=10))
    assert dino.teacher.decay == pytest.approx(0.99)  # held, where DINO's end of 1 would be near it
    with pytest.raises(ValueError, match="momentum_teacher_end 1.5 is not an EMA momentum"):
        _dino(dataclasses.replace(SMALL, momentum_teacher_end=1.5))
    cfg = DINOConfig(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30)
    assert teacher_temperature(0, 10, cfg) == pytest.approx(0.04)
    assert teacher_temperature(150, 10, cfg) == pytest.approx(0.055)
    assert teacher_temperature(300, 10, cfg) == pytest.approx(0.07)
    assert teacher_temperature(10_000, 10, cfg) == pytest.approx(0.07)
    assert teacher_temperature(0, 10, DINOConfig()) == pytest.approx(0.04)  # default: no warmup
    # weight decay: the loop's cosine from 0.04 to 0.4
    assert cosine_schedule(0, total, 0.04, 0.4) == pytest.approx(0.04)
    assert cosine_schedule(total, total, 0.04, 0.4) == pytest.approx(0.4)


def test_head_shapes_and_norm_last_layer_freezes_the_gain():
    head = DINOHead(24, 64, hidden_dim=32, bottleneck_dim=16, nlayers=3, norm_last_layer=True)
    gain = head.last_layer.parametrizations.weight.original0
    assert not gain.requires_grad and torch.all(gain == 1)
    assert head(torch.randn(5, 24)).shape == (5, 64)
    w = head.last_layer.weight  # rows have unit norm: the prototypes are on the sphere
    torch.testing.assert_close(w.norm(dim=1), torch.ones(64))
    free = DINOHead(24, 64, hidden_dim=32, bottleneck_dim=16, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad
    bn = DINOHead(24, 64, hidden_dim=32, bottleneck_dim=16, nlayers=3, use_bn=True)
    # the head's BatchNorm1d (a subclass that survives FSDP's bf16 weights; the official layout)
    kinds = ["BatchNorm1d" if isinstance(m, torch.nn.BatchNorm1d) else type(m).__name__ for m in bn.mlp]
    assert kinds == ["Linear", "BatchNorm1d", "GELU", "Linear", "BatchNorm1d", "GELU", "Linear"]


def _head_by_the_paper(head: DINOHead, x: torch.Tensor) -> torch.Tensor:
    """DINO's head written out: (Linear -> BatchNorm over the batch -> GELU) x 2 -> Linear ->
    l2-normalise -> a linear layer whose rows are v / ||v|| times g, no bias."""
    lin = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    bns = [m for m in head.mlp if isinstance(m, torch.nn.BatchNorm1d)]
    for i, layer in enumerate(lin):
        x = x @ layer.weight.t() + layer.bias
        if i < len(lin) - 1:
            mean, var = x.mean(0), x.var(0, unbiased=False)
            x = torch.nn.functional.gelu((x - mean) / torch.sqrt(var + bns[i].eps) * bns[i].weight + bns[i].bias)
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    g = head.last_layer.parametrizations.weight.original0
    v = head.last_layer.parametrizations.weight.original1
    return x @ (g * v / v.norm(dim=1, keepdim=True)).t()


def test_head_pads_rows_only_for_its_matmuls_and_matches_the_paper():
    """iBOT's masked-patch count varies every step; the head's matmuls see it rounded up to a
    multiple of ROW_BUCKET (a few kernel shapes), its BatchNorm the real rows only."""
    torch.manual_seed(0)
    head = DINOHead(24, 64, hidden_dim=32, bottleneck_dim=16, nlayers=3, use_bn=True, norm_last_layer=False).train()
    seen = []
    for m in [*head.mlp, head.last_layer]:
        if isinstance(m, torch.nn.Linear):
            m.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[0]))
    for rows in (37, 50, 64, 150):
        x = torch.randn(rows, 24, requires_grad=True)
        out = head(x)
        x_ref = x.detach().clone().requires_grad_(True)
        ref = _head_by_the_paper(head, x_ref)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        w = torch.randn_like(out)
        params = [p for p in head.parameters() if p.requires_grad]
        grads = torch.autograd.grad((out * w).sum(), [x, *params])
        grads_ref = torch.autograd.grad((ref * w).sum(), [x_ref, *params])
        for a, b in zip(grads, grads_ref):
            # atol: the biases before a BatchNorm get gradients of 0 up to rounding (it removes their mean)
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert set(seen) == {64, 192}, seen  # four row counts, two shapes (ROW_BUCKET 64)


def _info(**fields):
    from sslvit.objectives.base import StepInfo

    base = dict(step=0, micro=0, epoch=0, total_steps=10, steps_per_epoch=10, key=0, rows=slice(0, 1), global_size=1)
    return StepInfo(**{**base, **fields})


def _one_step(dino, epoch):
    opt = build_adamw(dino, 1e-2, 0.04)
    last = {n: p.clone() for n, p in dino.student.head.last_layer.named_parameters()}
    other = dino.student.backbone.blocks[0].attn.qkv.weight.clone()
    dino(_crops())["loss"].backward()
    dino.before_optimizer_step(_info(epoch=epoch))
    opt.step()
    changed = {n: not torch.equal(p, last[n]) for n, p in dino.student.head.last_layer.named_parameters()}
    return changed, not torch.equal(other, dino.student.backbone.blocks[0].attn.qkv.weight)


def test_last_layer_gets_no_update_during_the_freeze_epochs():
    cfg = DINOConfig(out_dim=64, hidden_dim=32, bottleneck_dim=16, freeze_last_layer=1, norm_last_layer=False)
    changed, backbone_changed = _one_step(_dino(cfg), epoch=0)
    assert backbone_changed and not any(changed.values())  # weight decay included: no update at all
    changed, _ = _one_step(_dino(cfg), epoch=1)
    assert all(changed.values())


def test_per_parameter_clipping_scales_each_gradient_on_its_own():
    ps = [torch.nn.Parameter(torch.zeros(4, 4)) for _ in range(3)]
    grads = [torch.randn(4, 4) * s for s in (0.01, 10.0, 100.0)]
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    clip_grad_per_param_(ps, 3.0)
    torch.testing.assert_close(ps[0].grad, grads[0])  # below the bound: untouched
    for p, g in zip(ps[1:], grads[1:]):
        assert p.grad.norm().item() == pytest.approx(3.0, rel=1e-5)
        torch.testing.assert_close(p.grad / p.grad.norm(), g / g.norm())  # direction kept


def _guard_run(teacher_logits_fn, steps=40, K=64):
    loss_fn = DINOLoss(K)
    guard = CollapseGuard(K, window=10)
    warnings = []
    for _ in range(steps):
        t = teacher_logits_fn()
        _, entropy = loss_fn(torch.randn(4 * 4, K), t, n_views=4, teacher_temp=0.04)
        loss_fn.update_center()  # one optimizer step per forward here
        w = guard.update(entropy.item())
        if w:
            warnings.append(w)
    return warnings


def test_collapse_guard_fires_on_a_constant_teacher_and_stays_quiet_on_a_healthy_one():
    K = 64
    constant = torch.randn(1, K)
    warnings = _guard_run(lambda: constant.expand(8, K).clone(), steps=100, K=K)
    # sharp at first, then the center absorbs the constant output and the teacher goes uniform;
    # each episode is reported once, not at every logged step
    assert 1 <= len(warnings) <= 2 and "uniform" in warnings[-1] and "teacher_temp" in warnings[-1]
    one_hot = lambda: torch.nn.functional.one_hot(torch.randint(0, 2, (8,)), K).float() * 5  # noqa: E731
    warnings = _guard_run(one_hot, K=K)
    assert len(warnings) == 1 and "collapsed" in warnings[0]
    # healthy: each image has its own, moderately peaked output (cosine logits in [-1, 1])
    assert _guard_run(lambda: torch.nn.functional.normalize(torch.randn(8, K), dim=-1) * 2, K=K) == []


def test_forward_logs_entropy_and_kl():
    dino = _dino()
    out = dino(_crops())
    assert set(out) >= {"loss", "teacher_entropy", "kl"}
    assert 0 < out["teacher_entropy"].item() < math.log(64)
    assert out["kl"].item() == pytest.approx(out["loss"].item() - out["teacher_entropy"].item(), abs=1e-5)


def test_cls_attention_equals_timms_own_attention_weights():
    from sslvit.models.attention_maps import cls_attention

    backbone = build_backbone(BackboneConfig(size="tiny", depth=2, patch_size=4, img_size=16,
                                             dynamic_img_size=True)).eval()
    attn = backbone.blocks[-1].attn
    attn.fused_attn = False  # timm then computes the softmax weights and passes them through attn_drop
    seen = {}
    attn.attn_drop.register_forward_hook(lambda m, inp, out: seen.setdefault("w", inp[0]))
    x = torch.randn(2, 3, 24, 24)  # another grid than training: 6x6 patches
    with torch.no_grad():
        backbone.forward_features(x)
    ref = seen["w"][:, :, 0, 1:].reshape(2, attn.num_heads, 6, 6)  # cls row, patch columns
    torch.testing.assert_close(cls_attention(backbone, x), ref, rtol=1e-5, atol=1e-6)


def test_koleo_is_minus_the_mean_log_nearest_neighbour_distance_and_safe_at_batch_1():
    from sslvit.objectives.dino import koleo_loss

    x = torch.randn(7, 5, dtype=torch.float64)
    u = x / x.norm(dim=1, keepdim=True)
    d = torch.cdist(u, u) + torch.diag(torch.full((7,), float("inf"), dtype=torch.float64))
    reference = float(-torch.log(d.min(dim=1).values + 1e-8).mean())  # written from the definition
    assert abs(float(koleo_loss(x.float())) - reference) < 1e-5
    one = torch.randn(1, 5, requires_grad=True)
    loss = koleo_loss(one)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(one.grad).all()


def test_koleo_weight_0_leaves_dino_as_it_was_and_a_weight_adds_it():
    crops = _crops()
    torch.manual_seed(0)
    plain = _dino()(crops)
    torch.manual_seed(0)
    with_koleo = _dino(dataclasses.replace(SMALL, koleo_weight=0.1))(crops)
    assert "koleo" not in plain and float(with_koleo["koleo"]) > 0
    torch.testing.assert_close(with_koleo["loss"] - 0.1 * with_koleo["koleo"], plain["loss"], rtol=0, atol=1e-6)


def test_sinkhorn_knopp_matches_the_alternating_normalisation_and_balances_the_prototypes():
    from sslvit.objectives.dino import sinkhorn_knopp

    g = torch.Generator().manual_seed(0)
    t = torch.randn(12, 8, generator=g) * 0.5  # logits of a weight-normed head on unit features: |t| ~ 1
    # reference, float64, written from SwAV / DINOv2: P = exp(t / temp) normalised to total mass 1,
    # then 3 times: each prototype's (column's) mass to 1 / K, each sample's (row's) to 1 / M; times M
    p = torch.exp(t.double() / 0.07)
    p /= p.sum()
    for _ in range(3):
        p /= p.sum(0, keepdim=True) * 8
        p /= p.sum(1, keepdim=True) * 12
    p *= 12
    q = sinkhorn_knopp(t, 0.07)
    torch.testing.assert_close(q.double(), p, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(q.sum(1), torch.ones(12), rtol=0, atol=1e-5)  # each row a distribution
    softmax_spread = torch.softmax(t / 0.07, -1).sum(0).std()
    assert q.sum(0).std() < softmax_spread  # the prototypes' mass more even than softmax leaves it (3 iterations)


def test_dino_with_sinkhorn_centring_trains_without_the_ema_centre():
    torch.manual_seed(0)
    dino = _dino(dataclasses.replace(SMALL, centering="sinkhorn"))
    out = dino(_crops())
    assert torch.isfinite(out["loss"]) and float(out["loss"]) > 0
    out["loss"].backward()
    with pytest.raises(ValueError, match="dino.centering 'ema' is unknown"):
        _dino(dataclasses.replace(SMALL, centering="ema"))


def test_head_batchnorm_with_bf16_weights_normalises_as_batchnorm_in_fp32():
    """FSDP's mixed precision hands the head's BatchNorm bf16 weights and fp32 running statistics."""
    from sslvit.objectives.dino import HeadBatchNorm

    torch.manual_seed(0)
    x = torch.randn(20, 6) * 3 + 1

    def pair():
        ref, ours = torch.nn.BatchNorm1d(6), HeadBatchNorm(6)
        with torch.no_grad():
            ours.weight.uniform_(0.5, 1.5)
            ours.bias.uniform_(-1, 1)
        ours.weight.data, ours.bias.data = ours.weight.data.bfloat16(), ours.bias.data.bfloat16()
        ref.weight.data, ref.bias.data = ours.weight.data.float(), ours.bias.data.float()  # the same values
        return ref, ours

    ref, ours = pair()
    for train in (True, False):
        ref.train(train), ours.train(train)
        y_ref, y = ref(x), ours(x.bfloat16())
        assert y.dtype == torch.bfloat16
        # the input's and output's bf16 rounding (2^-8 relative), through the normalisation
        torch.testing.assert_close(y.float(), y_ref, rtol=0, atol=0.05)
    ref, ours = pair()
    for _ in range(2):  # an fp32 input with bf16 weights: the running statistics are fp32 BatchNorm's, exactly
        ref(x), ours(x)
    torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=0, atol=0)
    torch.testing.assert_close(ours.running_var, ref.running_var, rtol=0, atol=0)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 2


def test_the_bn_head_trains_under_fsdp_mixed_precision(tmp_path):
    """The head's BatchNorm under FSDP2 with bf16 parameters (one gloo process, in a process of its own):
    torch's batch_norm refused the bf16 weight beside the fp32 running statistics."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "fsdp_head.py"
    script.write_text(
        "import torch, torch.distributed as dist\n"
        "from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard\n"
        "from sslvit.objectives.dino import DINOHead\n"
        "dist.init_process_group('gloo', init_method='tcp://127.0.0.1:29597', rank=0, world_size=1)\n"
        "head = DINOHead(16, 32, hidden_dim=24, bottleneck_dim=8, use_bn=True)\n"
        "fully_shard(head, mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32))\n"
        "y = head(torch.randn(10, 16))\n"
        "y.float().sum().backward()\n"
        "assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()\n"
        "assert all(p.grad is not None for p in head.parameters() if p.requires_grad)\n"
        "dist.destroy_process_group()\n")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(script)], cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(repo)})
    assert proc.returncode == 0, proc.stderr[-2000:]
