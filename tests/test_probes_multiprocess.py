"""The k-NN and linear probes under `accelerate launch` with 2 real gloo processes: each process
extracts its share of the features, and the result equals a 1-process probe's."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from sslvit.data.shards import write_shards
from sslvit.models import BackboneConfig, build_backbone
from sslvit.models.export import export_backbone
from tests.test_faults import main_process_files_limited_to

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A random-init ViT-Ti/4 (depth 2) exported as a run over a folder with train/ (3 x 15,
    odd so the two processes get uneven shares) and val/ (3 x 5), and the same folder as shards."""
    root = tmp_path_factory.mktemp("mp")
    rng = np.random.default_rng(2)
    for split, n in (("train", 15), ("val", 5)):
        for c in range(3):
            d = root / "folder" / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                arr = (rng.random((16, 16, 3)) * 120 + c * 60).astype(np.uint8)
                Image.fromarray(arr).save(d / f"{i}.png")
    write_shards(root / "folder", root / "shards", max_count=10, progress=False)  # 5 train shards: uneven
    cfg = BackboneConfig(size="tiny", depth=2, patch_size=4, img_size=16)
    torch.manual_seed(0)
    run = root / "run"
    run.mkdir()
    export_backbone(build_backbone(cfg), cfg, run)
    return run


