"""Fine-tuning of an exported backbone: full (MAE's recipe: layer-wise lr decay, drop path,
label smoothing) or attention-only ("three things", sec. 4: only the attention weights, the
head and the position embedding train), at the pretraining resolution or a higher one.

Layer-wise lr decay and attention-only selection are written here (timm's
``param_groups_layer_decay`` keys layers by its own model names, and has no attention-only
mode); the augmentation is torchvision v2, the loop is accelerate's.
"""
from __future__ import annotations

import math
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn as nn
from accelerate.utils import DistributedType
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sslvit.data.dataset import build_dataset, check_labelled
from sslvit.data.loaders import training_loader
from sslvit.data.shape import fitted_batch
from sslvit.data.shard_reader import ShardDataset
from sslvit.data.stream_loader import StreamLoader
from sslvit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, hflip_for
from sslvit.eval.features import finish_probe
from sslvit.models.backbone_config import check_img_size
from sslvit.files import existing, save_safetensors_atomic, write_json_atomic
from sslvit.runtime.devices import build_accelerator
from sslvit.runtime.schedules import cosine_schedule, scaled_lr

if TYPE_CHECKING:
    from sslvit.models.vit import SSLViT


@dataclass
class FinetuneConfig:
    ckpt: str = "runs/mae-digits"  # run directory or its backbone.safetensors
    data: Optional[str] = None  # labelled data; None: the run's own
    mode: str = "full"  # full | attention (attention weights, head and position embedding only)
    img_size: Optional[int] = None  # None: the pretraining size; larger: position embedding interpolated
    pool: str = "avg"  # cls | avg (MAE fine-tunes on the average pool)
    augment: str = "3aug"  # 3aug (DeiT III) | rrc (RandomResizedCrop + flip)
    hflip: Optional[bool] = None  # the augmentation's left-right flip; None: yes, but not the embedded digit sets
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range; small images want more
    epochs: int = 100
    batch_size: Optional[int] = None  # per process; None: 64, or at most half the training images (``finetune_batch``)
    blr: Optional[float] = None  # lr = blr * effective batch / 256; None: by the image size (``blr_for``)
    min_lr: float = 1e-6
    warmup_epochs: float = 5.0
    weight_decay: float = 0.05
    layer_decay: float = 0.75  # per block from the head down; 1 = off
    drop_path_rate: float = 0.1
    label_smoothing: float = 0.1
    head_init_std: Optional[float] = None  # None: by the image size (``head_init_for``)
    seed: int = 0
    num_workers: int = 0
    eval_every: int = 10  # epochs; the last epoch is always evaluated

    def validate(self) -> None:
        if self.mode not in ("full", "attention"):
            raise ValueError(f"mode '{self.mode}' is unknown; use full or attention.")
        if self.augment not in ("3aug", "rrc"):
            raise ValueError(f"augment '{self.augment}' is unknown; use 3aug or rrc.")
        if not 0 < self.layer_decay <= 1:
            raise ValueError(f"layer_decay must be in (0, 1] (got {self.layer_decay}).")


DEFAULT_BATCH = 64  # a process (main_finetune.py: 32 on each of 32 GPUs)


def finetune_batch(asked: Optional[int], images: int, processes: int) -> tuple[int, str]:
    """(batch a process, why it is not the one asked for): ``asked`` when given, else DEFAULT_BATCH
    capped at half the training images a process reads, a power of two and at least 2, as the
    pretraining recipe fits its batch to a small folder: a few dozen labelled images still fine-tune."""
    if asked is not None:
        return asked, ""
    reads = images // processes
    batch = fitted_batch(DEFAULT_BATCH, reads)
    each = " each process reads" if processes > 1 else ""
    why = f" ({DEFAULT_BATCH} a process capped at half the {reads} training images{each}; --batch_size sets it)"
    return batch, why if batch < DEFAULT_BATCH else ""


