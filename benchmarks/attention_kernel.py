"""Fused (``F.scaled_dot_product_attention``) against explicit softmax(QK^T)V attention on CPU,
and what sslvit's choice between them (``sslvit/models/attention.py``) does to whole training
steps of the ``cluttered`` presets.

1. The kernel alone, forward + backward and forward only, fp32 and bf16, at the sequence
   lengths of this project's presets (DINO's 17 and 5 tokens, MAE's 5 visible and 17 decoder
   tokens) and of ViT-S/16 (197 tokens at 224 px) up to 785 tokens.
2. One training step (forward, backward, AdamW; DINO also its per-parameter clipping and EMA) of
   DINO's, MAE's and BEiT's ``cluttered`` presets as the entry scripts build them, under bf16
   autocast, with sslvit's choice against timm's fused kernel everywhere; and in fp32, where the
   choice keeps the fused kernel (so both columns should match).

Everything in one process, interleaved over ``--rounds`` rounds, medians reported, so the
machine's noise hits each alike. On a CPU without native bf16 the bf16 figures are printed but
``train.precision auto`` never trains in bf16 there.

    python benchmarks/attention_kernel.py [--rounds 5 --steps 3]
"""
from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

import sslvit.models.attention as attention
from flops import print_machine  # benchmarks/flops.py
from sslvit.objectives.base import StepInfo
from sslvit.recipes.beit import BEiTRunConfig
from sslvit.recipes.dino import DINORunConfig
from sslvit.recipes.mae import MAERunConfig
from sslvit.runtime.cpu_allocator import keep_freed_memory
from sslvit.train.entry import run_config, training_set
from sslvit.train.optim import build_adamw, clip_grad_per_param_
from sslvit.train.precision import timing_batch

SHAPES = [(256, 3, 5), (128, 3, 17), (512, 3, 5), (32, 6, 50), (32, 6, 197), (32, 6, 257), (16, 6, 401), (16, 6, 577),
          (16, 6, 785)]


def kernel_ms(B: int, H: int, T: int, dtype, fused: bool, backward: bool, reps: int = 5) -> float:
    """ms of one attention call on (B, H, T, 64) q, k, v (plus its backward)."""
    q, k, v = (torch.randn(B, H, T, 64, dtype=dtype, requires_grad=backward) for _ in range(3))

    def call():
        if fused:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(64), -1) @ v
        if backward:
            out.sum().backward()

    call()
    t0 = time.perf_counter()
    for _ in range(reps):
        call()
    return (time.perf_counter() - t0) / reps * 1e3


def training_step(cfg):
    """-> a callable running one training step of ``cfg``'s objective on its first batch, as the loop does."""
    torch.manual_seed(0)
    model = cfg.build_objective()  # BEiT fits its tokenizer here (into cfg.out)
    opt = build_adamw(model, 1e-4, 0.05)
    batch = timing_batch(training_set(cfg), cfg.train.batch_size,
                         cfg.collate_fn() if hasattr(cfg, "collate_fn") else None)
    info = StepInfo(step=0, micro=0, epoch=0, total_steps=100, steps_per_epoch=70, key=0,
                    rows=slice(0, cfg.train.batch_size), global_size=cfg.train.batch_size)

    def step(bf16: bool):
        model.before_micro_batch(info)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(batch)["loss"]
        loss.backward()
        if cfg.train.clip_mode == "per_param":
            clip_grad_per_param_([p for p in model.parameters() if p.grad is not None], cfg.train.clip_grad)
        model.before_optimizer_step(info)
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.after_optimizer_step(info)
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3, help="training steps timed per round and configuration")
    args = ap.parse_args()
    keep_freed_memory()
    print_machine()
    print("\n1. attention alone, head dim 64, ms (medians of", args.rounds, "rounds)")
    print("| B, heads, tokens | dtype | pass | fused | explicit | fused / explicit |\n|---|---|---|---|---|---|")
    for B, H, T in SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            for backward in (True, False):
                runs = {f: [] for f in (True, False)}
                for _ in range(args.rounds):
                    for f in runs:
                        runs[f].append(kernel_ms(B, H, T, dtype, f, backward))
                fu, ex = (statistics.median(runs[f]) for f in (True, False))
                print(f"| {B}, {H}, {T} | {str(dtype)[6:]} | {'fwd+bwd' if backward else 'fwd'} | {fu:.2f} | "
                      f"{ex:.2f} | {fu / ex:.2f}x |")
    print_steps(args)


def print_steps(args) -> None:
    with tempfile.TemporaryDirectory(prefix="attention_kernel-") as out:  # BEiT writes its tokenizer there
        print_step_table(args, out)


def print_step_table(args, out: str) -> None:
    recipes = {"dino": DINORunConfig, "mae": MAERunConfig, "beit": BEiTRunConfig}
    chooser = attention.explicit_is_faster
    print(f"\n2. one training step of each `cluttered` preset, ms "
          f"(medians of {args.rounds} rounds x {args.steps} steps)")
    print("| preset | precision | sslvit's choice | fused everywhere | fused / sslvit |\n|---|---|---|---|---|")
    for name, cls in recipes.items():
        cfg = run_config(cls, preset=name, argv=["--data", "cluttered", "--out", f"{out}/{name}"])
        step = training_step(cfg)
        for bf16 in (True, False):
            runs = {"ours": [], "fused": []}
            for _ in range(args.rounds):
                for kind in runs:
                    attention.explicit_is_faster = chooser if kind == "ours" else (lambda x: False)
                    step(bf16)
                    t0 = time.perf_counter()
                    for _ in range(args.steps):
                        step(bf16)
                    runs[kind].append((time.perf_counter() - t0) / args.steps * 1e3)
            attention.explicit_is_faster = chooser
            ours, fused = statistics.median(runs["ours"]), statistics.median(runs["fused"])
            print(f"| {name} (batch {cfg.train.batch_size}) | {'bf16' if bf16 else 'fp32'} | {ours:.0f} | "
                  f"{fused:.0f} | {fused / ours:.2f}x |")


if __name__ == "__main__":
    main()
