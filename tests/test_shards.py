"""webdataset shards: the writer, the reader's split across processes and workers, bad data."""
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from sslvit.data.dataset import build_dataset
from sslvit.data.folder import DataError
from sslvit.data.shard_reader import BadSample, ShardDataset, resolve_shards
from sslvit.data.shards import INDEX_FORMAT, main as shards_main, write_shards
from sslvit.data.stream_loader import StreamLoader

REPO = Path(__file__).resolve().parents[1]


def pixel_id(img: Image.Image) -> str:
    """A sample's identity: its decoded pixels (the test images are random and PNG, so unique)."""
    return hashlib.md5(np.asarray(img).tobytes()).hexdigest()


@pytest.fixture
def split_folder(tmp_path):
    """train/ (3 classes x 15) and val/ (3 x 4) of random 12x12 PNGs."""
    rng = np.random.default_rng(1)
    root = tmp_path / "folder"
    for split, n in (("train", 15), ("val", 4)):
        for c in range(3):
            d = root / split / f"c{c}"
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray((rng.random((12, 12, 3)) * 255).astype(np.uint8)).save(d / f"{i}.png")
    return root


def _members(tar: Path) -> dict:
    with tarfile.open(tar) as t:
        return {m.name: t.extractfile(m).read() for m in t.getmembers()}


def test_writer_round_trips_counts_labels_and_bytes(split_folder, tmp_path):
    out = tmp_path / "shards"
    shards_main([str(split_folder), str(out), "--max-count", "10", "--workers", "2"])
    index = json.loads((out / "train.json").read_text())
    assert index["format"] == INDEX_FORMAT and index["num_samples"] == 45 and index["classes"] == ["c0", "c1", "c2"]
    assert [s["count"] for s in index["shards"]] == [10, 10, 10, 10, 5]
    source = {}
    for c, cls in enumerate(index["classes"]):
        for p in (split_folder / "train" / cls).iterdir():
            source[p.read_bytes()] = c
    seen = {}
    for entry in index["shards"]:
        members = _members(out / entry["name"])
        assert entry["bytes"] == (out / entry["name"]).stat().st_size
        keys = {name.split(".")[0] for name in members}
        assert len(keys) == entry["count"]  # the index matches the shard
        for key in keys:
            seen[members[f"{key}.png"]] = int(members[f"{key}.cls"])
    assert seen == source  # every image's bytes once, with its label
    assert json.loads((out / "val.json").read_text())["num_samples"] == 12
    assert not list(out.glob(".*"))  # no temporary or plan file left behind


def test_same_seed_same_bytes_and_another_seed_another_order(split_folder, tmp_path):
    digests = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        write_shards(split_folder / "train", tmp_path / name, val_fraction=0, seed=seed, max_count=10, progress=False)
        digests.append([hashlib.sha256((tmp_path / name / f"train-{i:06d}.tar").read_bytes()).hexdigest()
                        for i in range(5)])
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]


