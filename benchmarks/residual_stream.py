"""The image-independent part of a backbone's residual stream, block by block: for the stream
x (B, T, D) after each block (before the final norm, patch tokens), c = the mean over images of
each token place (T, D), split into the one vector shared by every place and what each place
adds, and the rest x - c; then the image-independent part (mean over images) that each block's
attention and MLP branch write. A large ratio means every LayerNorm reads mostly c, so all
images look alike to the next block and to the probes.

    python benchmarks/residual_stream.py RUN [RUN ...] [--data cluttered] [--images 256]

RUN is a run directory (its backbone.safetensors) or a checkpoint's backbone file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from flops import print_machine  # noqa: E402

from sslvit.data.dataset import build_dataset  # noqa: E402
from sslvit.data.transforms import eval_transform  # noqa: E402
from sslvit.models.export import load_backbone, run_data_of  # noqa: E402


def rms(t: torch.Tensor) -> float:
    return t.pow(2).mean().sqrt().item()


def split(x: torch.Tensor) -> tuple[float, float, float]:
    """x (B, T, D) -> rms of (the one vector every image has at every token, the part each token
    place adds to it, what varies between images)."""
    common = x.mean(0, keepdim=True)  # (1, T, D)
    everywhere = common.mean(1, keepdim=True)  # (1, 1, D)
    return rms(everywhere), rms(common - everywhere), rms(x - common)


@torch.no_grad()
def decomposition(backbone, imgs: torch.Tensor) -> list[tuple[float, ...]]:
    """imgs (B, C, H, W) -> per block: split() of the stream after it (patch tokens), then the
    image-independent rms written by its attention branch and by its MLP branch."""
    x = backbone.encode(imgs, depth=0, norm=False)  # the embedded tokens, before any block
    p = backbone.num_prefix_tokens
    rows = [(*split(x[:, p:]), 0.0, 0.0)]
    for b in backbone.blocks:  # timm's Block, unrolled to read each branch's output
        if not hasattr(b, "ls1"):
            raise SystemExit(f"{type(b).__name__} blocks are not unrolled here; measure a backbone of plain "
                             "blocks (model.parallel 1).")
        attn = b.ls1(b.attn(b.norm1(x)))
        x = x + attn
        mlp = b.ls2(b.mlp(b.norm2(x)))
        x = x + mlp
        rows.append((*split(x[:, p:]), rms(attn.mean(0)), rms(mlp.mean(0))))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--data", default=None, help="default: each run's own")
    p.add_argument("--images", type=int, default=256)
    args = p.parse_args()
    print_machine()
    for run in args.runs:
        backbone, cfg = load_backbone(run)
        backbone.eval()
        data = args.data or run_data_of(Path(run) / "backbone.safetensors" if Path(run).is_dir() else Path(run))
        val = build_dataset(data, "val", cfg.img_size, transform=eval_transform(cfg.img_size))
        imgs = torch.stack([val[i][0] for i in range(min(args.images, len(val)))])
        rows = decomposition(backbone, imgs)
        print(f"\n{run} ({data}, {len(imgs)} val images; rms of the patch tokens' stream after each block)\n"
              f"{'block':>6}{'same vector':>12}{'per place':>10}{'varying':>9}{'ratio':>7}{'attn writes':>12}"
              f"{'mlp writes':>11}")
        for i, (c, pl, v, a, m) in enumerate(rows):
            ratio = (c * c + pl * pl) ** 0.5 / max(v, 1e-12)  # the two common parts are orthogonal
            print(f"{'embed' if i == 0 else i:>6}{c:>12.3f}{pl:>10.3f}{v:>9.3f}{ratio:>7.1f}{a:>12.3f}{m:>11.3f}")


if __name__ == "__main__":
    main()