def _launch(script: str, processes: int, port: int, *args, ok: bool = True) -> subprocess.CompletedProcess:
    """``probes/<script> args`` in 1 process, or in 2 under launch/cpu_2proc.yaml; with ``ok`` it must succeed."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    probe = [str(REPO / "probes" / script), *args]
    cmd = [sys.executable, *probe] if processes == 1 else \
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu_2proc.yaml"),
         "--main_process_port", str(port), *probe]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 or not ok, proc.stderr[-3000:]
    return proc


def _probe(script: str, run: Path, data: Path, processes: int, port: int, *args) -> dict:
    """Run a probe from a clean cache; -> {'report': its json, 'features': {split: (x, y)}}."""
    shutil.rmtree(run / "features", ignore_errors=True)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": str(data)}))
    proc = _launch(script, processes, port, "--ckpt", str(run), *args)
    name = "knn.json" if script == "knn.py" else "linear.json"
    features = {}
    for f in (run / "features").glob("*.safetensors"):
        state = load_file(str(f))
        features[len(state["labels"])] = (state["features"], state["labels"])  # train 45, val 15
    return {"report": json.loads((run / name).read_text()), "features": features, "stdout": proc.stdout}


def test_two_process_knn_probe_equals_one_process_on_a_folder(run_dir):
    args = ("--baselines", "false", "--picture_queries", "0", "--ks", "[5,10]")
    one = _probe("knn.py", run_dir, run_dir.parent / "folder", 1, 0, *args)
    two = _probe("knn.py", run_dir, run_dir.parent / "folder", 2, 29561, *args)
    assert sorted(one["features"]) == sorted(two["features"]) == [15, 45]
    for n, (x, y) in one["features"].items():
        x2, y2 = two["features"][n]
        assert torch.equal(y, y2)  # the same samples in the same order
        torch.testing.assert_close(x2, x, rtol=1e-5, atol=1e-6)
    assert one["report"]["results"] == two["report"]["results"]
    assert one["report"]["retrieval"] == two["report"]["retrieval"]
    assert two["stdout"].count("k-NN (45 train / 15 val") == 1  # one table, from the main process


def test_two_process_knn_probe_on_shards_equals_one_process_with_baselines_and_picture(run_dir):
    """Split by shards, the features come back in the stream's written order, as one process reads
    it; the main process scores raw pixels on every shard and finds the picture's neighbours (it read
    only its own shards: half the raw pixels, and a KeyError for the picture)."""
    args = ("--baselines", "true", "--picture_queries", "3", "--ks", "[5]")
    one = _probe("knn.py", run_dir, run_dir.parent / "shards", 1, 0, *args)
    two = _probe("knn.py", run_dir, run_dir.parent / "shards", 2, 29562, *args)
    assert sorted(one["features"]) == sorted(two["features"]) == [15, 45]
    for n, (x, y) in one["features"].items():
        x2, y2 = two["features"][n]
        assert torch.equal(y, y2)  # the same samples in the same order
        torch.testing.assert_close(x2, x, rtol=1e-5, atol=1e-6)
    assert one["report"]["results"] == two["report"]["results"]
    assert two["report"]["num_train"] == 45 and (run_dir / "knn_neighbours.png").is_file()


def test_two_process_linear_probe_equals_one_process(run_dir):
    args = ("--epochs", "5", "--lrs", "[0.01,0.1]", "--batch_size", "16", "--baselines", "true")
    one = _probe("linear.py", run_dir, run_dir.parent / "folder", 1, 0, *args)
    two = _probe("linear.py", run_dir, run_dir.parent / "folder", 2, 29563, *args)
    for a, b in zip(one["report"]["grid"], two["report"]["grid"]):
        assert a["val_top1"] == pytest.approx(b["val_top1"]) and a["holdout_top1"] == pytest.approx(b["holdout_top1"])
    assert set(two["report"]["baselines"]) == {"random_init", "raw_pixels"}  # the random init split over both too
    for name, a in one["report"]["baselines"].items():
        b = two["report"]["baselines"][name]
        assert a["val_top1"] == pytest.approx(b["val_top1"]) and a["holdout_top1"] == pytest.approx(b["holdout_top1"])


def test_two_process_probe_from_a_weights_file_is_one_process_group(run_dir, tmp_path):
    """``--weights FILE`` is read before the probe's Accelerator exists: accelerate's process state built
    there without the CPU flag made the two processes two probes, each printing its own table."""
    weights = tmp_path / "elsewhere.safetensors"
    shutil.copy(run_dir / "backbone.safetensors", weights)
    proc = _launch("knn.py", 2, 29566, "--weights", str(weights), "--data", str(run_dir.parent / "folder"),
                   "--baselines", "false", "--picture_queries", "0", "--ks", "[5]")
    assert proc.stdout.count(f"--weights {weights}:") == 1
    assert proc.stdout.count("k-NN (45 train / 15 val") == 1


def test_a_weights_file_the_main_process_cannot_import_stops_both_with_their_sentences(run_dir, tmp_path):
    """The main process imports ``--weights`` while the other waits at a barrier; its refusal left the
    other there until gloo broke the connection, and it printed that traceback."""
    from safetensors.torch import save_file

    junk = tmp_path / "junk.safetensors"
    save_file({"w": torch.zeros(2)}, str(junk))
    done = _launch("knn.py", 2, 29568, "--weights", str(junk), "--data", str(run_dir.parent / "folder"), ok=False)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and f"error: --weights {junk}: '{junk}' matches none of the layouts" in out, out[-3000:]
    assert f"error: The main process could not make the backbone of --weights {junk}" in out
    assert "[rank1]: Traceback" not in out


@pytest.mark.parametrize("script, processes, port, args", [
    ("knn.py", 2, 29569, ["--baselines", "false", "--ks", "[5]"]),
    ("linear.py", 1, 0, ["--baselines", "false", "--epochs", "2"]),
    ("finetune.py", 1, 0, ["--epochs", "1"]),
])
def test_a_probe_whose_results_the_disk_refuses_ends_with_a_sentence_and_no_partial_file(
        script, processes, port, args, run_dir, tmp_path):
    """The features cache, the picture, the results and the fine-tuned weights meet a full disk (a
    file-size limit on the main process): the cache is a warning, the rest one sentence, the same on
    every process. The cache's SafetensorError and the results' OSError were tracebacks on the main process,
    and the other waited at a barrier until gloo broke it."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("features", "knn*", "linear*", "finetune_*"))
    (run / "config.yaml").write_text(yaml.safe_dump({"data": str(run_dir.parent / "folder")}))
    env = main_process_files_limited_to(300, tmp_path / "inject", launched=processes > 1)  # as on a full disk
    probe = [str(REPO / "probes" / script), "--ckpt", str(run), *args]
    cmd = [sys.executable, *probe] if processes == 1 else \
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu_2proc.yaml"),
         "--main_process_port", str(port), *probe]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    folder = run / "finetune_full" if script == "finetune.py" else run
    fix = "copy the run to a disk you can write to and pass --ckpt with the copy."  # EFBIG: no space to free
    lines = [x for x in out.splitlines() if x.startswith("error: ")]
    main = sorted(set(x for x in lines if "File too large" in x))
    assert done.returncode != 0 and len(main) == 1, out
    assert main[0].startswith(f"error: Cannot write the probe's results into '{folder}' (") and main[0].endswith(fix)
    if script != "finetune.py":
        assert f"warning: the features could not be cached in '{run / 'features'}'" in out
    if processes == 2:  # the other process carries the main one's sentence, if the launcher lets it print
        assert set(lines) == set(main) and "[rank1]: Traceback" not in out
    assert "Traceback" not in out if processes == 1 else "[rank0]: Traceback" not in out
    if script == "finetune.py":
        assert not folder.exists()  # the folder the fine-tune made for its files goes with them
    else:
        assert not {p.name for p in folder.iterdir()} & {"knn.json", "linear.json"}
    assert not [p for p in run.rglob("*") if p.name.startswith(".tmp_")]  # no partial file under any name