MAE_HEAD_INIT = 2e-5  # models_vit / main_finetune: the head starts near zero, for 100-epoch fine-tunes
SMALL_HEAD_INIT = 0.02  # DeiT's and timm's head init


def by_image_size(img_size: int, value: Optional[float], small: float, reference: float) -> float:
    """``value`` when set, else ``small`` at most SMALL_SIDE px (the small-data recipes' threshold),
    else the ``reference`` (ImageNet-size) default."""
    from sslvit.data.shape import SMALL_SIDE  # the one threshold for small images

    if value is not None:
        return float(value)
    return small if img_size <= SMALL_SIDE else reference


def head_init_for(img_size: int, head_init_std: Optional[float] = None) -> float:
    """The head's init std: MAE's 2e-5, but 0.02 for small images (``by_image_size``). A near-zero
    head passes almost no gradient to the backbone until it has grown, which a short fine-tune on
    small images cannot afford: a random-init 6-block ViT-Ti/8 fine-tuned on ``cluttered`` for 10
    epochs (rrc 0.5-1, blr 4e-3, layer decay 0.9) reached 80.8 % with 0.02 and 59.9 % with 2e-5
    (README, "Fine-tuning")."""
    return by_image_size(img_size, head_init_std, SMALL_HEAD_INIT, MAE_HEAD_INIT)


MAE_BLR = 5e-4  # main_finetune.py's, for ViT-B at 224 px
SMALL_BLR = 4e-3  # lr 1e-3 at batch 64: what a short fine-tune on small images needs (README, "Fine-tuning")


def blr_for(img_size: int, blr: Optional[float] = None) -> float:
    """The base lr: MAE's 5e-4, but 4e-3 for small images (``by_image_size``). With the 0.02 head,
    blr 1e-3 instead of 4e-3 cost 8 points (random-init ViT-Ti/8, cluttered, 10 epochs), and under
    4e-3 the pretrained MAE and BEiT backbones fine-tune to 82.3 and 91.8 (20 epochs)."""
    return by_image_size(img_size, blr, SMALL_BLR, MAE_BLR)


