"""``train.*``: the keys of the one training loop, with their checks."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sslvit.train.compiled import check_compile_backend
from sslvit.train.precision import PRECISIONS


@dataclass
class TrainConfig:
    epochs: int = 800
    batch_size: int = 64  # per process
    accum_steps: int = 1  # gradient accumulation
    blr: float = 1.5e-4  # base lr; lr = blr * batch_size * processes * accum_steps / 256
    lr: Optional[float] = None  # absolute lr, overrides blr
    min_lr: float = 0.0
    lr_schedule: str = "cosine"  # after warmup: cosine (to min_lr) | constant (held at the peak; short runs)
    warmup_epochs: float = 40.0
    weight_decay: float = 0.05
    weight_decay_end: Optional[float] = None  # cosine weight-decay schedule end; None keeps it constant
    betas: tuple[float, float] = (0.9, 0.95)
    clip_grad: Optional[float] = None  # max grad norm
    clip_mode: str = "global"  # global (one norm over all parameters) | per_param (DINO: each parameter's own norm)
    precision: str = "auto"  # auto (GPU: bf16; CPU: the faster of fp32 and bf16, timed) | fp32 (= no) | bf16 | fp16
    compile: str = "off"  # off | a torch.compile backend (inductor: fuses the elementwise tail; minutes to compile)
    seed: int = 0
    num_workers: int = 4
    log_every: int = 20  # optimizer steps
    save_every: int = 20  # epochs between checkpoints (the last epoch is always saved)
    picture_every: int = 20  # epochs between picture grids (the last epoch always gets one)
    keep_checkpoints: int = 2
    knn_every: int = 0  # epochs between online k-NN checks on held-out labelled data; 0: off
    knn_pool: str = "cls"  # features of the online k-NN: cls | avg
    knn_k: int = 20
    stop_after: Optional[int] = None  # end this invocation after N epochs; continue later with --resume
    max_bad_steps: int = 10  # consecutive steps with a non-finite loss or gradient (each skipped) before stopping
    max_unreadable: float = 0.5  # share of an epoch's images that may be unreadable (skipped) before the run stops
    shuffle_buffer: int = 1000  # shards: samples held per data-loader worker for shuffling
    data_resampled: bool = False  # shards: draw shards with replacement forever (epoch = the index's count)
    hflip: Optional[bool] = None  # augmentation flips left-right; None: yes, but not the embedded digit sets
    # RandomResizedCrop area range of the one-view recipes (MAE, BEiT, a composite's MAE view;
    # MAE's 0.2-1); DINO's crops have their own keys (crops.global_scale, crops.local_scale)
    crop_scale: tuple[float, float] = (0.2, 1.0)

    def validate(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision '{self.precision}' is unknown; use auto, fp32 (or no), bf16 or fp16.")
        if self.compile != "off":
            check_compile_backend(self.compile)
        if self.lr_schedule not in ("cosine", "constant"):
            raise ValueError(f"train.lr_schedule '{self.lr_schedule}' is unknown; use cosine or constant.")
        if self.clip_mode not in ("global", "per_param"):
            raise ValueError(f"train.clip_mode '{self.clip_mode}' is unknown; use global or per_param.")
        for name in ("epochs", "batch_size", "accum_steps", "log_every", "save_every", "picture_every",
                     "max_bad_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1 (got {getattr(self, name)}).")
        for name in ("blr", "lr", "clip_grad"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"train.{name} must be > 0 (got {value}).")
        for name in ("min_lr", "warmup_epochs", "weight_decay", "weight_decay_end"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"train.{name} must be >= 0 (got {value}).")
        if not 0.0 <= self.max_unreadable <= 1.0:
            raise ValueError(f"train.max_unreadable is a share in [0, 1] (got {self.max_unreadable}).")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ValueError(f"train.crop_scale must be two area shares with 0 < low <= high <= 1 "
                             f"(got {list(self.crop_scale)}); MAE's is 0.2,1.")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"train.betas must each be in [0, 1) (got {list(self.betas)}); AdamW's are 0.9,0.999.")
