import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
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