def test_an_interrupted_write_resumes_and_never_exposes_a_half_shard(split_folder, tmp_path, monkeypatch):
    import sslvit.data.shards as shards

    out = tmp_path / "shards"
    real = shards.write_shard
    calls = []

    def dies_on_third(plan, out_dir, max_side=None):
        calls.append(plan.name)
        if len(calls) == 3:  # half a shard on disk, then the process dies
            Path(out_dir, f".{plan.name}.123.tmp").write_bytes(b"half a tar")
            raise KeyboardInterrupt
        return real(plan, out_dir, max_side)

    monkeypatch.setattr(shards, "write_shard", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        write_shards(split_folder / "train", out, val_fraction=0, max_count=10, progress=False)
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    assert not (out / "train.json").exists()  # readers find no index, so they trust nothing yet
    with pytest.raises(DataError, match="cannot be read"):
        resolve_shards(str(out / "train.json"), "train")
    monkeypatch.setattr(shards, "write_shard", real)
    calls.clear()
    write_shards(split_folder / "train", out, val_fraction=0, max_count=10, progress=False)
    fresh = tmp_path / "fresh"
    write_shards(split_folder / "train", fresh, val_fraction=0, max_count=10, progress=False)
    for i in range(5):
        assert (out / f"train-{i:06d}.tar").read_bytes() == (fresh / f"train-{i:06d}.tar").read_bytes()
    # a different write into the same folder is refused instead of mixing two sets
    with pytest.raises(DataError, match="different write"):
        write_shards(split_folder / "train", out, val_fraction=0, max_count=7, progress=False)


def _sample_ids(dataset: ShardDataset, num_workers: int) -> list:
    loader = DataLoader(dataset, batch_size=None, num_workers=num_workers, collate_fn=lambda x: x)
    return [item[0] for item in loader if not isinstance(item, BadSample)]


def test_two_nodes_two_workers_read_every_sample_once_per_epoch(split_folder, tmp_path):
    out = tmp_path / "shards"
    # 12 shards, uneven 4/4/.../1
    write_shards(split_folder / "train", out, val_fraction=0, max_count=4, progress=False)
    urls, n, _ = resolve_shards(str(out), "train")
    expected = sorted(pixel_id(Image.open(p).convert("RGB")) for p in (split_folder / "train").rglob("*.png"))
    orders = []
    for epoch in (0, 1):
        ids = []
        for rank in (0, 1):
            ds = ShardDataset(urls, n, transform=pixel_id, shuffle=True, seed=3, rank=rank, world_size=2)
            ds.set_epoch(epoch)
            ids += _sample_ids(ds, num_workers=2)
        assert sorted(ids) == expected  # each sample exactly once across the 4 slots
        orders.append(ids)
    assert orders[0] != orders[1]  # and the order changes with the epoch


def test_every_process_takes_the_same_number_of_batches_when_counts_are_uneven(split_folder, tmp_path):
    out = tmp_path / "shards"
    write_shards(split_folder / "train", out, val_fraction=0, max_count=20, progress=False)  # 20 + 20 + 5 samples
    urls, n, _ = resolve_shards(str(out), "train")
    lengths = []
    for rank in (0, 1):
        ds = ShardDataset(urls, n, transform=lambda img: np.asarray(img).astype(np.float32), rank=rank,
                          world_size=2, seed=0)
        loader = StreamLoader(ds, batch_size=4, num_processes=2)
        for epoch in range(2):
            loader.set_epoch(epoch)
            batches = list(loader)
            assert all(b[0].shape[0] == 4 for b in batches)
            lengths.append(len(batches))
    assert lengths == [45 // 8] * 4  # rank 1 reads 5 or 20 samples and pads; rank 0 reads 25 or 40 and stops


def _broken_set(root: Path) -> dict:
    """Two shards: a corrupt JPEG, an empty image, a bad label; then a tar cut in the middle of its data."""
    root.mkdir()
    rng = np.random.default_rng(0)

    def png() -> bytes:
        buf = io.BytesIO()
        Image.fromarray((rng.random((12, 12, 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
        return buf.getvalue()

    with wds.TarWriter(str(root / "train-000000.tar"), encoder=False) as w:
        for i in range(8):
            w.write({"__key__": f"{i:04d}", "png": png(), "cls": b"1"})
        w.write({"__key__": "0100", "jpg": b"\xff\xd8\xff\xe0 this is not a jpeg", "cls": b"0"})
        w.write({"__key__": "0101", "png": b"", "cls": b"0"})
        w.write({"__key__": "0102", "png": png(), "cls": b"zero"})
    with wds.TarWriter(str(root / "train-000001.tar"), encoder=False) as w:
        for i in range(8):
            w.write({"__key__": f"{i + 10:04d}", "png": png(), "cls": b"2"})
    whole = (root / "train-000001.tar").read_bytes()
    with tarfile.open(root / "train-000001.tar") as t:
        sixth = t.getmember("0015.png")
    # cut inside the 6th sample's image: 5 whole samples are before it (members are written key by key)
    (root / "train-000001.tar").write_bytes(whole[: sixth.offset_data + sixth.size // 2])
    index = {"format": INDEX_FORMAT, "split": "train", "num_samples": 19, "classes": ["a", "b", "c"],
             "shards": [{"name": "train-000000.tar", "count": 11, "bytes": 0},
                        {"name": "train-000001.tar", "count": 8, "bytes": 0}]}
    (root / "train.json").write_text(json.dumps(index))
    return index


def test_bad_samples_are_skipped_and_counted_per_shard(tmp_path):
    _broken_set(tmp_path / "bad")
    urls, n, _ = resolve_shards(str(tmp_path / "bad"), "train")
    ds = ShardDataset(urls, n, shuffle=False)
    items = list(ds)
    good = [x for x in items if not isinstance(x, BadSample)]
    bad = Counter((Path(b.shard).name, b.kind) for b in items if isinstance(b, BadSample))
    assert len(good) == 8 + 5
    assert bad[("train-000000.tar", "corrupt image")] == 1
    assert bad[("train-000000.tar", "missing image")] == 1
    assert bad[("train-000000.tar", "bad label")] == 1
    assert bad[("train-000001.tar", "truncated or corrupt tar")] >= 1
    assert set(k for k, _ in bad) == {"train-000000.tar", "train-000001.tar"}


def test_a_run_on_broken_shards_trains_to_the_end_and_logs_the_counts(tmp_path, fresh_accelerate):
    from tests.test_end_to_end import _run

    _broken_set(tmp_path / "bad")
    ds = ShardDataset(*resolve_shards(str(tmp_path / "bad"), "train")[:2], shuffle=False)
    expected = Counter((b.shard, b.kind) for b in ds if isinstance(b, BadSample))
    run = _run(tmp_path / "run", tmp_path / "bad", ["--train.batch_size", "4", "--train.num_workers", "2"])
    epochs = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if "epoch_loss" in x]
    assert len(epochs) == 2 and all(np.isfinite(e["epoch_loss"]) for e in epochs)
    for e in epochs:
        logged = Counter({(shard, kind): n for shard, kinds in e["bad_samples"].items() for kind, n in kinds.items()})
        assert logged == expected
        assert e["skipped_images"] == sum(expected.values())
    assert (run / "backbone.safetensors").exists()


def test_the_recipes_and_the_pictures_look_at_broken_shards_warns_of_nothing_the_loop_then_counts(tmp_path):
    """The recipe reads the first samples for their size and the run picks its picture images; the
    bad samples met there were warned of, and again by the training loop, which counts and names
    them (the test above)."""
    import warnings

    from sslvit.data.sample import spread_sample
    from sslvit.data.shape import data_shape
    from sslvit.data.shard_reader import build_shard_dataset

    _broken_set(tmp_path / "bad")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        shape = data_shape(str(tmp_path / "bad"))
        pictures = spread_sample(build_shard_dataset(str(tmp_path / "bad"), "train"), 8)
    assert shape.count == resolve_shards(str(tmp_path / "bad"), "train")[1] and shape.side > 0
    assert len(pictures) == 8


def test_a_shard_set_with_no_good_sample_stops_with_one_sentence(tmp_path, fresh_accelerate):
    from tests.test_end_to_end import _run

    root = tmp_path / "allbad"
    root.mkdir()
    with wds.TarWriter(str(root / "train-000000.tar"), encoder=False) as w:
        for i in range(40):
            w.write({"__key__": f"{i:04d}", "jpg": b"garbage", "cls": b"0"})
    (root / "train.json").write_text(json.dumps({"format": INDEX_FORMAT, "num_samples": 40, "classes": ["a"],
                                                  "shards": [{"name": "train-000000.tar", "count": 40}]}))
    with pytest.raises(DataError, match="No readable sample"):
        _run(tmp_path / "run", root, ["--train.knn_every", "0"])


def test_missing_shard_empty_pattern_and_empty_folder_each_give_one_clear_error(split_folder, tmp_path):
    out = tmp_path / "shards"
    write_shards(split_folder / "train", out, val_fraction=0, max_count=10, progress=False)
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(str(out / "train-{000000..000009}.tar"), "train", 16)
    with pytest.raises(DataError, match="expands to no shards|empty"):
        build_dataset("", "train", 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        write_shards(tmp_path / "empty", tmp_path / "o", progress=False)
    with pytest.raises(DataError, match="cannot be read"):
        build_dataset(str(tmp_path / "nowhere" / "train.json"), "train", 16)
    with pytest.raises(DataError, match="val split"):
        build_dataset(str(out / "train.json"), "val", 16)


def test_a_brace_pattern_reads_the_named_shards_and_finds_its_index(split_folder, tmp_path):
    out = tmp_path / "shards"
    write_shards(split_folder / "train", out, val_fraction=0, max_count=10, progress=False)
    urls, n, classes = resolve_shards(str(out / "train-{000000..000002}.tar"), "train")
    assert len(urls) == 3 and n == 30 and classes == ["c0", "c1", "c2"]
    urls, n, _ = resolve_shards(f"pipe:cat {out}/train-{{000003..000004}}.tar", "train")
    assert n == 15 and urls[0].startswith("pipe:cat ")
    ds = ShardDataset(urls, n, shuffle=False)
    assert len([x for x in ds if not isinstance(x, BadSample)]) == 15  # read through the pipe


def test_probes_read_a_shard_folder_like_an_image_folder(split_folder, tmp_path):
    out = tmp_path / "shards"
    write_shards(split_folder, out, max_count=10, progress=False)
    train, val = build_dataset(str(out), "train", 16), build_dataset(str(out), "val", 16)
    assert train.labelled and len(train) == 45 and len(val) == 12
    labels = Counter(y for _, y, _ in val)
    assert labels == Counter({0: 4, 1: 4, 2: 4})


TWO_PROCESS_READER = """
import json, sys
from accelerate import PartialState
from sslvit.data.shard_reader import ShardDataset, resolve_shards
from sslvit.data.stream_loader import StreamLoader
from tests.test_shards import pixel_id, _sample_ids
import numpy as np
import torch

state = PartialState(cpu=True)  # without cpu=True a GPU-less machine runs two independent copies
urls, n, _ = resolve_shards(sys.argv[1], "train")
ds = ShardDataset(urls, n, transform=pixel_id, shuffle=True, seed=5)  # rank from the process group
ids = _sample_ids(ds, num_workers=2)
ds = ShardDataset(urls, n, transform=lambda img: np.asarray(img).astype(np.float32), seed=5)
loader = StreamLoader(ds, batch_size=4, num_processes=state.num_processes, num_workers=2)
batches = 0
for batch in loader:
    torch.distributed.all_reduce(batch[0].sum())  # a rank that stopped early would leave the other waiting here
    batches += 1
torch.distributed.barrier()
with open(f"{sys.argv[2]}/rank{state.process_index}.json", "w") as f:
    json.dump({"ids": ids, "batches": batches, "world": state.num_processes}, f)
"""


def test_a_real_two_process_gloo_run_splits_shards_and_never_hangs(split_folder, tmp_path):
    out = tmp_path / "shards"
    # 3 shards for 2 x 2 slots: uneven
    write_shards(split_folder / "train", out, val_fraction=0, max_count=20, progress=False)
    script = tmp_path / "reader.py"
    script.write_text(TWO_PROCESS_READER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu_2proc.yaml"),
           "--main_process_port", "29533", str(script), str(out), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    expected = sorted(pixel_id(Image.open(p).convert("RGB")) for p in (split_folder / "train").rglob("*.png"))
    assert sorted(ranks[0]["ids"] + ranks[1]["ids"]) == expected
    assert len(ranks[0]["ids"]) != len(ranks[1]["ids"])  # the counts really were uneven
    assert ranks[0]["batches"] == ranks[1]["batches"] == 45 // 8


def test_a_resumed_shard_run_reaches_the_same_weights(split_folder, tmp_path, fresh_accelerate):
    from safetensors.torch import load_file

    from tests.test_end_to_end import _run

    out = tmp_path / "shards"
    write_shards(split_folder / "train", out, val_fraction=0, max_count=10, progress=False)
    extra = ["--train.num_workers", "2", "--train.shuffle_buffer", "8"]
    straight = _run(tmp_path / "straight", out, extra)
    fresh_accelerate()
    _run(tmp_path / "resumed", out, [*extra, "--train.stop_after", "1"])
    fresh_accelerate()
    resumed = _run(tmp_path / "resumed", out, [*extra, "--resume"])
    a, b = load_file(str(straight / "backbone.safetensors")), load_file(str(resumed / "backbone.safetensors"))
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=0, atol=1e-6, err_msg=k)
    steps = [json.loads(x)["step"] for x in (resumed / "log.jsonl").read_text().splitlines() if "epoch_loss" in x]
    assert steps == [2, 4]  # 45 // 16 = 2 steps per epoch; the schedules continue at step 2


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_the_tar_member_reader_agrees_with_tarfile(tmp_path, fmt):
    from sslvit.data.shard_reader import tar_members

    rng = np.random.default_rng(0)
    names = ["a.png", "dir/" + "d" * 120 + "/b.cls", "x" * 150 + ".jpg", "c.txt"]
    if fmt == tarfile.USTAR_FORMAT:  # ustar has no long names, only a 155-byte prefix for directories
        names[1:3] = ["dir/" + "d" * 90 + "/b.cls", "p" * 60 + "/" + "x" * 90 + ".jpg"]
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w", format=fmt) as t:
        t.addfile(tarfile.TarInfo("somedir/"))  # not a regular file: skipped
        for i, name in enumerate(names):
            data = rng.bytes(int(rng.integers(0, 3000)) if i else 0)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as t:
        expected = [(m.name, t.extractfile(m).read()) for m in t.getmembers() if m.isreg()]
        last = [m for m in t.getmembers() if m.isreg()][-1]
    with open(path, "rb") as f:
        assert list(tar_members(f)) == expected
    whole = path.read_bytes()
    with pytest.raises(tarfile.ReadError):
        list(tar_members(io.BytesIO(whole[: last.offset_data + 5])))  # cut inside the last file
    with pytest.raises(tarfile.ReadError, match="checksum"):
        list(tar_members(io.BytesIO(b"\x01" * 2048)))


def test_the_probes_run_on_a_model_pretrained_on_shards(split_folder, tmp_path, fresh_accelerate):
    from sslvit.eval.knn_probe import KNNProbeConfig, run_knn_probe
    from sslvit.eval.linear_probe import LinearProbeConfig, run_linear_probe
    from tests.test_end_to_end import _run

    out = tmp_path / "shards"
    write_shards(split_folder, out, max_count=10, progress=False)
    run = _run(tmp_path / "run", out, ["--train.epochs", "1"])
    knn = run_knn_probe(KNNProbeConfig(ckpt=str(run), ks=(5,), baselines=False, num_workers=2, batch_size=8))
    assert knn["num_train"] == 45 and knn["num_val"] == 12  # --data defaults to the run's shard folder
    assert Path(knn["picture"]).is_file()
    lin = run_linear_probe(LinearProbeConfig(ckpt=str(run), epochs=2, lrs=(0.1,)))
    assert 0 <= lin["best"]["val_top1"] <= 100


class _PixelsAsFeatures(torch.nn.Module):
    """A stand-in backbone whose features are the image's pixels: a row says which sample it is."""

    def features(self, imgs, pool="cls", n_last_blocks=4):
        return imgs.flatten(1)


def test_a_streams_features_come_back_in_its_written_order_which_items_at_reads(split_folder, tmp_path):
    """Two workers interleave a stream's batches (and processes split it by shards); the features come
    back in the written order, the one ``items_at`` reads for the k-NN picture's neighbours."""
    from sslvit.data.dataset import items_at
    from sslvit.data.transforms import eval_transform
    from sslvit.eval.features import extract_features

    out = tmp_path / "shards"
    write_shards(split_folder / "train", out, val_fraction=0, max_count=4, progress=False)
    ds = build_dataset(str(out), "train", 12, transform=eval_transform(12))
    written = torch.stack([x.flatten() for x, _, _ in ds])
    feats, labels = extract_features(_PixelsAsFeatures(), ds, batch_size=8, num_workers=2)
    assert torch.equal(feats, written) and labels.tolist() == [y for _, y, _ in ds]
    interleaved = torch.cat([x.flatten(1) for x, _, _ in DataLoader(ds, batch_size=8, num_workers=2)])
    assert not torch.equal(interleaved, written)  # as the workers read it: the check has teeth
    wanted = [0, 7, 8, 30, 44]
    found = items_at(ds, wanted)
    assert all(torch.equal(found[i].flatten(), feats[i]) for i in wanted)


def test_one_reader_extracts_every_shard_whatever_the_process_group(split_folder, tmp_path):
    """Without an accelerator to split over (the online k-NN on the main process of a DDP run), a stream
    is read whole: as rank 0 of 2 it read only its own shards, half the k-NN's data."""
    from sslvit.data.transforms import eval_transform
    from sslvit.eval.features import extract_features

    out = tmp_path / "shards"
    write_shards(split_folder / "train", out, val_fraction=0, max_count=4, progress=False)
    ds = build_dataset(str(out), "train", 12, transform=eval_transform(12))
    ds.rank, ds.world_size = 0, 2  # as the process group of a two-process run sets it
    assert len([x for x, _, _ in ds]) < 45
    feats, labels = extract_features(_PixelsAsFeatures(), ds, batch_size=8)
    assert len(labels) == 45 and torch.equal(feats, torch.stack([x.flatten() for x, _, _ in ds.whole()]))


def test_resampled_mode_gives_a_full_epoch_reproducibly(split_folder, tmp_path):
    out = tmp_path / "shards"
    write_shards(split_folder / "train", out, val_fraction=0, max_count=10, progress=False)
    urls, n, _ = resolve_shards(str(out), "train")

    def epoch(seed, e):
        ds = ShardDataset(urls, n, transform=pixel_id, resampled=True, seed=seed, shuffle_buffer=4)
        loader = StreamLoader(ds, batch_size=4, num_processes=1, collate_fn=lambda items: list(zip(*items)))
        loader.set_epoch(e)
        return [x for batch in loader for x in batch[0]]

    first = epoch(0, 0)
    assert len(first) == 44 and len(set(first)) > 20  # 11 batches drawn from several shards
    assert epoch(0, 0) == first and epoch(0, 1) != first and epoch(1, 0) != first


@pytest.mark.parametrize("claim", [20, 2])  # 2x the true 10 (the epoch re-reads), and 1/5 (it skips data)
def test_wrong_counts_in_the_index_are_a_warning_naming_shards_and_true_counts(claim, split_folder, tmp_path,
                                                                               fresh_accelerate, capsys):
    """They used to run silently: 1000 claimed per shard (really 10) made an epoch re-read the data 114x."""
    from tests.test_end_to_end import _run

    out = tmp_path / "shards"
    # 45 images: 10, 10, 10, 10, 5
    write_shards(split_folder / "train", out, val_fraction=0, max_count=10, progress=False)
    index = json.loads((out / "train.json").read_text())
    true = {s["name"]: s["count"] for s in index["shards"]}
    for s in index["shards"]:
        s["count"] = claim
    index["num_samples"] = claim * len(index["shards"])
    (out / "train.json").write_text(json.dumps(index))
    run = _run(tmp_path / "run", out, ["--train.batch_size", "4", "--train.epochs", "1", "--train.knn_every", "0"])
    printed = capsys.readouterr().out
    assert "warning: the shard index's sample counts are wrong for" in printed
    assert f"train-000000.tar: {claim} in the index, 10 read" in printed
    record = next(json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if "shard_counts_wrong" in x)
    assert record["shard_counts_wrong"] == {k: [claim, n] for k, n in true.items() if k in record["shard_counts_wrong"]}
    assert len(record["shard_counts_wrong"]) >= 1


def test_a_correct_index_gives_no_count_warning(split_folder, tmp_path, fresh_accelerate, capsys):
    from tests.test_end_to_end import _run

    out = tmp_path / "shards"
    write_shards(split_folder / "train", out, val_fraction=0, max_count=10, progress=False)
    run = _run(tmp_path / "run", out, ["--train.batch_size", "4", "--train.epochs", "1", "--train.knn_every", "0"])
    assert "shard index's sample counts are wrong" not in capsys.readouterr().out
    assert "shard_counts_wrong" not in (run / "log.jsonl").read_text()


class _StopAtCall:
    """A StopRequest whose signal "arrives" at its n-th check (one per epoch start and per step)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def agreed(self, accelerator):
        import signal

        self.calls += 1
        return signal.SIGTERM if self.calls >= self.n else None


def test_a_shard_run_stopped_mid_epoch_resumes_to_the_same_weights(split_folder, tmp_path, fresh_accelerate):
    """The stream cannot seek: the resumed epoch reads and drops the batches already trained, so
    it goes on with exactly the batches an unbroken epoch would give (workers and shuffle buffer on)."""
    from safetensors.torch import load_file

    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train.checkpoint import latest_checkpoint, read_meta
    from sslvit.train.entry import run_pretraining
    from sslvit.train.stop_signals import RunStopped
    from tests.test_end_to_end import TINY

    out = tmp_path / "shards"
    write_shards(split_folder / "train", out, val_fraction=0, max_count=10, progress=False)
    argv = [*TINY, "--data", str(out), "--train.num_workers", "2", "--train.shuffle_buffer", "8", "--train.epochs", "3"]
    straight = run_pretraining(MAERunConfig, "mae", argv=[*argv, "--out", str(tmp_path / "straight")])
    fresh_accelerate()
    run = tmp_path / "stopped"
    with pytest.raises(RunStopped) as stopped:  # 2 steps an epoch: checks 1 (epoch 1), 2, 3, 4 (epoch 2), 5 = step 3
        run_pretraining(MAERunConfig, "mae", argv=[*argv, "--out", str(run)], stop=_StopAtCall(5))
    meta = read_meta(latest_checkpoint(run))
    assert (meta["step"], meta["progress"]["batches_done"]) == (3, 1) and (
        "step 3 (epoch 2, batch 1 of 2)" in str(stopped.value))
    fresh_accelerate()
    run_pretraining(MAERunConfig, "mae", argv=[*argv, "--out", str(run), "--resume"])
    a, b = load_file(str(straight / "backbone.safetensors")), load_file(str(run / "backbone.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0


def test_a_labelled_folder_is_written_with_the_val_images_reading_it_directly_holds_out(split_folder, tmp_path, capsys):
    """The folder reader and the writer hold out the same 20%: the val shards hold exactly the
    bytes of the images ``build_dataset(folder, 'val')`` holds out, the train shards the rest."""
    from sslvit.data.dataset import build_dataset

    folder, out = split_folder / "train", tmp_path / "shards"  # 3 class folders, no train/ and val/
    shards_main([str(folder), str(out), "--max-count", "4", "--workers", "1"])  # the command's own default
    held = {split: sorted(Path(p).read_bytes() for p in build_dataset(str(folder), split, 12).items)
            for split in ("train", "val")}
    assert len(held["val"]) == 9 and len(held["train"]) == 36
    for split in ("train", "val"):
        index = json.loads((out / f"{split}.json").read_text())
        written = sorted(data for s in index["shards"] for name, data in _members(out / s["name"]).items()
                         if name.endswith(".png"))
        assert written == held[split] and index["num_samples"] == len(held[split])
    assert "val: 9 samples in 3 shards, 3 classes" in capsys.readouterr().out
    shards_main([str(folder), str(tmp_path / "whole"), "--val_fraction", "0"])
    assert "train: 45 samples in 1 shard, 3 classes" in capsys.readouterr().out
    assert json.loads((tmp_path / "whole" / "train.json").read_text())["num_samples"] == 45
    assert not (tmp_path / "whole" / "val.json").exists()


def test_max_side_stores_large_images_upright_at_that_short_side_and_small_ones_as_they_are(tmp_path, capsys):
    """``--max-side N``: what a camera folder needs, since a run decodes each image at every step."""
    from PIL import Image

    src = tmp_path / "photos"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    rng = np.random.default_rng(0)
    photo = Image.fromarray((rng.random((300, 400, 3)) * 255).astype(np.uint8))
    exif = photo.getexif()
    exif[0x0112] = 6  # the camera was held upright: a viewer turns it 90 degrees
    photo.save(src / "a" / "turned.jpg", exif=exif)
    photo.save(src / "a" / "wide.png")
    photo.resize((40, 30)).save(src / "b" / "small.jpg")
    photo.resize((96, 72)).save(src / "b" / "edge.jpeg")  # short side 72: at the limit, kept
    shards_main([str(src), str(tmp_path / "out"), "--val_fraction", "0", "--max-side", "72"])
    stored = _members(tmp_path / "out" / "train-000000.tar")
    images = sorted((Image.open(io.BytesIO(data)).size, Image.open(io.BytesIO(data)).format, name[-3:])
                    for name, data in stored.items() if not name.endswith("cls"))
    # the turned photo upright (JPEG), the PNG smaller (PNG), the one at the limit and the small one as they were
    assert images == [((40, 30), "JPEG", "jpg"), ((72, 96), "JPEG", "jpg"), ((96, 72), "JPEG", "jpg"),
                      ((96, 72), "PNG", "png")]
    kept = {(src / "b" / "small.jpg").read_bytes(), (src / "b" / "edge.jpeg").read_bytes()}
    assert kept <= set(stored.values())
    assert json.loads((tmp_path / "out" / "train.json").read_text())["max_side"] == 72
    with pytest.raises(SystemExit):  # the same folder at another size is another write
        shards_main([str(src), str(tmp_path / "out"), "--val_fraction", "0", "--max-side", "64"])
    assert "of a different write" in capsys.readouterr().err


def test_a_full_disk_or_an_unreadable_image_is_one_sentence_and_leaves_no_partial_shard(split_folder, tmp_path,
                                                                                         capsys, monkeypatch):
    """Both were tracebacks, and the full disk left its half shard under a temporary name for good."""
    import errno
    import os

    import sslvit.data.shards as shards
    from tests.test_faults import _files_limited_to

    out = tmp_path / "shards"
    argv = [str(split_folder / "train"), str(out), "--val_fraction", "0", "--max-count", "10", "--workers", "1"]
    with _files_limited_to(4000), pytest.raises(SystemExit) as e:  # a shard of 10 samples is about 20 KB
        shards.main(argv)
    assert e.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == (
        f"error: Cannot write shard '{out / 'train-000000.tar'}' (File too large); lift the file-size limit that "
        "refused it (`ulimit -f`, or the file system's own), then run the same command again: it keeps the shards "
        "already written.")
    assert not [p.name for p in out.iterdir() if p.name.endswith((".tar", ".tmp"))]
    shards.main(argv)  # the same command, the limit lifted: the whole write
    assert len(list(out.glob("train-*.tar"))) == 5 and not list(out.glob(".*.tmp"))
    real = shards.stored_image
    unreadable = sorted((split_folder / "train").rglob("*.png"))[3]

    def stored(path, max_side):
        if Path(path) == unreadable:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real(path, max_side)

    monkeypatch.setattr(shards, "stored_image", stored)
    with pytest.raises(SystemExit) as e:
        shards.main([*argv[:1], str(tmp_path / "other"), *argv[2:]])
    assert e.value.code == 2 and capsys.readouterr().err.splitlines()[-1] == (
        f"error: Cannot read '{unreadable}' (Permission denied); make it readable or move it out of the folder.")
