"""``train.compile``: a compiled objective trains like the eager one (same losses within fp32's
tolerance over 20 steps), a graph that cannot compile falls back to eager with the same losses,
and an unknown backend is one sentence."""
import pytest
import torch

from sslvit.recipes.mae import MAERunConfig
from sslvit.train.entry import run_pretraining
from tests.test_equivalence import RTOL, _args, _losses, folder160  # noqa: F401  (fixture)


def _run(tmp_path, folder, name, *extra):
    return run_pretraining(MAERunConfig, "mae", argv=[*_args("mae", folder, tmp_path / name, 16), *extra])


def test_twenty_compiled_steps_give_the_eager_losses_within_fp32_tolerance(folder160, tmp_path, fresh_accelerate,
                                                                          capsys):
    eager = _losses(_run(tmp_path, folder160, "eager"))
    fresh_accelerate()
    compiled = _losses(_run(tmp_path, folder160, "compiled", "--train.compile", "inductor"))
    assert "train.compile inductor" in capsys.readouterr().out
    assert sorted(eager) == sorted(compiled) == list(range(1, 21))
    rel = {s: abs(eager[s] - compiled[s]) / abs(eager[s]) for s in eager}
    print(f"compiled vs eager: largest relative loss difference {max(rel.values()):.2e}")
    assert max(rel.values()) < RTOL


@pytest.fixture
def failing_backend():
    from torch._dynamo import register_backend

    def sslvit_test_no_compiler(gm, example_inputs):
        raise RuntimeError("no C++ compiler on this machine")

    register_backend(sslvit_test_no_compiler)
    yield "sslvit_test_no_compiler"
    torch._dynamo.reset()


def test_a_backend_that_cannot_compile_falls_back_to_eager_with_the_same_losses(folder160, tmp_path,
                                                                               fresh_accelerate, failing_backend):
    eager = _losses(_run(tmp_path, folder160, "eager"))
    fresh_accelerate()
    fallback = _losses(_run(tmp_path, folder160, "fallback", "--train.compile", failing_backend))
    assert fallback == eager  # the eager code ran, bit for bit


def test_an_unknown_backend_is_one_sentence(folder160, tmp_path, fresh_accelerate):
    with pytest.raises(ValueError, match="train.compile 'inductr' is not a torch.compile backend; use off or one of"):
        _run(tmp_path, folder160, "bad", "--train.compile", "inductr")
    assert not (tmp_path / "bad").exists()
