import math
import os
import signal

import pytest

from sslvit.models import BackboneConfig, build_backbone
from sslvit.objectives.mae import MAE, MAEConfig
from sslvit.train.optim import param_groups
from sslvit.runtime.schedules import cosine_schedule, scaled_lr


def test_cosine_schedule_warmup_and_endpoints():
    f = lambda s: cosine_schedule(s, total_steps=100, base=1.0, final=0.1, warmup_steps=10)  # noqa: E731
    assert f(0) == 0.0
    assert f(5) == pytest.approx(0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert f(100) == pytest.approx(0.1) and f(150) == pytest.approx(0.1)
    vals = [f(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))  # monotone decay after warmup


def test_cosine_schedule_rising_for_momentum():
    # DINO teacher momentum 0.996 -> 1
    assert cosine_schedule(0, 50, 0.996, 1.0) == pytest.approx(0.996)
    assert cosine_schedule(50, 50, 0.996, 1.0) == pytest.approx(1.0)
    assert cosine_schedule(25, 50, 0.996, 1.0) == pytest.approx(0.998)


def test_linear_scaling_rule():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)
    assert math.isclose(scaled_lr(1.5e-4, 256), 1.5e-4)


def test_no_weight_decay_on_biases_norms_and_a_learned_pos_embed():
    backbone = build_backbone(BackboneConfig(size="tiny", patch_size=8, img_size=32, depth=1, pos_embed="learned"))
    mae = MAE(backbone, MAEConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2))
    decay, no_decay = param_groups(mae, 0.05)
    names = {id(p): n for n, p in mae.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    for must in ("backbone.pos_embed", "backbone.norm.weight", "backbone.blocks.0.attn.qkv.bias",
                 "backbone.patch_embed.proj.7.weight"):
        assert must in no_decay_names
    for must in ("backbone.blocks.0.attn.qkv.weight", "decoder.decoder_pred.weight", "backbone.cls_token",
                 "decoder.mask_token"):  # MAE decays its tokens (main_pretrain.py add_weight_decay)
        assert must in decay_names
    assert "decoder.decoder_pos_embed" not in decay_names | no_decay_names  # frozen: not optimised at all
    assert all(p.ndim > 1 for p in decay["params"])


def test_interrupted_save_is_never_taken_for_a_checkpoint(tmp_path):
    import json

    from sslvit.train.checkpoint import latest_checkpoint

    root = tmp_path / "checkpoints"
    (root / "epoch_0002").mkdir(parents=True)
    (root / "epoch_0002" / "meta.json").write_text(json.dumps({"epoch": 1, "step": 20}))
    (root / ".tmp_epoch_0003").mkdir()  # a kill during save_state leaves only the temp folder
    (root / "epoch_0004").mkdir()  # a folder without meta.json is not complete either
    assert latest_checkpoint(tmp_path) == root / "epoch_0002"
    assert latest_checkpoint(tmp_path / "elsewhere") is None


def test_a_samples_crop_is_keyed_by_the_cpu_generator_alone(tmp_path, monkeypatch):
    """Each image's random crop is drawn from (seed, epoch, sample) on the CPU generator, which is put
    back afterwards; no accelerator's generator is seeded (torch.manual_seed would seed CUDA's, XPU's
    and MTIA's too, each with a stack trace: 40 % of a 32 px sample's load)."""
    import torch
    from PIL import Image

    from sslvit.data.dataset import build_dataset
    from sslvit.data.shard_reader import ShardDataset, resolve_shards
    from sslvit.data.shards import write_shards
    from sslvit.data.transforms import mae_train_transform

    def seeded_an_accelerator(*args, **kwargs):
        raise AssertionError("loading a sample seeded an accelerator's generator")

    for device in ("cuda", "xpu", "mtia"):
        if hasattr(getattr(torch, device, None), "manual_seed_all"):
            monkeypatch.setattr(getattr(torch, device), "manual_seed_all", seeded_an_accelerator)
    crop = mae_train_transform(16, hflip=False)
    ds = build_dataset("digits", "train", 16, transform=crop)
    ds.seed = 0
    state = torch.get_rng_state()
    first = ds[3][0]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's stream is untouched
    torch.default_generator.manual_seed(123)
    assert torch.equal(ds[3][0], first)  # keyed: the global RNG does not move it
    ds.set_epoch(1)
    assert not torch.equal(ds[3][0], first)  # another epoch, another crop

    folder = tmp_path / "imgs" / "a"
    folder.mkdir(parents=True)
    for i in range(4):
        Image.fromarray((torch.rand(20, 20, 3) * 255).byte().numpy()).save(folder / f"{i}.png")
    write_shards(tmp_path / "imgs", tmp_path / "shards", val_fraction=0, progress=False)
    urls, n, _ = resolve_shards(str(tmp_path / "shards"), "train")
    draws = [[x for x, *_ in ShardDataset(urls, n, transform=crop, seed=5)] for _ in range(2)]
    assert len(draws[0]) == 4 and all(torch.equal(a, b) for a, b in zip(*draws))


def test_a_second_ctrl_c_a_second_later_stops_at_once_and_one_press_through_a_launcher_does_not(tmp_path):
    """A launcher forwards the terminal's Ctrl-C, so a trainer gets one press twice within a moment:
    that is the first stop request; another press after SAME_PRESS_S exits at once with 130."""
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "presses.py"
    script.write_text(
        "import os, signal, time\n"
        "from sslvit.train.stop_signals import SAME_PRESS_S, StopRequest\n"
        "with StopRequest() as stop:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    os.kill(os.getpid(), signal.SIGINT)  # the launcher's copy of the same press\n"
        "    time.sleep(0.2)\n"
        "    print('flagged', stop.signum == signal.SIGINT, flush=True)\n"
        "    time.sleep(SAME_PRESS_S + 0.1)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "print('not stopped', flush=True)\n")
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(script)], cwd=repo, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(repo)},
                          preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert done.returncode == 130 and done.stdout == "flagged True\n", (done.stdout, done.stderr)
    assert done.stderr == ("\nSIGINT received: stopping after this step with a checkpoint (Ctrl-C again to stop at "
                           "once)\nSecond Ctrl-C: stopping now, without a checkpoint of this step; --resume continues "
                           "from the latest complete one (before the first, it starts the run again).\n")
