"""The image-independent part of a backbone's residual stream, block by block: for the stream
x (B, T, D) after each block (before the final norm), c = the mean over images of each token
place (T, D), and the rest x - c. Prints rms(c) and rms(x - c) per block; a large ratio means
every LayerNorm reads mostly c, so all images look alike to the next block and to the probes.

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


@torch.no_grad()
def decomposition(backbone, imgs: torch.Tensor) -> list[tuple[float, float]]:
    """imgs (B, C, H, W) -> per block (rms of the image-independent part, rms of the rest)."""
    x = backbone.encode(imgs, depth=0, norm=False)  # the embedded tokens, before any block
    rows = []
    for block in [None, *backbone.blocks]:
        if block is not None:
            x = block(x)
        common = x.mean(0, keepdim=True)  # (1, T, D): what every image has at each token place
        rows.append((common.pow(2).mean().sqrt().item(), (x - common).pow(2).mean().sqrt().item()))
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
        print(f"\n{run} ({data}, {len(imgs)} val images)\n{'block':>6}{'common rms':>12}{'varying rms':>13}{'ratio':>8}")
        for i, (c, v) in enumerate(rows):
            print(f"{'embed' if i == 0 else i:>6}{c:>12.3f}{v:>13.3f}{c / max(v, 1e-12):>8.1f}")


if __name__ == "__main__":
    main()
