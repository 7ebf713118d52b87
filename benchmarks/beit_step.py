"""Images/s of one BEiT training step on CPU, and the share of it spent on block masking and
tokenisation.

Configuration: ViT-S/16, 224 px, batch 32, LayerScale 0.1, 78 of 196 patches block-masked
(``beit.mask_ratio`` 0.4, BEiT's generator, exact count), pixel tokenizer with vocabulary 8192 (8 x 8 pooled patches,
192-d; the codebook is random unit vectors, which costs the same to search as a fitted one),
fp32 (and bf16 autocast where the CPU has native bf16), fused AdamW from the loop's ``build_adamw``
(betas (0.9, 0.98), wd 0.05), global grad clip
3.0. One step is what ``sslvit.train.loop.pretrain`` does for BEiT: forward (the tokenizer encodes
the masked patches under no_grad inside it, then the encoder over the full sequence with mask
tokens, the head on the masked positions and the cross-entropy), backward, clipping, optimizer
step, zero_grad, ``loss.item()``; with the CPU allocator setting the loop makes
(``keep_freed_memory``). The block masks are drawn in the data loader's collate, so in a run they
are off the step's critical path whenever ``train.num_workers`` > 0; they are counted here anyway.

Timed round-robin in one process (``--warmup`` untimed rounds, then ``--steps`` timed ones,
medians): the whole step (masks drawn outside it, as the collate does), ``block_masking`` for
the batch, and ``tokenizer.encode`` of the masked patches. Share = (masking + tokenisation) /
(step + masking). Goal: under 5%.

    .venv/bin/python benchmarks/beit_step.py [--batch 32 --steps 5 --threads 2]

FLOP model (matmul FLOPs, 2 * MACs; training counts 3x the forward):
  step          = 3 * 2 * B * (N * hMLP stem + 12 * block(1 + N, 384) + M * 384 * V)
  tokenisation  = 2 * B * M * d * V (one matmul of the masked patches' vectors against the codebook)
with N = 196 patches, M = 78 masked, d = 192, V = 8192, block as in benchmarks/flops.py.
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

from flops import (block_macs, default_precision, matmul_peak, peak_fractions, print_machine, stem_macs,
                   time_round_robin)  # benchmarks/flops.py
from sslvit.masking import block_masking
from sslvit.models.vit import BackboneConfig, build_backbone
from sslvit.objectives.beit import BEiT, BEiTConfig
from sslvit.tokenizers.pixel import PixelTokenizer
from sslvit.runtime.cpu_allocator import keep_freed_memory
from sslvit.train.optim import build_adamw

N, D, DEPTH = 196, 384, 12


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args()


def _build(B: int, V: int):
    """The ViT-S/16 BEiT, its tokenizer and optimizer, a batch (B, 3, 224, 224) and its masks (B, N)."""
    torch.manual_seed(0)
    tok = PixelTokenizer(V, patch_size=16, pixel_size=8)
    tok.codebook = F.normalize(torch.randn(V, tok.codebook.shape[1]), dim=-1) * tok.codebook.shape[1] ** 0.5
    backbone = build_backbone(BackboneConfig(size="small", patch_size=16, img_size=224, init_values=0.1))
    model = BEiT(backbone, tok, BEiTConfig())
    model.train()
    opt = build_adamw(model, 1.5e-3 * B / 2048, 0.05, (0.9, 0.98))
    imgs = torch.randn(B, 3, 224, 224)
    return model, tok, opt, imgs, block_masking(B, **model.mask_args)


def _report(times: dict, peak: dict, B: int, V: int, M: int, d: int) -> None:
    med = {k: statistics.median(v) for k, v in times.items()}
    step_flops = 3 * 2 * B * (N * stem_macs("hmlp", D) + DEPTH * block_macs(1 + N, D) + M * D * V)
    tok_flops = 2 * B * M * d * V
    print("\npeak matmul 2048^3: " + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peak.items()))
    for name in [n for n in ("step", "step bf16") if n in med]:
        fps = step_flops / med[name]
        print(f"{name + ' (incl. tokenisation)':30s} median {med[name]:.3f} s  {B / med[name]:.2f} img/s  "
              f"{step_flops / 1e12:.3f} TFLOP  {fps / 1e9:.1f} GFLOP/s ({peak_fractions(fps, peak)})  "
              f"[{' '.join(f'{t:.2f}' for t in times[name])}]")
    default = default_precision(med["step"], med.get("step bf16"))
    print(f"sslvit default (train.precision auto's rule on these timings): {default}")
    for prec, name, goal in (("fp32", "step", 0.8), ("bf16", "step bf16", 0.7)):
        if name in med:
            print(f"{name} at {step_flops / med[name] / peak[prec]:.0%} of the {prec} matmul peak (goal >= {goal:.0%})")
    print(f"block masking ({B} masks, {M} of {N} masked) median {med['masking'] * 1e3:.1f} ms")
    print(f"tokenisation ({B * M} masked patches x {V} codes) median {med['tokenisation'] * 1e3:.1f} ms  "
          f"({tok_flops / 1e9:.2f} GFLOP, {tok_flops / med['tokenisation'] / 1e9:.1f} GFLOP/s)")
    share = (med["masking"] + med["tokenisation"]) / (med["step"] + med["masking"])
    print(f"masking + tokenisation: {share:.2%} of the step (goal < 5%); "
          f"masking alone {med['masking'] / (med['step'] + med['masking']):.2%}, "
          f"tokenisation alone {med['tokenisation'] / (med['step'] + med['masking']):.2%}")


def main() -> None:
    args = _parse()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    B, V = args.batch, args.vocab
    bf16_ok = print_machine(f"batch {B}, vocab {V}, steps {args.steps} (+{args.warmup} warm-up)")
    peak = {"fp32": matmul_peak(torch.float32)}
    if bf16_ok:
        peak["bf16"] = matmul_peak(torch.bfloat16)
    model, tok, opt, imgs, masks = _build(B, V)
    mask_args = model.mask_args

    def step(bf16: bool = False) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model((imgs, masks))
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 3.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out["loss"].item()

    steps = {"step": step, "masking": lambda: block_masking(B, **mask_args),
             "tokenisation": lambda: tok.encode(imgs, masks)}
    if bf16_ok:
        steps["step bf16"] = lambda: step(bf16=True)
    times = time_round_robin(steps, args.steps, args.warmup)
    peak["fp32"] = max(peak["fp32"], matmul_peak(torch.float32))
    _report(times, peak, B, V, int(masks[0].sum()), tok.codebook.shape[1])


if __name__ == "__main__":
    main()
