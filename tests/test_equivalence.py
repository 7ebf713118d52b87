"""Multi-process equivalence: 2 real gloo processes x B/2, and 1 process x (2 accumulated x B/2),
train exactly like 1 process x B (same seed, same data order) for MAE, DINO and iBOT.

One exception, bounded: the key bias (the middle third of each ``attn.qkv.bias``). Adding a
constant to every key shifts all of a query's logits alike, which softmax ignores: its gradient
is zero in exact arithmetic and rounding noise in practice, and AdamW scales that noise up to
steps of size lr. It cannot change any output; the test bounds it by 20 steps x the peak lr.

What makes it hold: accelerate's seedable sampler deals the same permutation in the same
global order; each sample's augmentation is keyed by (seed, epoch, sample index) and MAE's mask by
its row in the step's global batch, not by the process that draws it (iBOT's crop masks by the
image's row and the view); DINO's and iBOT's centers are all-reduced; gradients are averaged.
What it needs switched off: drop path (it draws from the
process's RNG) and BatchNorm in the DINO head (batch statistics are per process): with either,
the runs are equal in distribution only.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from sslvit.recipes.beit import BEiTRunConfig
from sslvit.recipes.dino import DINORunConfig
from sslvit.recipes.ibot import IBOTRunConfig
from sslvit.recipes.mae import MAERunConfig
from sslvit.train.entry import run_pretraining
from sslvit.train.precision import cpu_has_native_bf16

REPO = Path(__file__).resolve().parents[1]
RTOL = 1e-5  # fp32: only the order of sums over the batch differs
BF16_U = 2.0 ** -8  # bf16's unit roundoff: 8 significant bits (7 stored + the implicit one)
needs_native_bf16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason=(
    "this CPU has no native bf16 (or SSLVIT_CPU_BF16=0): bf16 would be emulated, so its runs are not checked here"))
COMMON = ["--train.precision", "fp32", "--model.size", "tiny", "--model.depth", "2",
          "--model.patch_size", "4", "--model.img_size", "16",
          "--train.epochs", "2", "--train.warmup_epochs", "1", "--train.num_workers", "0", "--train.log_every", "1",
          "--train.save_every", "2", "--train.picture_every", "2", "--model.drop_path_rate", "0"]
OBJECTIVES = {
    "mae": (MAERunConfig, "pretrain/mae.py", ["--mae.decoder_dim", "32", "--mae.decoder_depth", "1",
                                              "--mae.decoder_heads", "2", "--train.blr", "1e-2"]),
    "dino": (DINORunConfig, "pretrain/dino.py", ["--crops.local_number", "2", "--crops.local_size", "8",
                                                 "--dino.out_dim", "128", "--dino.hidden_dim", "64",
                                                 "--dino.bottleneck_dim", "32", "--dino.use_bn_in_head", "false",
                                                 # KoLeo (the small-data recipe sets 0.1) is per process batch
                                                 "--dino.koleo_weight", "0", "--start", "none"]),
    "ibot": (IBOTRunConfig, "pretrain/ibot.py", ["--crops.local_number", "2", "--crops.local_size", "8",
                                                 "--dino.out_dim", "128", "--dino.hidden_dim", "64",
                                                 "--dino.bottleneck_dim", "32", "--dino.use_bn_in_head", "false",
                                                 "--ibot.shared_head", "false", "--ibot.patch_out_dim", "96",
                                                 "--dino.koleo_weight", "0", "--start", "none"]),  # as DINO's
    "beit": (BEiTRunConfig, "pretrain/beit.py", ["--tokenizer.vocab", "16", "--tokenizer.fit_images", "48",
                                                 "--tokenizer.iters", "3", "--train.blr", "1e-2"]),
}
PORTS = {"mae": 29540, "dino": 29541, "ibot": 29545, "beit": 29546}


def write_folder160(root: Path) -> Path:
    """200 random 16x16 PNGs in ``root``: the 160 of the train split (the probes hold out 40) give 10
    steps of 16 per epoch, 20 in two epochs (benchmarks/equivalence.py writes its runs' data with it)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(200):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(root / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def folder160(tmp_path_factory):
    return write_folder160(tmp_path_factory.mktemp("eq") / "imgs")


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


def run_two_processes(name: str, data: Path, out: Path, batch: int, port: int, extra=(), env_extra=None) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu_2proc.yaml"),
           "--main_process_port", str(port), str(REPO / OBJECTIVES[name][1]), *_args(name, data, out, batch), *extra]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es)" in proc.stdout  # really two processes, not two independent copies
    return proc.stdout


