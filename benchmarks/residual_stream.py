"""The image-independent part of a backbone's residual stream, block by block: for the stream
x (B, T, D) after each block (before the final norm, patch tokens), c = the mean over images of
each token place (T, D), split into the one vector shared by every place and what each place
adds, and the rest x - c; then the image-independent part (mean over images) that each block's
attention and MLP branch write, its cosine with the shared vector after the last block, and the
rms of the branches' output biases. A large ratio means every LayerNorm reads mostly c, so all
images look alike to the next block and to the probes. ``--loss`` (MAE runs): the run's loss on
its newest checkpoint with the shared vector at the encoder's output scaled by 0, 0.5, 1 and 2.

    python benchmarks/residual_stream.py RUN [RUN ...] [--data cluttered] [--images 256] [--loss]

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
    """imgs (B, C, H, W) -> per block: split() of the stream after it (patch tokens), the
    image-independent rms written by its attention branch and by its MLP branch, and the cosines
    of what they write (mean over images and places, (D,)) with the final shared vector."""
    x = backbone.encode(imgs, depth=0, norm=False)  # the embedded tokens, before any block
    p = backbone.num_prefix_tokens
    rows, writes = [(*split(x[:, p:]), 0.0, 0.0)], []
    for b in backbone.blocks:  # timm's Block, unrolled to read each branch's output
        if not hasattr(b, "ls1"):
            raise SystemExit(f"{type(b).__name__} blocks are not unrolled here; measure a backbone of plain "
                             "blocks (model.parallel 1).")
        attn = b.ls1(b.attn(b.norm1(x)))
        x = x + attn
        mlp = b.ls2(b.mlp(b.norm2(x)))
        x = x + mlp
        rows.append((*split(x[:, p:]), rms(attn.mean(0)), rms(mlp.mean(0))))
        writes.append((attn[:, p:].mean((0, 1)), mlp[:, p:].mean((0, 1))))
    shared = x[:, p:].mean((0, 1))
    cos = [tuple(torch.cosine_similarity(w, shared, dim=0).item() for w in pair) for pair in writes]
    return [(*r, *c) for r, c in zip(rows, [(0.0, 0.0)] + cos)]


def output_bias_rms(backbone) -> tuple[float, float]:
    """The largest rms over blocks of the attention's and the MLP's output bias (constants every
    token receives whatever its input)."""
    return (max(rms(b.attn.proj.bias) for b in backbone.blocks), max(rms(b.mlp.fc2.bias) for b in backbone.blocks))


@torch.no_grad()
def loss_with_shared_scaled(run: str, scales=(0.0, 0.5, 1.0, 2.0), images: int = 256) -> dict[float, float]:
    """MAE's loss on ``images`` train images (same masks for every scale) from the run's newest
    checkpoint, with the shared vector at the encoder's output (before its norm) scaled."""
    from safetensors.torch import load_file

    from sslvit.config import ConfigError
    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train.checkpoint import latest_checkpoint
    from sslvit.train.entry import run_config

    try:
        cfg = run_config(MAERunConfig, "mae", ["--out", run, "--resume", "true"])
    except ConfigError as e:
        raise SystemExit(f"--loss measures MAE runs only: {e}") from None
    ckpt = latest_checkpoint(Path(run))
    if ckpt is None:
        raise SystemExit(f"--loss: '{run}' holds no checkpoint (checkpoints/epoch_*); give an MAE run directory.")
    mae = cfg.build_objective().eval()
    mae.load_state_dict(load_file(ckpt / "model.safetensors"))
    data = build_dataset(cfg.data, "train", cfg.model.img_size, transform=eval_transform(cfg.model.img_size))
    imgs = torch.stack([data[i][0] for i in range(min(images, len(data)))])
    p, out = mae.backbone.num_prefix_tokens, {}
    for scale in scales:
        hook = mae.backbone.blocks[-1].register_forward_hook(
            lambda m, i, o: torch.cat([o[:, :p], o[:, p:] - (1 - scale) * o[:, p:].mean((0, 1))], 1))
        torch.manual_seed(0)  # the same masks
        out[scale] = mae(imgs)["loss"].item()
        hook.remove()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--data", default=None, help="default: each run's own")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--loss", action="store_true", help="MAE runs: the loss with the shared vector scaled")
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
              f"{'mlp writes':>11}{'attn cos':>9}{'mlp cos':>8}")
        for i, (c, pl, v, a, m, ca, cm) in enumerate(rows):
            ratio = (c * c + pl * pl) ** 0.5 / max(v, 1e-12)  # the two common parts are orthogonal
            print(f"{'embed' if i == 0 else i:>6}{c:>12.3f}{pl:>10.3f}{v:>9.3f}{ratio:>7.1f}{a:>12.3f}{m:>11.3f}"
                  f"{ca:>9.2f}{cm:>8.2f}")
        print("output biases, largest rms over blocks: attention %.4f, MLP %.4f" % output_bias_rms(backbone))
        if args.loss:
            print("loss with the shared vector at the encoder's output scaled by " + ", ".join(
                f"{k:g}: {v:.4f}" for k, v in loss_with_shared_scaled(run).items()))


if __name__ == "__main__":
    main()
