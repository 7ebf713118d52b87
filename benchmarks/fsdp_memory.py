"""Peak memory per process of MAE at ViT-L under FSDP2 on two gloo CPU processes, with and
without gradient checkpointing (``model.grad_checkpointing``), measured in one run.

    nice python benchmarks/fsdp_memory.py [--img 224] [--batch 4] [--steps 1]

Each configuration is one ``accelerate launch --config_file launch/fsdp_cpu_2proc.yaml`` of this
file: the MAE objective at timm's vit_large shape (1024 wide, 24 blocks, 16 heads, patch 16) with
the hMLP stem and its 8-block decoder, fp32, the loop's optimizer (fused AdamW, its state made
for every parameter as the loop does under FSDP), prepared by accelerate (each Block one FSDP
unit). The steps are the loop's: forward, backward, AdamW step, the same masks in both runs.

Memory is the resident set of each process (Linux VmRSS / VmHWM). "built" is the peak while
each process builds the full model (before sharding); "sharded state" is the resident set
after ``prepare`` and a heap trim (parameter and AdamW shards, the libraries); "peak" is the
high-water mark of each step (reset just before it): "first step" of the first, whose lazy
set-up (FSDP's and AdamW's) allocates more, and "peak" of the later (timed) ones; "step adds" is
peak minus sharded state: the gradient shards (4 bytes a local parameter, the same either way),
the gathered Block weights, the activations kept for backward, and the heap's fragmentation. The losses show that
checkpointing changes memory, not the numbers.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]


def _status_mb(field: str) -> float:
    """A /proc/self/status memory field (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _trim_heap() -> None:
    """Hand the heap's free pages back to the kernel (glibc malloc_trim): the full model each
    process builds before sharding is freed into the heap, and the steps would reuse those pages
    without the resident set growing, hiding what they need."""
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    """Reset this process's VmHWM to its current resident set (Linux clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(on: bool, img: int, batch: int, steps: int) -> list[dict] | None:
    import torch
    from accelerate.utils import gather_object

    from sslvit.models.vit import BackboneConfig, build_backbone
    from sslvit.objectives.base import StepInfo
    from sslvit.objectives.mae import MAE, MAEConfig
    from sslvit.runtime.devices import build_accelerator
    from sslvit.train.optim import build_adamw, init_adamw_state
    from sslvit.train.run_outputs import sharded

    acc = build_accelerator(mixed_precision="no")
    torch.manual_seed(0)
    model = MAE(build_backbone(BackboneConfig(size="large", patch_size=16, img_size=img, grad_checkpointing=on)),
                MAEConfig())
    n_params = sum(p.numel() for p in model.parameters())
    built_mb = _status_mb("VmHWM")
    model, opt = acc.prepare(model, build_adamw(model, 1e-4, 0.05))
    init_adamw_state(opt)
    raw = acc.unwrap_model(model)
    rank, world = acc.process_index, acc.num_processes
    imgs = torch.randn(batch * world, 3, img, img, generator=torch.Generator().manual_seed(0))[rank::world]
    losses = []

    def step(i: int) -> None:
        raw.before_micro_batch(StepInfo(step=i, micro=0, epoch=0, total_steps=steps + 1, steps_per_epoch=steps + 1,
                                        key=i, rows=slice(rank * batch, (rank + 1) * batch),
                                        global_size=batch * world))
        loss = model(imgs)["loss"]
        acc.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(acc.reduce(loss.detach(), reduction="mean").item())

    _trim_heap()
    state_mb = _status_mb("VmRSS")  # parameter and AdamW shards, the libraries
    peaks, t0 = [], 0.0
    for i in range(steps + 1):
        reset = _reset_peak()
        if i == 1:
            t0 = time.perf_counter()
        step(i)
        peaks.append(_status_mb("VmHWM") if reset else float("nan"))
    step_s = (time.perf_counter() - t0) / steps
    mine = {"rank": rank, "sharded": sharded(acc), "params": n_params, "built_mb": built_mb, "state_mb": state_mb,
            "first_mb": peaks[0], "peak_mb": max(peaks[1:]), "step_s": step_s, "losses": losses}
    rows = gather_object([mine])  # one line from the main process: two would interleave
    acc.end_training()
    return rows if acc.is_main_process else None


def launch(on: bool, args, port: int) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch",
           "--config_file", str(REPO / "launch/fsdp_cpu_2proc.yaml"),
           "--main_process_port", str(port), __file__, "--child", "on" if on else "off",
           "--img", str(args.img), "--batch", str(args.batch), "--steps", str(args.steps)]
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    (rows,) = [json.loads(line[len("RESULT "):]) for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    return sorted(rows, key=lambda r: r["rank"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--img", type=int, default=224)
    ap.add_argument("--batch", type=int, default=4, help="images per process")
    ap.add_argument("--steps", type=int, default=1, help="timed steps after the first")
    ap.add_argument("--child", choices=("on", "off"))
    args = ap.parse_args()
    if args.child:
        rows = child(args.child == "on", args.img, args.batch, args.steps)
        if rows is not None:
            print("RESULT " + json.dumps(rows), flush=True)
        return
    from flops import print_machine

    print_machine("2 gloo processes, 1 thread each")
    print(f"MAE ViT-L/16 (hMLP stem), {args.img} px, batch {args.batch} per process ({2 * args.batch} global), fp32, "
          f"FSDP2 (launch/fsdp_cpu_2proc.yaml), {args.steps} timed steps after one")
    print(f"{'checkpointing':<14}{'rank':>5}{'built MB':>10}{'sharded state MB':>18}{'first step MB':>15}{'peak MB':>9}"
          f"{'step adds MB':>14}{'step s':>8}  losses")
    res = {}
    for on, port in ((False, 29571), (True, 29572)):
        res[on] = launch(on, args, port)
        for r in res[on]:
            assert r["sharded"], "the launch did not run FSDP"
            print(f"{'on' if on else 'off':<14}{r['rank']:>5}{r['built_mb']:>10.0f}{r['state_mb']:>18.0f}"
                  f"{r['first_mb']:>15.0f}"
                  f"{r['peak_mb']:>9.0f}{r['peak_mb'] - r['state_mb']:>14.0f}{r['step_s']:>8.1f}  "
                  + " ".join(f"{x:.6f}" for x in r["losses"]), flush=True)
    print(f"{res[False][0]['params'] / 1e6:.0f} M parameters (encoder + decoder), sharded over 2 processes")
    for rank in (0, 1):
        on, off = res[True][rank], res[False][rank]
        print(f"rank {rank}, on / off: first step {on['first_mb'] / off['first_mb']:.2f}, "
              f"peak {on['peak_mb'] / off['peak_mb']:.2f}, step adds "
              f"{(on['peak_mb'] - on['state_mb']) / (off['peak_mb'] - off['state_mb']):.2f}, "
              f"step time {on['step_s'] / off['step_s']:.2f}")


if __name__ == "__main__":
    main()