@pytest.mark.parametrize("name", ["mae", "dino", "ibot"])
def test_two_processes_and_accumulation_train_like_one_process(name, folder160, tmp_path, fresh_accelerate):
    cls = OBJECTIVES[name][0]
    one = run_pretraining(cls, name, argv=_args(name, folder160, tmp_path / "one", 16))
    fresh_accelerate()
    accum = run_pretraining(cls, name, argv=_args(name, folder160, tmp_path / "accum", 8, accum=2))
    run_two_processes(name, folder160, tmp_path / "two", 8, port=PORTS[name])
    for other in (accum, tmp_path / "two"):
        loss_rel, weight_rel, key_bias = compare(one, other)
        assert loss_rel < RTOL, (other.name, loss_rel)
        assert weight_rel < RTOL, (other.name, weight_rel)
        assert key_bias <= 20 * _peak_lr(one), (other.name, key_bias)


@pytest.mark.parametrize("name", ["dino", "beit"])
def test_two_processes_stay_one_group_when_the_run_starts_from_init(name, folder160, tmp_path, fresh_accelerate):
    """``--init`` (and BEiT's tokenizer fit, before it) run before the Accelerator exists: accelerate's
    process state built there without the CPU flag made each process a run of its own (both took
    the run directory, and one died on its lock)."""
    start = run_pretraining(MAERunConfig, "mae", argv=_args("mae", folder160, tmp_path / "mae", 16))
    stdout = run_two_processes(name, folder160, tmp_path / "two", 8, port=PORTS[name] + 10,
                               extra=["--init", str(start)])
    assert stdout.count(f"--init {start}:") == 1  # the main process reports the load, once


def test_two_processes_train_the_start_then_the_run_as_one_group(folder160, tmp_path):
    """``--start``: the start's run ends, and the run after it trains in the same two processes:
    the group is not torn down between them (a group made again read the old one's addresses from
    the launcher's store, and one process died on a reset connection), and the run is the one
    ``--init`` of the start's backbone gives. The main process writes the start's backbone 2 s late:
    the other must wait for it, not read a missing (or an older) file."""
    stdout = run_two_processes("dino", folder160, tmp_path / "one_command", 8, port=PORTS["dino"] + 20,
                               extra=["--start", "mae:2"], env_extra={"SSLVIT_TEST_EXPORT_PAUSE": "2"})
    start = tmp_path / "one_command" / "start-mae2"
    assert stdout.count("start: MAE's recipe for this data, 2 epochs, trained first") == 1
    assert stdout.count("2 process(es)") == 2  # the start and the run, each as one group of two
    run_two_processes("dino", folder160, tmp_path / "init", 8, port=PORTS["dino"] + 21,
                      extra=["--init", str(start / "backbone.safetensors")])
    loss_rel, weight_rel, _ = compare(tmp_path / "one_command", tmp_path / "init")
    assert loss_rel < RTOL and weight_rel < RTOL, (loss_rel, weight_rel)


def _key_masks_by_local_rows(monkeypatch) -> None:
    """The bug the equivalence tests must catch: each micro-batch's masks keyed by its own rows
    (0..b-1), as a per-process draw would be, instead of its rows in the step's global batch."""
    import sslvit.objectives.mae as mae

    import dataclasses

    keyed = mae.MAE.before_micro_batch
    monkeypatch.setattr(mae.MAE, "before_micro_batch", lambda self, info: keyed(
        self, dataclasses.replace(info, rows=slice(0, info.rows.stop - info.rows.start))))


def test_the_check_has_teeth_a_different_split_of_the_masks_shows(folder160, tmp_path, fresh_accelerate,
                                                                   monkeypatch):
    """If MAE's masks were drawn per micro-batch (keyed by the rows of the micro-batch, not of the
    global batch), accumulation would differ."""
    one = run_pretraining(MAERunConfig, "mae", argv=_args("mae", folder160, tmp_path / "one", 16))
    fresh_accelerate()
    _key_masks_by_local_rows(monkeypatch)
    accum = run_pretraining(MAERunConfig, "mae", argv=_args("mae", folder160, tmp_path / "accum", 8, accum=2))
    loss_rel, _, _ = compare(one, accum)
    assert loss_rel > 1e-3


