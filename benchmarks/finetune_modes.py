"""Full vs attention-only fine-tuning on the same model and data: trainable parameters, peak
memory and step time, with the ratios attention-only / full.

Setup: ViT-S/16 at 224 px, hMLP stem (sslvit's default), random init (the cost does not depend
on the weights), 1000-class head, one fixed batch of ``--batch`` random images and labels. The
model, optimizer and loss are the fine-tuning probe's own (``probes/finetune.py``):
``build_classifier`` (average pool + fc_norm, drop path 0.1, attention-only freezing),
``build_optimizer`` (fused AdamW over the layer-wise lr decay groups), cross-entropy with label
smoothing 0.1. One step = forward, loss, backward, optimizer step, zero_grad: the probe's step
without data loading.

  step time    both modes in this process, timed round-robin (2 warm-up rounds, then
               ``--steps`` timed steps each, median) so machine noise hits both alike.
  peak memory  a fresh subprocess per mode builds the model and runs ``--mem-steps`` steps.
               CPU: its peak RSS (VmHWM; torch's CPU allocator keeps no peak counter), and
               the training increment = peak RSS - RSS before the first step (libraries,
               weights and the batch). CUDA: torch.cuda.max_memory_allocated, and the same
               increment over memory_allocated before the first step.
  FLOP model   matmul FLOPs of a step (benchmarks/flops.py): full = 3 x forward of the blocks
               and head + 2 x the stem (its input needs no grad); attention-only skips the MLP
               weight gradients (2 of an MLP's 6 matmuls) and the whole stem backward. Its
               ratio is the step-time ratio a matmul-bound step would show.

Measured on the 2-core shared CPU (load average 4-5, batch 32, 2 threads): attention-only
trains 0.34 of the parameters, but its step takes 0.72 of the full step (the FLOP model says
0.79: backprop still runs through every block, because the position embedding and block 0's
attention train) and its peak RSS is 0.81 of full (training increment 0.74). The memory it saves
is the MLPs' and stem's gradients and AdamW state (14.4 M parameters x 12 B = 173 MB) plus
about 500 MB of activations: a frozen fc2 does not keep its input (12 x 32 x 197 x 1536 floats =
465 MB); the rest of the activations stay.

    python benchmarks/finetune_modes.py [--batch 32 --steps 5 --mem-steps 2 --threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from flops import block_macs, print_machine, stem_macs, time_round_robin  # benchmarks/flops.py
from sslvit.eval.finetune import FinetuneConfig, build_classifier, build_optimizer
from sslvit.models.export import export_backbone
from sslvit.models.vit import BackboneConfig, build_backbone

MODES = ("full", "attention")
IMG, PATCH, D, DEPTH, CLASSES = 224, 16, 384, 12, 1000
LR = 5e-4 * 32 / 256  # the probe's blr x batch / 256; the value does not change the cost


def make_step(weights: Path, mode: str, batch: int, device: torch.device):
    """-> (step fn returning the loss, trainable parameter count, total parameter count)."""
    cfg = FinetuneConfig(mode=mode)
    torch.manual_seed(0)  # same drop-path draws and data in every mode and process
    model = build_classifier(weights, CLASSES, cfg)[0].to(device).train()
    optimizer = build_optimizer(model, cfg, LR)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    imgs = torch.randn(batch, 3, IMG, IMG, device=device)
    labels = torch.randint(0, CLASSES, (batch,), device=device)

    def step() -> float:
        loss = criterion(model(imgs), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()  # also waits for a GPU

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return step, trainable, sum(p.numel() for p in model.parameters())


def _rss_mb(field: str) -> float:
    """VmRSS / VmHWM of this process in MB (Linux); elsewhere the getrusage peak for both."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (2**20 if sys.platform == "darwin" else 2**10)


def child(weights: Path, mode: str, batch: int, steps: int, device: torch.device) -> None:
    """Runs in a fresh process: prints {"peak_mb", "before_mb"} as JSON."""
    step, _, _ = make_step(weights, mode, batch, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 2**20
    else:
        before = _rss_mb("VmRSS")
    for _ in range(steps):
        step()
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_mb("VmHWM")
    print(json.dumps({"peak_mb": peak, "before_mb": before}))


def step_flops(batch: int, mode: str) -> int:
    T, S = 1 + (IMG // PATCH) ** 2, (IMG // PATCH) ** 2
    blocks, stem, head = DEPTH * block_macs(T, D), S * stem_macs("hmlp", D), D * CLASSES
    if mode == "full":
        macs = 3 * (blocks + head) + 2 * stem
    else:  # grad-input through every block (pos_embed and block 0's attention train), no MLP grad-weight
        macs = 3 * (blocks + head) - DEPTH * 2 * T * D * 4 * D + stem
    return 2 * batch * macs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--mem-steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print_machine()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.child:
        child(args.weights, args.child, args.batch, args.mem_steps, device)
        return
    print(f"torch {torch.__version__}, {device}, threads {torch.get_num_threads()}, ViT-S/16 at {IMG} px, "
          f"{CLASSES} classes, batch {args.batch}, {args.steps} timed steps per mode")
    print("load average at start (other processes skew timings): %.2f %.2f %.2f" % os.getloadavg())
    with tempfile.TemporaryDirectory() as tmp:
        bcfg = BackboneConfig(size="small", patch_size=PATCH, img_size=IMG)
        torch.manual_seed(0)
        weights = export_backbone(build_backbone(bcfg), bcfg, Path(tmp))
        memory = {}
        for mode in MODES:  # one fresh process each: a peak is only a peak of the whole process
            out = subprocess.run([sys.executable, __file__, "--child", mode, "--weights", str(weights),
                                  "--batch", str(args.batch), "--mem-steps", str(args.mem_steps),
                                  "--threads", str(args.threads)], check=True, capture_output=True, text=True)
            memory[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        built = {mode: make_step(weights, mode, args.batch, device) for mode in MODES}
    times = time_round_robin({mode: built[mode][0] for mode in MODES}, args.steps, 2)
    med = {mode: statistics.median(ts) for mode, ts in times.items()}
    unit = "allocated" if device.type == "cuda" else "RSS"
    rows = {
        "trainable parameters": ({m: built[m][1] for m in MODES}, "{:,.0f}"),
        "total parameters": ({m: built[m][2] for m in MODES}, "{:,.0f}"),
        f"peak memory ({unit}, MB)": ({m: memory[m]["peak_mb"] for m in MODES}, "{:,.0f}"),
        "training increment (MB)": ({m: memory[m]["peak_mb"] - memory[m]["before_mb"] for m in MODES}, "{:,.0f}"),
        "step time, median (s)": (med, "{:.3f}"),
        "matmul GFLOP per step": ({m: step_flops(args.batch, m) / 1e9 for m in MODES}, "{:,.0f}"),
    }
    print(f"\n{'':28s} {'full':>12s} {'attention':>12s} {'attn / full':>12s}")
    for name, (vals, fmt) in rows.items():
        print(f"{name:28s} {fmt.format(vals['full']):>12s} {fmt.format(vals['attention']):>12s} "
              f"{vals['attention'] / vals['full']:12.2f}")
    for mode in MODES:
        print(f"{mode} steps (s): {' '.join(f'{t:.3f}' for t in times[mode])}; "
              f"{args.batch / med[mode]:.1f} img/s, {step_flops(args.batch, mode) / med[mode] / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
