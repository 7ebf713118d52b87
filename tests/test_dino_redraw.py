"""benchmarks/dino_redraw.py: every crop of a sample comes from its own drawing of the same
digit (docs/results.md's test of why DINO stalls on `cluttered`), reproducibly per sample."""
import sys
from pathlib import Path

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sslvit.recipes.dino import DINORunConfig
from sslvit.train.entry import run_config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import dino_redraw  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLVIT_CACHE", str(tmp_path / "cache" / "sslvit"))


def test_the_dataset_draws_again_per_sample_and_epoch_reproducibly():
    cfg = run_config(DINORunConfig, "dino", argv=["--data", "cluttered"])
    dataset = dino_redraw.redraw_training_set(True)(cfg)
    assert len(dataset) == 4500  # as many samples an epoch as the fixed train split
    crops, label, skipped = dataset[11]
    assert len(crops) == 2 + cfg.crops.local_number and crops[0].shape == (3, 32, 32) and skipped == 0
    again, label2, _ = dataset[11]
    assert label2 == label and all(torch.equal(a, b) for a, b in zip(crops, again))  # seeded per sample
    dataset.set_epoch(1)
    assert not torch.equal(dataset[11][0][0], crops[0])  # another epoch, other drawings


@pytest.mark.parametrize("keep_pose", [True, False])
def test_each_crop_is_its_own_drawing(keep_pose):
    """With views that crop nothing, each 'crop' is a whole drawing: the backgrounds (the canvas
    corners) differ between views; one drawing shared by all views would make them equal."""
    from sslvit.data import cluttered

    pool, _ = cluttered.sources("train")
    whole = lambda img: torch.from_numpy(np.array(img)).float()  # noqa: E731
    views = SimpleNamespace(global1=whole, global2=whole, local=whole, local_number=2)
    torch.manual_seed(0)
    drawings = dino_redraw.RedrawCrops(views, keep_pose)(dino_redraw.Drawings(pool[0], pool, 1.0, 32))
    corners = [d[:2, :2].reshape(-1) for d in drawings]
    assert len(drawings) == 4
    assert all(not torch.equal(corners[i], corners[j]) for i in range(4) for j in range(i))


def test_a_set_that_is_not_cluttered_is_refused():
    cfg = run_config(DINORunConfig, "dino", argv=["--data", "digits"])
    with pytest.raises(SystemExit, match="pass a cluttered spec"):
        dino_redraw.redraw_training_set(True)(cfg)
