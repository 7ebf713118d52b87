"""Multi-process equivalence: 2 real gloo processes x B/2, and 1 process x (2 accumulated x B/2),
train exactly like 1 process x B (same seed, same data order) for MAE and DINO.

One exception, bounded: the key bias (the middle third of each ``attn.qkv.bias``). Adding a
constant to every key shifts all of a query's logits alike, which softmax ignores: its gradient
is zero in exact arithmetic and rounding noise in practice, and AdamW scales that noise up to
steps of size lr. It cannot change any output; the test bounds it by 20 steps x the peak lr.

What makes it hold: accelerate's seedable sampler deals the same permutation in the same
global order; each sample's augmentation is keyed by (seed, epoch, sample index) and MAE's mask by
its row in the step's global batch, not by the process that draws it; DINO's center is
all-reduced; gradients are averaged. What it needs switched off: drop path (it draws from the
process's RNG) and BatchNorm in the DINO head (batch statistics are per process): with either,
the runs are equal in distribution only.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from sslvit.objectives.dino import DINORunConfig
from sslvit.objectives.mae import MAERunConfig
from sslvit.train.entry import run_pretraining

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-5
COMMON = ["--model.size", "tiny", "--model.depth", "2", "--model.patch_size", "4", "--model.img_size", "16",
          "--train.epochs", "2", "--train.warmup_epochs", "1", "--train.num_workers", "0", "--train.log_every", "1",
          "--train.save_every", "2", "--train.picture_every", "2", "--model.drop_path_rate", "0"]
OBJECTIVES = {
    "mae": (MAERunConfig, "pretrain/mae.py", ["--mae.decoder_dim", "32", "--mae.decoder_depth", "1",
                                              "--mae.decoder_heads", "2", "--train.blr", "1e-2"]),
    "dino": (DINORunConfig, "pretrain/dino.py", ["--crops.local_number", "2", "--crops.local_size", "8",
                                                 "--dino.out_dim", "128", "--dino.hidden_dim", "64",
                                                 "--dino.bottleneck_dim", "32", "--dino.use_bn_in_head", "false"]),
}


@pytest.fixture(scope="module")
def folder160(tmp_path_factory):
    """160 random 16x16 PNGs: 10 steps of 16 per epoch, 20 in two epochs."""
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("eq") / "imgs"
    root.mkdir()
    for i in range(160):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(root / f"{i:03d}.png")
    return root


def _args(name, data, out, batch, accum=1):
    return [*COMMON, *OBJECTIVES[name][2], "--data", str(data), "--out", str(out),
            "--train.batch_size", str(batch), "--train.accum_steps", str(accum)]


def _losses(run: Path) -> dict:
    return {r["step"]: r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r}


def _max_rel(a: dict, b: dict) -> float:
    """Largest |a - b| / max|a| over entries (each tensor against its own scale)."""
    out = 0.0
    for k in a:
        x, y = np.asarray(a[k], dtype=np.float64), np.asarray(b[k], dtype=np.float64)
        out = max(out, float(np.abs(x - y).max() / max(np.abs(x).max(), 1e-12)))
    return out


def _weights(run: Path) -> tuple[dict, dict]:
    """-> (every backbone weight with the key biases cut out, the key biases)."""
    weights, key_bias = {}, {}
    for k, v in load_file(str(run / "backbone.safetensors")).items():
        v = v.numpy()
        if k.endswith("attn.qkv.bias"):
            q, key_bias[k], val = np.split(v, 3)
            v = np.concatenate([q, val])
        weights[k] = v
    return weights, key_bias


def compare(reference: Path, other: Path) -> tuple[float, float, float]:
    """-> (largest relative loss difference over the logged steps, largest relative weight
    difference, largest absolute key-bias difference)."""
    la, lb = _losses(reference), _losses(other)
    assert sorted(la) == sorted(lb) == list(range(1, 21))
    loss_rel = max(abs(la[s] - lb[s]) / abs(la[s]) for s in la)
    (wa, ka), (wb, kb) = _weights(reference), _weights(other)
    return loss_rel, _max_rel(wa, wb), max(float(np.abs(ka[k] - kb[k]).max()) for k in ka)


def _peak_lr(run: Path) -> float:
    return max(r["lr"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "lr" in r)


def run_two_processes(name: str, data: Path, out: Path, batch: int, port: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu_2proc.yaml"),
           "--main_process_port", str(port), str(REPO / OBJECTIVES[name][1]), *_args(name, data, out, batch)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout  # really two processes, not two independent copies


@pytest.mark.parametrize("name", ["mae", "dino"])
def test_two_processes_and_accumulation_train_like_one_process(name, folder160, tmp_path, fresh_accelerate):
    cls = OBJECTIVES[name][0]
    one = run_pretraining(cls, name, argv=_args(name, folder160, tmp_path / "one", 16))
    fresh_accelerate()
    accum = run_pretraining(cls, name, argv=_args(name, folder160, tmp_path / "accum", 8, accum=2))
    run_two_processes(name, folder160, tmp_path / "two", 8, port=29540 + (name == "dino"))
    for other in (accum, tmp_path / "two"):
        loss_rel, weight_rel, key_bias = compare(one, other)
        assert loss_rel < RTOL, (other.name, loss_rel)
        assert weight_rel < RTOL, (other.name, weight_rel)
        assert key_bias <= 20 * _peak_lr(one), (other.name, key_bias)


def test_the_check_has_teeth_a_different_split_of_the_masks_shows(folder160, tmp_path, fresh_accelerate,
                                                                   monkeypatch):
    """If MAE's masks were drawn per process (the usual torch.rand), accumulation would differ."""
    import sslvit.objectives.mae as mae

    one = run_pretraining(MAERunConfig, "mae", argv=_args("mae", folder160, tmp_path / "one", 16))
    fresh_accelerate()
    monkeypatch.setattr(mae.MAE, "on_batch", lambda self, key, rows, size: None)
    accum = run_pretraining(MAERunConfig, "mae", argv=_args("mae", folder160, tmp_path / "accum", 8, accum=2))
    loss_rel, _, _ = compare(one, accum)
    assert loss_rel > 1e-3
