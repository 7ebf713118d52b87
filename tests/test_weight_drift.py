"""benchmarks/weight_drift.py measures what docs/results.md says of DINO's short runs (their blocks
stay within a few percent of their initial weights): it must rebuild a run's initial weights
exactly, and report a planted change as that change, in that part."""
import sys
from pathlib import Path

import pytest
import torch

from sslvit.recipes.mae import MAERunConfig
from sslvit.train.entry import run_pretraining

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import weight_drift  # noqa: E402

TINY_MAE = ["--train.precision", "fp32", "--model.size", "tiny", "--model.depth", "2", "--model.patch_size", "4",
            "--model.img_size", "16", "--mae.decoder_dim", "32", "--mae.decoder_depth", "1", "--mae.decoder_heads", "2",
            "--train.batch_size", "16", "--train.epochs", "1", "--train.warmup_epochs", "0", "--train.num_workers", "0",
            "--train.seed", "3"]


def test_a_planted_change_is_reported_in_its_part_and_nowhere_else():
    g = torch.Generator().manual_seed(0)
    initial = {"patch_embed.proj.0.weight": torch.randn(8, 3, 2, 2, generator=g),
               "blocks.0.mlp.fc1.weight": torch.randn(16, 4, generator=g),
               "blocks.0.mlp.fc1.bias": torch.randn(16, generator=g),  # 1-d: not a matrix, not counted
               "blocks.1.attn.qkv.weight": torch.randn(12, 4, generator=g),
               "norm.weight": torch.ones(4)}
    final = {k: v.clone() for k, v in initial.items()}
    step = torch.randn(12, 4, generator=g)
    final["blocks.1.attn.qkv.weight"] += 0.1 * step * initial["blocks.1.attn.qkv.weight"].norm() / step.norm()
    final["blocks.0.mlp.fc1.bias"] += 5.0
    rows = {part: (rel, rms) for part, rel, rms in weight_drift.drift(initial, final)}
    assert list(rows) == ["stem", "block 1", "block 2", "final norm"]
    assert rows["block 2"][0] == pytest.approx(0.1, rel=1e-5)
    assert rows["stem"] == (0.0, 0.0) and rows["block 1"] == (0.0, 0.0) and rows["final norm"] == (0.0, 0.0)


def test_the_initial_weights_are_the_runs_own(tmp_path, image_folder, fresh_accelerate):
    """A run whose steps cannot move a weight (lr 1e-30) reads 0 everywhere; a wrong seed, init
    or objective would read about 1.4 (two independent draws) or more."""
    still = run_pretraining(MAERunConfig, "mae", argv=[*TINY_MAE, "--train.lr", "1e-30", "--data", str(image_folder),
                                                       "--out", str(tmp_path / "still")])
    from safetensors.torch import load_file

    rows = weight_drift.drift(weight_drift.initial_state(still), load_file(still / "backbone.safetensors"))
    assert {part for part, _, _ in rows} >= {"stem", "block 1", "block 2", "final norm"}
    assert max(rel for _, rel, _ in rows) < 1e-6
    fresh_accelerate()
    moved = run_pretraining(MAERunConfig, "mae", argv=[*TINY_MAE, "--train.lr", "1e-3", "--data", str(image_folder),
                                                       "--out", str(tmp_path / "moved")])
    rows = dict((part, rel) for part, rel, _ in
                weight_drift.drift(weight_drift.initial_state(moved), load_file(moved / "backbone.safetensors")))
    assert 1e-3 < rows["block 1"] < 1.0


def test_a_beit_run_or_a_folder_without_config_is_refused_in_one_sentence(tmp_path):
    with pytest.raises(SystemExit, match="holds no config.yaml"):
        weight_drift.initial_state(tmp_path)
    (tmp_path / "config.yaml").write_text("data: digits\ninit: null\nbeit: {}\ntokenizer: {}\n")
    with pytest.raises(SystemExit, match="BEiT run is not measured here"):
        weight_drift.initial_state(tmp_path)
