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
    assert rows["mae"][4] == f"{(90 + 93) / 2:.1f} +- {(93 - 90) / 2:.1f}"
    assert rows["dino"][0] == "12.0" and rows["dino"][4] == ""  # one seed: the figure alone; absent: empty
    assert rows["raw pixels"][0] == "67.0 +- 0.0"
    assert list(rows) == ["mae", "dino", "raw pixels"]


def test_merge_names_a_missing_file(tmp_path):
    with pytest.raises(SystemExit, match="is not a file"):
        quality.merged([str(tmp_path / "nope.json")])


def test_a_started_objective_inits_from_its_start_and_counts_both_walls(tmp_path, monkeypatch):
    calls = []

    def fake_sh(args, log):  # a pretraining that writes its backbone and took 60 s
        calls.append(args)
        out = Path(args[args.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "backbone.safetensors").write_bytes(b"")
        return 60.0

    monkeypatch.setattr(quality, "sh", fake_sh)
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
