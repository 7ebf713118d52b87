"""``train.precision``: explicit values are final; ``auto`` is bf16 on GPUs (fp16 without bf16),
fp32 on CPUs without native bf16 (or with ``SSLVIT_CPU_BF16=0``), and on CPUs with it the faster
of the two for the run's own step, kept in the checkpoint so ``--resume`` does not flip it."""
import json
import os
from pathlib import Path

import pytest
import torch

import sslvit.train.precision as precision
from sslvit.recipes.dino import DINORunConfig
from sslvit.recipes.mae import MAERunConfig
from sslvit.train.checkpoint import latest_checkpoint, read_meta
from sslvit.train.entry import run_pretraining
from sslvit.train.precision import resolve_precision, time_step_precisions
from tests.test_dino_run import TINY as DINO_TINY
from tests.test_end_to_end import TINY


def _never():
    raise AssertionError("nothing should be timed here")


@pytest.fixture
def native_bf16(monkeypatch):
    monkeypatch.delenv("SSLVIT_CPU_BF16", raising=False)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(precision, "torch_native_bf16", lambda: True)
    monkeypatch.setattr(precision, "accelerator_kind", lambda: "cpu")


@pytest.mark.parametrize("requested, expected", [("fp32", "no"), ("no", "no"), ("bf16", "bf16"), ("fp16", "fp16")])
def test_an_explicit_precision_is_final_and_nothing_is_timed(requested, expected, native_bf16):
    assert resolve_precision(requested, _never).precision == expected


@pytest.mark.parametrize("fp32_s, bf16_s, expected", [
    (1.0, 0.5, "bf16"),  # bf16 twice as fast: the big-matmul case (ViT-S/16 at 224 px)
    (1.0, 1.5, "no"),  # bf16 slower: the small-matmul case (the 16 px ViT-Ti/4 demo model)
    (1.0, 0.95, "no"),  # within the margin: fp32, the more exact, keeps it
])
def test_auto_on_a_native_bf16_cpu_takes_the_faster_precision(fp32_s, bf16_s, expected, native_bf16):
    choice = resolve_precision("auto", lambda: {"fp32": fp32_s, "bf16": bf16_s})
    assert choice.precision == expected and choice.timings == {"fp32": fp32_s, "bf16": bf16_s}
    assert "measured" in choice.reason and f"{fp32_s:.3f}" in choice.reason


def test_the_switch_makes_auto_resolve_as_on_a_cpu_without_native_bf16(native_bf16, monkeypatch):
    monkeypatch.setenv("SSLVIT_CPU_BF16", "0")
    choice = resolve_precision("auto", _never)
    assert choice.precision == "no" and "SSLVIT_CPU_BF16=0" in choice.reason
    monkeypatch.setattr(precision, "torch_native_bf16", lambda: False)
    monkeypatch.delenv("SSLVIT_CPU_BF16")
    assert resolve_precision("auto", _never).precision == "no"