def bf16_step_tolerance(step: int, first_step_tol: float) -> float:
    """How far two bf16 runs that should train alike may drift apart by logged step ``step``.

    Before step s, s - 1 optimizer updates were applied. Each update's gradient in one run carries
    bf16 roundings the other does not (a partial weight gradient rounded to bf16 before it is
    summed: relative error up to u = 2^-8 per element). Independent roundings add up as a random
    walk, so after k updates the loss differs by about u * sqrt(k) relative: that is the bound.
    ``first_step_tol`` is what the two runs may differ by with identical weights."""
    return first_step_tol + BF16_U * math.sqrt(step - 1)


def _loss_drift(a: Path, b: Path, first_step_tol: float) -> list[tuple[int, float, float]]:
    """-> (step, relative loss difference, bound) for each logged step over its bound."""
    la, lb = _losses(a), _losses(b)
    assert sorted(la) == sorted(lb) == list(range(1, 21))
    rel = {s: abs(la[s] - lb[s]) / abs(la[s]) for s in la}
    print(f"{a.name} vs {b.name}: largest relative loss difference {max(rel.values()):.2e} "
          f"(step {max(rel, key=rel.get)}), bound at step 20 {bf16_step_tolerance(20, first_step_tol):.2e}")
    return [(s, r, bf16_step_tolerance(s, first_step_tol)) for s, r in rel.items()
            if r > bf16_step_tolerance(s, first_step_tol)]


BF16 = ["--train.precision", "bf16"]


@needs_native_bf16
@pytest.mark.parametrize("name", ["mae", "dino"])
def test_under_bf16_two_processes_and_accumulation_stay_within_rounding_of_one_process(name, folder160, tmp_path,
                                                                                       fresh_accelerate):
    """1 x B vs 1 x (2 accumulated x B/2) vs 2 processes x B/2, all in bf16 autocast. With the same
    weights each image's forward is the same computation whatever the split, so step 1 agrees
    to fp32's RTOL; after that the bound grows as bf16 rounding allows (``bf16_step_tolerance``).
    Weights are not compared: AdamW divides each gradient by its own running scale, so elements
    whose gradient is rounding noise move by up to lr a step in either run (see the key bias)."""
    cls = OBJECTIVES[name][0]
    one = run_pretraining(cls, name, argv=[*_args(name, folder160, tmp_path / "one", 16), *BF16])
    fresh_accelerate()
    accum = run_pretraining(cls, name, argv=[*_args(name, folder160, tmp_path / "accum", 8, accum=2), *BF16])
    run_two_processes(name, folder160, tmp_path / "two", 8, port=29542 + (name == "dino"), extra=BF16)
    for other in (accum, tmp_path / "two"):
        assert _loss_drift(one, other, RTOL) == [], other.name


@needs_native_bf16
def test_under_bf16_the_check_has_teeth_masks_drawn_per_process_show_at_step_1(folder160, tmp_path,
                                                                              fresh_accelerate, monkeypatch):
    one = run_pretraining(MAERunConfig, "mae", argv=[*_args("mae", folder160, tmp_path / "one", 16), *BF16])
    fresh_accelerate()
    _key_masks_by_local_rows(monkeypatch)
    accum = run_pretraining(MAERunConfig, "mae", argv=[*_args("mae", folder160, tmp_path / "accum", 8, accum=2),
                                                       *BF16])
    assert any(step == 1 for step, _, _ in _loss_drift(one, accum, RTOL))


@needs_native_bf16
@pytest.mark.parametrize("name", ["mae", "dino"])
def test_bf16_and_fp32_training_losses_stay_close(name, folder160, tmp_path, fresh_accelerate):
    """The same 20 steps in fp32 and in bf16 autocast. At step 1 (same weights) only the bf16
    forward differs: every matmul output rounded to bf16 (relative error up to u each), which the
    loss, a mean over many elements, does not accumulate beyond u; then the random walk as above.
    (benchmarks/mae_step.py --bf16-check measured 1.29e-4 over 5 ViT-S/16 steps on a Xeon.)"""
    cls = OBJECTIVES[name][0]
    fp32 = run_pretraining(cls, name, argv=_args(name, folder160, tmp_path / "fp32", 16))
    fresh_accelerate()
    bf16 = run_pretraining(cls, name, argv=[*_args(name, folder160, tmp_path / "bf16", 16), *BF16])
    assert _loss_drift(fp32, bf16, BF16_U) == []
