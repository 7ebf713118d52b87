"""benchmarks/quality.py's table: each cell is the mean +- half the range over the seeds that have the row."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import quality  # noqa: E402


def test_merge_averages_each_row_over_the_files_that_have_it(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps([{"mae": {"knn_cls": 10.0, "finetune": 90.0}, "raw pixels": {"knn_cls": 67.0}}]))
    b.write_text(json.dumps([{"mae": {"knn_cls": 14.0, "finetune": 93.0}},
                             {"dino": {"knn_cls": 12.0}, "raw pixels": {"knn_cls": 67.0}}]))
    lines = quality.table(quality.merged([str(a), str(b)])).splitlines()
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:]}
    assert rows["mae"][0] == f"{(10 + 14) / 2:.1f} +- {(14 - 10) / 2:.1f}"
    assert rows["mae"][5] == f"{(90 + 93) / 2:.1f} +- {(93 - 90) / 2:.1f}"
    assert rows["dino"][0] == "12.0" and rows["dino"][5] == ""  # one seed: the figure alone; absent: empty
    assert rows["raw pixels"][0] == "67.0 +- 0.0"
    assert list(rows) == ["mae", "dino", "raw pixels"]


def test_merge_names_a_missing_file(tmp_path):
    with pytest.raises(SystemExit, match="is not a file"):
        quality.merged([str(tmp_path / "nope.json")])


def fake_pretraining(monkeypatch) -> list:
    """quality.sh replaced by a pretraining that writes its backbone and takes 60 s; -> its calls."""
    calls = []

    def fake_sh(args, log):
        calls.append(args)
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "backbone.safetensors").write_bytes(b"")
        return 60.0

    monkeypatch.setattr(quality, "sh", fake_sh)
    return calls


def test_a_started_objective_inits_from_its_start_and_counts_both_walls(tmp_path, monkeypatch):
    calls = fake_pretraining(monkeypatch)
    args = type("Args", (), {"data": "cluttered", "extra": "--train.epochs 2"})()
    root = tmp_path / "seed3"
    with pytest.raises(SystemExit, match="list mae before dino@mae"):
        quality.pretrain(args, root / "dino@mae", 3)
    assert quality.pretrain(args, root / "mae", 3) == 1.0
    assert quality.pretrain(args, root / "dino@mae", 3) == 2.0  # its own minute and its start's
    assert calls[-1][1] == "pretrain/dino.py"
    assert calls[-1][calls[-1].index("--init") + 1] == str(root / "mae" / "backbone.safetensors")
    assert calls[-1][-2:] == ["--train.epochs", "2"] and "--init" not in calls[0]
    assert quality.pretrain(args, root / "dino@mae", 3) == 2.0 and len(calls) == 2  # kept, not retrained


def test_a_start_of_named_epochs_is_trained_first_for_that_many(tmp_path, monkeypatch):
    calls = fake_pretraining(monkeypatch)
    args = type("Args", (), {"data": "cluttered", "extra": ""})()
    root = tmp_path / "seed0"
    assert quality.pretrain(args, root / "dino@mae33", 0) == 2.0
    mae, dino = calls
    assert mae[1] == "pretrain/mae.py" and mae[-2:] == ["--train.epochs", "33"] and "--init" not in mae
    assert mae[mae.index("--out") + 1] == str(root / "mae33")
    assert dino[1] == "pretrain/dino.py" and "--train.epochs" not in dino
    assert dino[dino.index("--init") + 1] == str(root / "mae33" / "backbone.safetensors")
    assert quality.split_epochs("mae_dino") == ("mae_dino", [])


@pytest.mark.parametrize("passes", [0, 10])
def test_linear_aug_passes_reach_every_linear_probe_pixels_included(tmp_path, monkeypatch, passes):
    import json

    probes = []

    def fake_sh(args, log):
        if args[1] == "probes/linear.py":
            probes.append(args)
            run = Path(args[args.index("--ckpt") + 1])
            name = "linear_pixels.json" if args[args.index("--recipe") + 1] == "pixels" else "linear.json"
            (run / name).write_text(json.dumps({"best": {"val_top1": 50.0}}))
        return 0.0

    monkeypatch.setattr(quality, "sh", fake_sh)
    monkeypatch.setattr(quality, "pretrain", lambda args, run, seed: run.mkdir(parents=True) or 1.0)
    monkeypatch.setattr(quality, "knn", lambda run, pool, baselines: {"pretrained": 1.0, "random_init": 1.0,
                                                                       "raw_pixels": 1.0})
    monkeypatch.setattr(quality, "random_init_run", lambda folder, run, seed: folder.mkdir(parents=True) or folder)
    monkeypatch.setattr(quality, "shape_key", lambda run: "x")
    args = type("Args", (), {"objectives": "mae", "out": str(tmp_path), "finetune_epochs": 0,
                             "ceiling_epochs": 0, "linear_aug_passes": passes})()
    quality.one_seed(args, 0)
    recipes = sorted(p[p.index("--recipe") + 1] for p in probes)
    assert recipes == ["avg", "avg", "blocks", "blocks", "dino_avg", "dino_avg", "pixels"]
    for p in probes:
        if passes:
            assert p[p.index("--aug_passes") + 1] == "10" and p[p.index("--crop_scale") + 1] == "[0.5, 1.0]"
        else:
            assert "--aug_passes" not in p