def three_augment(size: int, scale=(0.08, 1.0), hflip: bool = True) -> v2.Compose:
    """DeiT III's 3-Augment: random resized crop + flip (``hflip``), then one of grayscale /
    solarisation / Gaussian blur, then colour jitter 0.3."""
    from torchvision.transforms import v2  # here, not at the top: --help needs no torchvision

    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        *([v2.RandomHorizontalFlip()] if hflip else []),
        v2.RandomChoice([v2.Grayscale(num_output_channels=3), v2.RandomSolarize(128, p=1.0),
                         v2.GaussianBlur(max(3, (size // 20) * 2 + 1), sigma=(0.1, 2.0))]),
        v2.ColorJitter(0.3, 0.3, 0.3),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def rrc_augment(size: int, scale=(0.08, 1.0), hflip: bool = True) -> v2.Compose:
    from torchvision.transforms import v2  # here, not at the top: --help needs no torchvision

    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=tuple(scale), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        *([v2.RandomHorizontalFlip()] if hflip else []),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


class Classifier(nn.Module):
    """Backbone + linear head on pooled features: (B, C, H, W) -> logits (B, classes).

    With average pooling it is MAE's ``models_vit.VisionTransformer(global_pool=True)``: the
    backbone's final ``norm`` is not used, the patch tokens of the last block are averaged and a
    fresh LayerNorm (``fc_norm``) normalises the mean; with the cls token the final norm stays."""

    def __init__(self, backbone: SSLViT, num_classes: int, pool: str = "avg", head_init_std: float = MAE_HEAD_INIT):
        super().__init__()
        self.backbone = backbone
        self.pool = pool
        if pool == "avg":  # MAE deletes it: the mean of LayerNorm-ed tokens varies little between images
            backbone.norm = nn.Identity()
        self.fc_norm = nn.LayerNorm(backbone.embed_dim, eps=1e-6) if pool == "avg" else nn.Identity()
        self.head = nn.Linear(backbone.embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=head_init_std)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc_norm(self.backbone.features(x, pool=self.pool)))


def layer_id(name: str, depth: int) -> int:
    """MAE/BEiT's layer index: embeddings 0, block i -> i + 1, everything after the blocks depth + 1."""
    if name.startswith("backbone."):
        name = name[len("backbone."):]
        if name in ("cls_token", "pos_embed", "reg_token") or name.startswith("patch_embed"):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
    return depth + 1


def is_attention_param(name: str) -> bool:
    """Trained in attention-only fine-tuning: each block's attention (qkv and projection, in
    plain or parallel blocks), the head (with its fc_norm) and the position embedding."""
    return ".attn." in name or name.startswith(("head.", "fc_norm.")) or name == "backbone.pos_embed"


def param_groups_lrd(model: Classifier, weight_decay: float, layer_decay: float) -> list[dict]:
    """One group per (layer, decay or not) with ``lr_scale = layer_decay ** (depth + 1 - layer_id)``.
    No weight decay on 1-D parameters, tokens and the position embedding. Frozen parameters
    are left out."""
    depth = len(model.backbone.blocks)
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        lid = layer_id(name, depth)
        decay = not (p.ndim == 1 or name.endswith(("cls_token", "pos_embed")))
        g = groups.setdefault((lid, decay), {"params": [], "names": [], "weight_decay": weight_decay if decay else 0.0,
                                             "lr_scale": layer_decay ** (depth + 1 - lid)})
        g["params"].append(p)
        g["names"].append(name)
    return list(groups.values())


def build_optimizer(model: Classifier, cfg: FinetuneConfig, lr: float) -> torch.optim.AdamW:
    """AdamW over ``param_groups_lrd`` (each group's lr is ``lr * lr_scale`` once the schedule
    sets it); frozen parameters get no state."""
    groups = param_groups_lrd(model, cfg.weight_decay, cfg.layer_decay)
    return torch.optim.AdamW([{k: v for k, v in g.items() if k != "names"} for g in groups], lr=lr, fused=True)


def interpolate_pos_embed(state: dict, grid: tuple[int, int], old_grid: tuple[int, int],
                          num_prefix_tokens: int = 1) -> dict:
    """The checkpoint's position table resampled (bicubic) to a new patch grid (the cls and
    register rows kept as they are)."""
    from timm.layers import resample_abs_pos_embed  # timm: imported to build, not for --help

    if tuple(grid) != tuple(old_grid):
        state = dict(state)
        state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], new_size=list(grid),
                                                    old_size=list(old_grid), num_prefix_tokens=num_prefix_tokens)
    return state


def build_classifier(weights: Path, num_classes: int, cfg: FinetuneConfig) -> tuple[Classifier, dict]:
    """Load the backbone at ``cfg.img_size`` with a trainable position embedding and drop path."""
    from sslvit.models.export import load_backbone, read_backbone_config  # timm: not for --help

    bcfg = read_backbone_config(weights)
    size = check_img_size(bcfg.img_size if cfg.img_size is None else cfg.img_size, bcfg.patch_size)
    backbone, _ = load_backbone(weights, img_size=size, pos_embed="learned", drop_path_rate=cfg.drop_path_rate,
                                state_hook=lambda s: interpolate_pos_embed(
                                    s, (size // bcfg.patch_size,) * 2, (bcfg.img_size // bcfg.patch_size,) * 2,
                                    1 + bcfg.reg_tokens))
    head_init_std = head_init_for(size, cfg.head_init_std)
    model = Classifier(backbone, num_classes, cfg.pool, head_init_std)
    if cfg.mode == "attention":
        for name, p in model.named_parameters():
            p.requires_grad_(is_attention_param(name))
    return model, {"img_size": size, "pretrain_img_size": bcfg.img_size, "head_init_std": head_init_std}


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # process peak RSS (kB on Linux, B on macOS)
    return kb / (2**20 if sys.platform == "darwin" else 2**10)


@torch.no_grad()
def evaluate(model, loader, accelerator) -> tuple[float, float]:
    model.eval()
    correct1 = correct5 = total = 0
    for imgs, labels, _ in loader:
        logits = model(imgs)
        k = min(5, logits.shape[-1])
        top = logits.topk(k, dim=-1).indices
        top, labels = accelerator.gather_for_metrics((top, labels))
        correct1 += (top[:, 0] == labels).sum().item()
        correct5 += (top == labels[:, None]).any(1).sum().item()
        total += labels.shape[0]
    model.train()
    return 100 * correct1 / total, 100 * correct5 / total


def _labelled_sets(cfg: FinetuneConfig, weights: Path):
    """-> (data, train set with the fine-tuning augmentation, val set, number of classes)."""
    from sslvit.models.export import read_backbone_config, run_data_of  # timm: not for --help

    data = cfg.data or run_data_of(weights)
    bcfg = read_backbone_config(weights)
    size = check_img_size(bcfg.img_size if cfg.img_size is None else cfg.img_size, bcfg.patch_size)
    aug = (three_augment if cfg.augment == "3aug" else rrc_augment)(size, cfg.crop_scale, hflip_for(data, cfg.hflip))
    train_set = build_dataset(data, "train", size, transform=aug)
    val_set = build_dataset(data, "val", size, transform=eval_transform(size))
    check_labelled(train_set, data, "Fine-tuning")
    num_classes = len(train_set.classes) if isinstance(train_set, ShardDataset) else \
        int(max(max(train_set.labels), max(val_set.labels))) + 1
    return data, train_set, val_set, num_classes


def _train(model, optimizer, train_loader, val_loader, accelerator, cfg: FinetuneConfig, base_lr: float):
    """``cfg.epochs`` of supervised training with a cosine lr (each group scaled by its
    ``lr_scale``: layer decay), evaluated every ``cfg.eval_every`` epochs and at the last.
    -> (val top-1, val top-5 at the last evaluation, seconds per step, evaluation history)."""
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    steps_per_epoch = len(train_loader)
    total_steps, warmup = cfg.epochs * steps_per_epoch, int(cfg.warmup_epochs * steps_per_epoch)
    step, step_times, history = 0, [], []
    top1 = top5 = float("nan")
    for epoch in range(cfg.epochs):
        if isinstance(train_loader, StreamLoader):
            train_loader.set_epoch(epoch)
        model.train()
        bar = tqdm(train_loader, desc=f"fine-tune ({cfg.mode}) {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=not accelerator.is_main_process)
        for imgs, labels, _ in bar:
            t0 = time.perf_counter()
            lr = cosine_schedule(step, total_steps, base_lr, cfg.min_lr, warmup)
            for g in optimizer.param_groups:
                g["lr"] = lr * g["lr_scale"]
            loss = criterion(model(imgs), labels)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss_val = loss.item()
            if not math.isfinite(loss_val):
                raise ValueError(f"The fine-tuning loss became {loss_val} at step {step}; lower --blr.")
            step_times.append(time.perf_counter() - t0)
            step += 1
            bar.set_postfix(loss=f"{loss_val:.3f}")
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            top1, top5 = evaluate(model, val_loader, accelerator)
            history.append({"epoch": epoch + 1, "val_top1": top1, "val_top5": top5})
            accelerator.print(f"epoch {epoch + 1}/{cfg.epochs}  val top-1 {top1:.2f}  top-5 {top5:.2f}")
    return top1, top5, step_times, history


def run_finetune(cfg: FinetuneConfig) -> dict:
    from sslvit.models.export import resolve_backbone_path  # timm: not for --help

    cfg.validate()
    weights = resolve_backbone_path(cfg.ckpt)
    data, train_set, val_set, num_classes = _labelled_sets(cfg, weights)
    accelerator = build_accelerator()
    batch, capped = finetune_batch(cfg.batch_size, len(train_set), accelerator.num_processes)
    effective = batch * accelerator.num_processes
    if len(train_set) < effective:  # before the model is built: no work for a run that cannot take one step
        raise ValueError(f"The training data has {len(train_set)} images, fewer than one batch of "
                         f"{batch} x {accelerator.num_processes} processes; lower --batch_size.")
    torch.manual_seed(cfg.seed)
    model, sizes = build_classifier(weights, num_classes, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total_params = sum(p.numel() for p in model.parameters())
    base_lr = scaled_lr(blr_for(sizes["img_size"], cfg.blr), effective)
    optimizer = build_optimizer(model, cfg, base_lr)
    val_loader = DataLoader(val_set, batch_size=256, num_workers=cfg.num_workers)
    if isinstance(train_set, ShardDataset):  # the pretraining loop's stream: shuffled, equal steps per process
        train_set.shuffle, train_set.seed = True, cfg.seed
    train_loader, by_accelerate = training_loader(train_set, batch, accelerator.num_processes,
                                                  cfg.num_workers, cfg.seed, device=accelerator.device)
    if by_accelerate:
        model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    else:
        model, optimizer, val_loader = accelerator.prepare(model, optimizer, val_loader)
    sharded = accelerator.distributed_type == DistributedType.FSDP
    accelerator.print(f"fine-tuning ({cfg.mode}): {accelerator.num_processes} process(es)"
                      f"{', parameters sharded (FSDP2),' if sharded else ''} on {accelerator.device}, effective batch "
                      f"{effective}{capped}, lr {base_lr:.3g}, {len(train_loader)} steps/epoch")
    top1, top5, step_times, history = _train(model, optimizer, train_loader, val_loader, accelerator, cfg, base_lr)
    timed = step_times[min(len(step_times) - 1, 2):]  # the first steps warm up allocators
    report = {"ckpt": str(weights), "data": data, "mode": cfg.mode, "epochs": cfg.epochs, **sizes,
              "trainable_params": trainable, "total_params": total_params, "val_top1": top1, "val_top5": top5,
              "step_time_s": sum(timed) / len(timed), "peak_memory_mb": _peak_memory_mb(accelerator.device),
              "effective_batch": effective, "lr": base_lr, "processes": accelerator.num_processes,
              "parameters_sharded": sharded, "history": history}
    state = accelerator.get_state_dict(model)  # collective under FSDP: every process gathers, the main one keeps
    main, out = accelerator.is_main_process, weights.parent / f"finetune_{cfg.mode}"

    def write() -> None:
        made = not out.exists()
        out.mkdir(exist_ok=True)
        report["replaced"] = existing([out / "model.safetensors", out / "finetune.json"])
        try:
            save_safetensors_atomic(state, out / "model.safetensors")
            write_json_atomic(report, out / "finetune.json")
        except BaseException:  # a folder this write made is not left behind half-filled
            if made:
                shutil.rmtree(out, ignore_errors=True)
            raise

    return finish_probe(accelerator, report if main else None, write if main else None, out)  # printed once


def format_report(report: dict) -> str:
    epochs = f"{report['epochs']} epoch{'s' * (report['epochs'] != 1)}"
    return (f"fine-tuning ({report['mode']}, {epochs} at {report['img_size']} px, pretrained at "
            f"{report['pretrain_img_size']} px): val top-1 {report['val_top1']:.2f}, top-5 {report['val_top5']:.2f}\n"
            f"trainable parameters {report['trainable_params']:,} of {report['total_params']:,}, "
            f"step {report['step_time_s'] * 1000:.0f} ms, peak memory {report['peak_memory_mb']:.0f} MB -> "
            f"{Path(report['ckpt']).parent / ('finetune_' + report['mode'])}/")