@pytest.mark.parametrize("bf16_ok, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_a_gpu_is_bf16_or_fp16_without_timing(bf16_ok, expected, monkeypatch):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(precision, "accelerator_kind", lambda: "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    assert resolve_precision("auto", _never).precision == expected


def test_accelerates_mixed_precision_flag_wins_over_auto(native_bf16, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert resolve_precision("auto", _never).precision == "bf16"


@pytest.mark.parametrize("cls, name, tiny", [(MAERunConfig, "mae", TINY), (DINORunConfig, "dino", DINO_TINY)])
def test_timing_runs_the_real_step_and_leaves_objective_and_rng_untouched(cls, name, tiny, image_folder, tmp_path):
    from sslvit.train.entry import training_set
    from sslvit.config import build_config

    cfg = build_config(cls, [*tiny, "--data", str(image_folder), "--out", str(tmp_path / "r")])
    objective = cfg.build_objective()
    before = {k: v.clone() for k, v in objective.state_dict().items()}
    rng = torch.get_rng_state()
    collate = cfg.collate_fn() if hasattr(cfg, "collate_fn") else None
    batch = precision.timing_batch(training_set(cfg), cfg.train.batch_size, collate)
    timings = time_step_precisions(objective, batch)
    assert set(timings) == {"fp32", "bf16"} and all(t > 0 for t in timings.values())
    assert torch.equal(torch.get_rng_state(), rng)
    after = objective.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in objective.parameters())


def _records(run):
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def test_auto_prints_and_logs_its_choice_keeps_it_on_resume_and_explicit_stays_final(
        native_bf16, monkeypatch, image_folder, tmp_path, fresh_accelerate, capsys):
    calls = []

    def fake_timing(objective, batch):
        calls.append(batch.shape)
        return {"fp32": 1.0, "bf16": 0.4} if len(calls) == 1 else {"fp32": 0.4, "bf16": 1.0}

    monkeypatch.setattr(precision, "time_step_precisions", fake_timing)
    auto = [a for a in TINY if a not in ("--train.precision", "fp32")]
    argv = [*auto, "--data", str(image_folder), "--out", str(tmp_path / "run"), "--train.epochs", "1"]
    run = run_pretraining(MAERunConfig, "mae", argv=argv)
    first = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Run directory"))
    assert "precision bf16 (measured on this CPU: bf16 2.50x the speed of fp32" in first, first
    assert calls == [torch.Size([16, 3, 16, 16])]  # the run's own batch of the training data
    rec = next(r for r in _records(run) if "precision" in r)
    assert rec["precision"] == "bf16" and rec["precision_timings_s"] == {"fp32": 1.0, "bf16": 0.4}
    assert read_meta(latest_checkpoint(run))["precision"] == "bf16"

    fresh_accelerate()  # resume, with timings that would now pick fp32: the run keeps bf16
    run_pretraining(MAERunConfig, "mae", argv=[*argv, "--train.epochs", "2", "--resume"])
    assert "precision bf16 (kept from the checkpoint being resumed)" in capsys.readouterr().out
    assert len(calls) == 1 and read_meta(latest_checkpoint(run))["precision"] == "bf16"

    fresh_accelerate()  # an explicit precision on resume is final
    run_pretraining(MAERunConfig, "mae", argv=[*argv, "--train.epochs", "3", "--resume", "--train.precision", "fp32"])
    assert "precision fp32 (as configured)" in capsys.readouterr().out
    assert read_meta(latest_checkpoint(run))["precision"] == "no"


def test_the_timings_are_cached_per_setup_so_a_rerun_times_nothing(native_bf16, monkeypatch, image_folder, tmp_path):
    from sslvit.config import build_config
    from sslvit.train.entry import training_set

    calls = []
    monkeypatch.setattr(precision, "time_step_precisions",
                        lambda objective, batch: calls.append(1) or {"fp32": 1.0, "bf16": 0.4})
    cfg = build_config(MAERunConfig, [*TINY, "--data", str(image_folder), "--out", str(tmp_path / "r")])
    data, objective = training_set(cfg), cfg.build_objective()
    first = precision.measure_step(objective, data, 16)
    again = precision.measure_step(objective, data, 16)
    other_batch = precision.measure_step(objective, data, 8)
    assert calls == [1, 1] and first == {"fp32": 1.0, "bf16": 0.4} and again == {**first, "cached": True}
    assert other_batch == first  # timed afresh for its own shapes
    choice = resolve_precision("auto", lambda: precision.measure_step(objective, data, 16))
    assert choice.precision == "bf16" and "cached from an earlier run" in choice.reason
    assert precision.cache_file().parent == Path(os.environ["SSLVIT_CACHE"])


def test_auto_times_a_run_on_shards_on_the_streams_first_samples(native_bf16, monkeypatch, image_folder, tmp_path,
                                                                  fresh_accelerate, capsys):
    """A shard set is a stream: the timing batch is its first good samples (indexing it raised, and
    every ``auto`` run on shards stopped before its first step on a CPU with native bf16)."""
    from sslvit.config import build_config
    from sslvit.data.shards import write_shards
    from sslvit.train.entry import training_set

    write_shards(image_folder, tmp_path / "shards", max_count=10, progress=False)
    auto = [a for a in TINY if a not in ("--train.precision", "fp32")]
    argv = [*auto, "--data", str(tmp_path / "shards"), "--out", str(tmp_path / "run"), "--train.epochs", "1"]
    stream = training_set(build_config(MAERunConfig, argv))
    batch = precision.timing_batch(stream, 4)
    first = torch.stack([s[0] for s in stream if isinstance(s, tuple)][:4])
    assert torch.equal(batch, first)

    calls = []
    monkeypatch.setattr(precision, "time_step_precisions",
                        lambda objective, b: calls.append(b.shape) or {"fp32": 1.0, "bf16": 0.4})
    run_pretraining(MAERunConfig, "mae", argv=argv)
    assert calls == [torch.Size([16, 3, 16, 16])]
    assert "precision bf16 (measured on this CPU" in capsys.readouterr().out
    assert (tmp_path / "run" / "backbone.safetensors").is_file()


def test_auto_times_a_composite_whose_batch_is_a_dict_of_its_parts_batches(native_bf16, monkeypatch, image_folder,
                                                                           tmp_path, fresh_accelerate, capsys):
    """MAE + DINO's batch is {objective: its batch}: the cache key reads each part's shapes (it asked the
    dict for a shape, and every ``auto`` run of ``pretrain/mae_dino.py`` stopped on a CPU with native bf16)."""
    from sslvit.recipes.mae_dino import MAEDINORunConfig
    from tests.test_composite import MAE_DINO

    calls = []
    monkeypatch.setattr(precision, "time_step_precisions",
                        lambda objective, b: calls.append(sorted(b)) or {"fp32": 1.0, "bf16": 0.4})
    auto = [a for a in MAE_DINO if a not in ("--train.precision", "fp32")]
    run_pretraining(MAEDINORunConfig, "mae_dino", argv=[*auto, "--data", str(image_folder), "--out",
                                                        str(tmp_path / "run"), "--train.epochs", "1"])
    assert calls == [["dino", "mae"]]
    assert "precision bf16 (measured on this CPU" in capsys.readouterr().out
    key, = json.loads(precision.cache_file().read_text())
    assert key.endswith("batch [{'mae': [16, 3, 16, 16], 'dino': [[32, 3, 16, 16], [32, 3, 8, 8]]}]"), key
