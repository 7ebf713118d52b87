import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory):
    """One cache folder for the session: the embedded sets are built once, not once a test."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _seed_and_threads(_session_cache, monkeypatch):
    torch.manual_seed(0)
    # no precision timing carries over from another test or from the user's own runs
    monkeypatch.setenv("SSLVIT_CACHE", str(_session_cache))
    (_session_cache / "precision.json").unlink(missing_ok=True)
    yield


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState, PartialState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()


@pytest.fixture
def fresh_accelerate():
    """accelerate keeps process-wide singletons; reset them so each run starts clean.
    Yields the reset, for tests that run several trainings in a row."""
    _reset_accelerate()
    yield _reset_accelerate
    _reset_accelerate()


@pytest.fixture
def image_folder(tmp_path):
    """60 random 16x16 PNGs in 3 class folders, brighter per class: pretraining reads the 48 of the
    'train' split (the probes hold out 12), 3 steps of 16 an epoch."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(20):
            arr = (rng.random((16, 16, 3)) * 80 + c * 80).astype(np.uint8)
            Image.fromarray(arr).save(root / f"class{c}" / f"{i}.png")
    return root
