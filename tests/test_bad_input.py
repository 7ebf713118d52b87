"""Bad or unusual input: nothing silently wrong. Each case failed (or was silent) before its fix."""
import io
import shutil

import numpy as np
import pytest
from PIL import Image
from safetensors import SafetensorError

from sslvit.config import ConfigError
from sslvit.data.folder import DataError, load_rgb
from sslvit.data.shard_reader import decode_sample


def _exif_rotated_jpeg(path):
    """A 20 wide x 10 high JPEG, left half black, right half white, tagged 'rotate 90 CW to view'
    (EXIF orientation 6): a viewer shows it 10 wide x 20 high, black on top."""
    arr = np.zeros((10, 20, 3), np.uint8)
    arr[:, 10:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(path, exif=exif, quality=95)
    return path.read_bytes()


def _both_readers(path):
    """The image as the folder reader and as the shard reader see it."""
    img, _, problem = decode_sample({"png" if path.suffix == ".png" else "jpg": path.read_bytes()})
    assert problem is None
    return [load_rgb(path), img]


def test_exif_orientation_is_applied_by_every_reader(tmp_path):
    _exif_rotated_jpeg(tmp_path / "portrait.jpg")
    for img in _both_readers(tmp_path / "portrait.jpg"):
        arr = np.asarray(img)
        assert img.size == (10, 20)  # upright: 10 wide, 20 high
        assert arr[:8].mean() < 30 and arr[12:].mean() > 225  # black on top, as the viewer shows it


@pytest.mark.parametrize("make, expected", [
    # 16-bit grey ramp 0..65535 -> 0..255 (convert("RGB") clipped 99.6% of it to 255)
    (lambda: Image.fromarray((np.arange(4096).reshape(16, 256) * 16).astype(np.uint16)),
     lambda: np.rint(np.arange(4096).reshape(16, 256) * 16 * 255 / 65535)),
    # float image in [0, 1] -> 0..255
    (lambda: Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)),
     lambda: np.rint(np.linspace(0, 1, 64).reshape(8, 8) * 255)),
])
def test_16_bit_and_float_images_are_scaled_to_8_bit(make, expected, tmp_path):
    path = tmp_path / "wide.tiff"
    make().save(path)
    buf = io.BytesIO()
    make().save(buf, format="TIFF")
    img_shard, _, _ = decode_sample({"tiff": buf.getvalue()})
    for img in (load_rgb(path), img_shard):
        arr = np.asarray(img).astype(np.float64)
        assert img.mode == "RGB" and np.abs(arr[..., 0] - expected()).max() <= 1


def test_a_16_bit_png_keeps_its_tones(tmp_path):
    ramp = (np.arange(4096).reshape(16, 256) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    for img in _both_readers(tmp_path / "ramp.png"):
        arr = np.asarray(img)[..., 0].astype(np.float64)
        assert np.abs(arr - ramp.astype(np.float64) * 255 / 65535).max() <= 1


def test_a_run_whose_every_step_is_skipped_is_an_error_not_done_and_exports_nothing(tmp_path, image_folder,
                                                                                   fresh_accelerate, monkeypatch):
    """A loss that is NaN at every step (as mask ratio 0 gave: 0 / 0 masked patches) within fewer
    steps than train.max_bad_steps: the run used to print Done and export an untrained backbone."""
    import sslvit.objectives.mae as mae
    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train.entry import run_pretraining
    from sslvit.train.loop import TrainingDiverged
    from tests.test_end_to_end import TINY

    monkeypatch.setattr(mae, "mae_loss", lambda pred, target, mask, norm: (pred * float("nan")).mean())
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"Every step of the run so far \(\d+ up to epoch 1\) was skipped"):
        run_pretraining(MAERunConfig, "mae", argv=[*TINY, "--data", str(image_folder), "--out", str(run)])
    assert not (run / "backbone.safetensors").exists() and not (run / "checkpoints").exists()


def _pngs(folder, n, size=16):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(folder)))
    for i in range(n):
        Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)).save(folder / f"{i}.png")


def test_pretraining_never_reads_the_images_the_probes_score(tmp_path):
    """A folder with train/ and val/: pretraining used to scan the root (44 images, val included)."""
    from sslvit.config import build_config
    from sslvit.data.dataset import build_dataset
    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train.entry import training_set
    from tests.test_end_to_end import TINY

    split = tmp_path / "split"
    for part, n in (("train", 15), ("val", 7)):
        for c in ("a", "b"):
            _pngs(split / part / c, n)
    flat = tmp_path / "flat"
    for c in ("a", "b"):
        _pngs(flat / c, 25)
    for root, n_train in ((split, 30), (flat, 40)):
        cfg = build_config(MAERunConfig, [*TINY, "--data", str(root), "--out", str(tmp_path / "r")])
        train = training_set(cfg)
        probe_val = build_dataset(str(root), "val", 16)
        assert len(train) == n_train
        assert not set(map(str, train.items)) & set(map(str, probe_val.items))


def test_a_second_run_on_the_same_out_is_refused_and_a_dead_runs_lock_is_not_stale(tmp_path, image_folder,
                                                                                  fresh_accelerate):
    """Two runs on one --out used to interleave log.jsonl and replace each other's checkpoints."""
    import subprocess
    import sys

    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train.entry import run_pretraining
    from tests.test_end_to_end import TINY

    run = tmp_path / "run"
    holder = subprocess.Popen(  # another run holding the lock, as a live pretraining holds it
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from sslvit.train.run_lock import _acquire; "
         "h = _acquire(Path(sys.argv[1])); print('locked', flush=True); time.sleep(600)", str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        argv = [*TINY, "--data", str(image_folder), "--out", str(run), "--train.epochs", "1"]
        with pytest.raises(FileExistsError, match=rf"'{run}' is in use by another run \(process {holder.pid}\); wait"):
            run_pretraining(MAERunConfig, "mae", argv=argv)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing of the refused run was written
    finally:
        holder.kill()
        holder.wait()
    fresh_accelerate()  # the holder died without releasing: its lock went with it
    run_pretraining(MAERunConfig, "mae", argv=argv)
    assert (run / "backbone.safetensors").is_file()


@pytest.fixture
def tiny_backbone(tmp_path):
    from sslvit.models import BackboneConfig, build_backbone
    from sslvit.models.export import export_backbone

    cfg = BackboneConfig(size="tiny", depth=1, patch_size=4, img_size=16)
    export_backbone(build_backbone(cfg), cfg, tmp_path)
    return tmp_path


@pytest.mark.parametrize("probe, size, words", [
    ("finetune", 0, "--img_size 0 is not a positive multiple of the patch size 4; use 4."),  # was: the pretraining size
    ("attention", 0, "--img_size 0 is not a positive multiple of the patch size 4; use 4."),
    ("attention", 18, "--img_size 18 is not a positive multiple of the patch size 4; use 16 or 20."),  # was: 16
    ("finetune", 18, "use 16 or 20."),
])
def test_a_probe_image_size_the_patch_does_not_divide_is_refused_naming_the_nearest(probe, size, words, tiny_backbone):
    from sslvit.eval.attention_probe import AttentionConfig, run_attention
    from sslvit.eval.finetune import FinetuneConfig, run_finetune

    cfg, run = ((FinetuneConfig, run_finetune) if probe == "finetune" else (AttentionConfig, run_attention))
    with pytest.raises(ValueError) as err:
        run(cfg(ckpt=str(tiny_backbone), data="digits", img_size=size))
    assert str(err.value) == words or str(err.value).endswith(words)


@pytest.mark.parametrize("probe", ["knn", "linear", "finetune"])
def test_a_probe_on_images_of_fewer_than_two_classes_is_refused(probe, tiny_backbone, tmp_path_factory,
                                                                 fresh_accelerate):
    """A folder whose images sit in one sub-folder (``~/my_images/all/*.jpg``) is one class, and every
    probe read 100% on it (k-NN, linear, fine-tuning, and their baselines) until 2026-12-07."""
    from sslvit.data.shards import write_shards
    from sslvit.eval.finetune import FinetuneConfig, run_finetune
    from sslvit.eval.knn_probe import KNNProbeConfig, run_knn_probe
    from sslvit.eval.linear_probe import LinearProbeConfig, run_linear_probe

    root = tmp_path_factory.mktemp("classes")
    for d in (root / "flat", root / "one" / "all"):
        d.mkdir(parents=True)
        for i in range(20):
            Image.fromarray(np.full((16, 16, 3), i * 10, np.uint8)).save(d / f"{i}.png")
    write_shards(root / "one", root / "one_shards", progress=False)
    cfg, run = {"knn": (KNNProbeConfig, run_knn_probe), "linear": (LinearProbeConfig, run_linear_probe),
                "finetune": (FinetuneConfig, run_finetune)}[probe]
    with pytest.raises(DataError, match=r"needs labels, and '.*flat' has none; pass --data with a folder"):
        run(cfg(ckpt=str(tiny_backbone), data=str(root / "flat")))
    for one in (root / "one", root / "one_shards"):
        with pytest.raises(DataError, match=rf"needs at least two classes, and '{one}' has one"):
            run(cfg(ckpt=str(tiny_backbone), data=str(one)))
    assert not [p.name for p in tiny_backbone.iterdir() if p.suffix == ".json" and p.name != "backbone.json"]


def test_attention_with_no_images_is_one_sentence(tiny_backbone):
    from sslvit.eval.attention_probe import AttentionConfig, run_attention

    with pytest.raises(ValueError, match=r"--num_images 0 asks for no picture; use 1 or more"):
        run_attention(AttentionConfig(ckpt=str(tiny_backbone), data="digits", num_images=0))
    assert not (tiny_backbone / "attention.png").exists()


def test_a_truncated_checkpoint_is_named_and_the_one_before_resumes(tmp_path, image_folder, fresh_accelerate, capsys):
    """A truncated model.safetensors used to end --resume with SafetensorError: incomplete metadata."""
    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train.checkpoint import CheckpointError
    from sslvit.train.entry import run_pretraining
    from tests.test_end_to_end import TINY

    run = tmp_path / "run"
    argv = [*TINY, "--data", str(image_folder), "--out", str(run), "--train.epochs", "2", "--train.save_every", "1"]
    run_pretraining(MAERunConfig, "mae", argv=argv)
    newest = run / "checkpoints" / "epoch_0002" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    capsys.readouterr()
    fresh_accelerate()
    run_pretraining(MAERunConfig, "mae", argv=[*argv, "--resume"])
    out = capsys.readouterr().out
    assert f"warning: checkpoint '{newest.parent}' (model.safetensors: " in out and "is damaged" in out
    assert "Resuming from" in out and "epoch_0001 (epoch 1," in out
    for ckpt in (run / "checkpoints").glob("epoch_*"):  # now every one is damaged
        f = ckpt / "model.safetensors"
        f.write_bytes(f.read_bytes()[:100])
    fresh_accelerate()
    with pytest.raises(CheckpointError, match=r"Every checkpoint in '.*checkpoints' is damaged, the newest '"):
        run_pretraining(MAERunConfig, "mae", argv=[*argv, "--resume"])


def _exported(root, size):
    from sslvit.models import BackboneConfig, build_backbone
    from sslvit.models.export import export_backbone

    cfg = BackboneConfig(size=size, depth=1, patch_size=4, img_size=16)
    root.mkdir(parents=True, exist_ok=True)
    export_backbone(build_backbone(cfg), cfg, root)
    return root


@pytest.mark.parametrize("tamper, words", [
    (lambda spec: spec.write_text("{not json"), "is not a backbone description sslvit wrote (Expecting"),
    (lambda spec: spec.write_text('{"timm": {}}'), "is not a backbone description sslvit wrote (no 'backbone' entry)"),
    (lambda spec: spec.write_text('{"backbone": {"size": "tiny", "colour": 3}}'),
     "an entry BackboneConfig does not take"),
    (lambda spec: spec.write_text('{"backbone": {"size": "enormous"}}'), "model.size 'enormous' is unknown"),
])
def test_a_tampered_backbone_json_is_one_sentence_naming_the_file(tamper, words, tmp_path):
    from sslvit.models.export import load_backbone

    run = _exported(tmp_path / "run", "tiny")
    tamper(run / "backbone.json")
    with pytest.raises(ValueError) as err:
        load_backbone(run)
    assert f"'{run / 'backbone.json'}'" in str(err.value) and words in str(err.value) and "\n" not in str(err.value)


def test_a_backbone_of_another_size_is_one_sentence_from_the_probe(tmp_path):
    """It used to be a 26 KB RuntimeError listing every size mismatch."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    small, tiny = _exported(tmp_path / "small", "small"), _exported(tmp_path / "tiny", "tiny")
    shutil.copy(tiny / "backbone.json", small / "backbone.json")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, str(repo / "probes/knn.py"), "--ckpt", str(small), "--data", "digits"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)}, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: embed_dim 192 in '{small / 'backbone.json'}', 384 in the weights "
                                   f"'{small / 'backbone.safetensors'}': they come from different runs; copy the "
                                   "backbone.json written with these weights.")


def test_an_image_given_as_the_checkpoint_is_named_as_such(tmp_path):
    from sslvit.models.export import resolve_backbone_path

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "cat.png")
    with pytest.raises(FileNotFoundError, match=r"'.*cat.png' is not a backbone; pass --ckpt a run directory or its"):
        resolve_backbone_path(tmp_path / "cat.png")


def _deny(monkeypatch, run, lock: str) -> None:
    """Make ``run``'s weights unreadable (``lock`` 'weights') or the run folder closed ('folder'):
    with chmod for a normal user; as root, who reads every file whatever its mode, by answering
    for the OS as it answers that user (os.access False; stat of a path inside: EACCES)."""
    import os
    import pathlib

    if os.geteuid() != 0:
        (run / "backbone.safetensors").chmod(0o000) if lock == "weights" else run.chmod(0o000)
        return
    if lock == "weights":
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).startswith(str(run / "backbone."))
                            else real_access(p, mode, **kw))
        return
    real_stat = pathlib.Path.stat

    def stat(self, **kw):
        if str(self).startswith(str(run) + os.sep):
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, **kw)
    monkeypatch.setattr(pathlib.Path, "stat", stat)


@pytest.mark.parametrize("lock", ["weights", "folder"])
def test_a_backbone_it_may_not_read_says_permission_denied_not_missing(lock, tmp_path, monkeypatch):
    """It said 'No backbone weights at ...' for a file that was there."""
    from sslvit.models.export import load_backbone

    run = _exported(tmp_path / "run", "tiny")
    _deny(monkeypatch, run, lock)
    try:
        with pytest.raises(PermissionError) as err:
            load_backbone(run)
    finally:
        run.chmod(0o755)
        (run / "backbone.safetensors").chmod(0o644)
    where = run / "backbone.safetensors"
    expected = (f"'{where}' cannot be read (permission denied)" if lock == "weights" else
                f"'{where}' cannot be reached (permission denied on a folder above it)")
    assert str(err.value).startswith(expected) and "\n" not in str(err.value), str(err.value)


def test_probes_replace_their_earlier_results_and_say_so(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    run = _exported(tmp_path / "run", "tiny")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    cmd = [sys.executable, str(repo / "probes/knn.py"), "--ckpt", str(run), "--data", "digits", "--ks", "5",
           "--picture_queries", "0", "--baselines", "false"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 0 and "replaced" not in first.stdout, first.stderr[-2000:]
    (run / "knn.json").write_text("{}")  # an earlier result
    second = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0 and "(replaced the earlier knn.json of a previous probe run)" in second.stdout
    assert (run / "knn.json").read_text() != "{}" and not list(run.glob(".tmp_*"))  # written whole, in place


def _folder_with_bad_files(root, good, bad):
    _pngs(root / "good", good)
    (root / "bad").mkdir(parents=True)
    for i in range(bad):
        (root / "bad" / f"broken{i:03d}.png").write_bytes(b"not a png")
    return root


@pytest.mark.parametrize("count", [1, 40])
def test_a_folder_where_no_image_reads_is_one_sentence_naming_the_first(tmp_path, count):
    """It used to say '100 images in a row from index 0 could not be read'; then, until 2026-12-07,
    a warning for every file of the folder came before the sentence."""
    import warnings

    from sslvit.data.dataset import build_dataset

    root = tmp_path / "bad"
    root.mkdir()
    for i in range(count):
        (root / f"only{i:02d}.png").write_bytes(b"not a png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = rf"^None of the {count} images could be read \(the first: '.*only00.png'\)"
        with pytest.raises(DataError, match=first):
            build_dataset(str(root), "all", 16)[count // 2]


def test_many_unreadable_images_stop_the_run_naming_files_and_share_few_do_not(tmp_path, fresh_accelerate):
    """110 unreadable files in a row used to kill the run naming no file (a fixed run of 100)."""
    import warnings

    from sslvit.data.folder import DataError
    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train.entry import run_pretraining
    from tests.test_end_to_end import TINY

    many = _folder_with_bad_files(tmp_path / "many", good=60, bad=110)
    argv = [*TINY, "--data", str(many), "--train.epochs", "1", "--train.knn_every", "0"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(DataError, match=r"could not be decoded, more than train.max_unreadable 50% allows: e.g. "
                                            r"'.*broken000.png', '.*broken001.png'"):
            run_pretraining(MAERunConfig, "mae", argv=[*argv, "--out", str(tmp_path / "r1")])
        fresh_accelerate()  # with a higher share allowed, the same folder trains, skipping them
        run = run_pretraining(MAERunConfig, "mae", argv=[*argv, "--out", str(tmp_path / "r2"),
                                                         "--train.max_unreadable", "0.9"])
    assert (run / "backbone.safetensors").is_file()


def test_the_shard_writer_with_a_file_as_output_is_one_sentence(tmp_path, capsys):
    from sslvit.data.shards import main

    _pngs(tmp_path / "imgs", 3)
    (tmp_path / "out").write_text("a file")
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "imgs"), str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == (f"error: The output '{tmp_path / 'out'}' is a file; pass a folder (new "
                                               "or holding this write's shards).")
    assert (tmp_path / "out").read_text() == "a file"


def test_a_folder_of_tars_without_an_index_says_how_to_index_them(tmp_path):
    from sslvit.data.dataset import build_dataset
    from sslvit.data.folder import DataError

    (tmp_path / "train-000000.tar").write_bytes(b"")
    with pytest.raises(DataError, match=r"holds tar shards but no index \(train.json\).*python -m sslvit.data.shards"):
        build_dataset(str(tmp_path), "train", 16)


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_run_folder(tmp_path, image_folder, fresh_accelerate,
                                                                          monkeypatch):
    """An error after set-up used to leave config.yaml, log.jsonl and tensorboard/ in a folder with no checkpoint."""
    import sslvit.objectives.mae as mae
    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train.entry import run_pretraining
    from tests.test_end_to_end import TINY

    def broken(self, imgs):
        raise ValueError("the objective broke at its first step")

    monkeypatch.setattr(mae.MAE, "forward", broken)
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="broke at its first step"):
        run_pretraining(MAERunConfig, "mae", argv=[*TINY, "--data", str(image_folder), "--out", str(run)])
    assert not run.exists()
    existing = tmp_path / "mine"  # a folder the user made is never removed
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    fresh_accelerate()
    with pytest.raises(ValueError):
        run_pretraining(MAERunConfig, "mae", argv=[*TINY, "--data", str(image_folder), "--out", str(existing)])
    assert (existing / "notes.txt").read_text() == "mine"


def test_a_diverged_run_keeps_its_log_and_is_marked_failed(tmp_path, image_folder, fresh_accelerate, monkeypatch):
    import sslvit.objectives.mae as mae
    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train.entry import run_pretraining
    from sslvit.train.loop import TrainingDiverged
    from tests.test_end_to_end import TINY

    monkeypatch.setattr(mae, "mae_loss", lambda pred, target, mask, norm: (pred * float("nan")).mean())
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as err:
        run_pretraining(MAERunConfig, "mae", argv=[*TINY, "--data", str(image_folder), "--out", str(run)])
    assert (run / "FAILED").read_text().strip() == str(err.value) and (run / "log.jsonl").is_file()


def test_attention_on_a_file_that_is_no_image_is_one_sentence_without_a_warning(tiny_backbone, tmp_path):
    import warnings

    from sslvit.eval.attention_probe import AttentionConfig, run_attention

    (tmp_path / "notes.txt").write_text("not an image")
    cases = {tmp_path / "notes.txt": "UnidentifiedImageError", tmp_path / "missing.png": "FileNotFoundError",
             tmp_path: "IsADirectoryError"}
    for path, kind in cases.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the folder reader's "Skipping unreadable image" warning came first
            with pytest.raises(DataError, match=rf"^'{path}' is not a readable image file \({kind}\); pass --image"):
                run_attention(AttentionConfig(ckpt=str(tiny_backbone), image=str(path)))
    assert not (tiny_backbone / "attention.png").exists()


def test_an_out_that_is_a_file_is_one_sentence_and_the_file_is_kept(tmp_path):
    """It ended in NotADirectoryError's traceback from the folder's clean-up guard."""
    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train.entry import run_pretraining
    from tests.test_end_to_end import TINY

    out = tmp_path / "notes.yaml"
    out.write_text("mine")
    with pytest.raises(ConfigError, match=rf"^--out '{out}' is a file; pass --out a directory \(a new one, or a "
                                          r"run's own with --resume\)\.$"):
        run_pretraining(MAERunConfig, "mae", argv=[*TINY, "--out", str(out)])
    assert out.read_text() == "mine"


def test_attention_with_an_out_it_cannot_write_is_one_sentence(tiny_backbone, tmp_path):
    """A folder, or a path under a file: IsADirectoryError's traceback and '[Errno 17] File exists' before."""
    from sslvit.eval.attention_probe import AttentionConfig, run_attention
    from sslvit.files import OutputError
    from sslvit.runtime.errors import USER_ERRORS

    (tmp_path / "a_file").write_text("x")
    for out, why in ((tmp_path, "a folder"), (tmp_path / "a_file" / "a.png", "a file is where its folder would be")):
        with pytest.raises(OutputError, match=rf"^Cannot write '{out}' \({why}\); pass --out a \.png path in a folder "
                                              "you can write to\\.$") as e:
            run_attention(AttentionConfig(ckpt=str(tiny_backbone), data="digits", num_images=1, out=str(out)))
        assert isinstance(e.value, USER_ERRORS)  # so the command ends with the sentence and exit code 2
    assert (tmp_path / "a_file").read_text() == "x" and not (tiny_backbone / "attention.png").exists()


@pytest.mark.parametrize("command", ["probe", "tokenizer", "shards"])
def test_ctrl_c_in_a_command_that_is_not_a_training_run_is_one_line_and_exit_130(command, tmp_path, image_folder,
                                                                                  monkeypatch, capsys):
    """Python's KeyboardInterrupt traceback, from wherever the command was; a training run already
    stopped with one line and 128 + SIGINT (tests/test_kill_resume.py)."""
    import dataclasses

    import sslvit.data.shards as shards
    import sslvit.tokenizers.__main__ as tokenizers
    from sslvit.eval import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    def run() -> None:
        if command == "probe":
            monkeypatch.setattr("sys.argv", ["probe"])
            cli.main(dataclasses.make_dataclass("NoKeys", []), interrupted, str)
        elif command == "tokenizer":
            monkeypatch.setattr(tokenizers, "fit_tokenizer", interrupted)
            tokenizers.main(["fit", "--data", str(image_folder), "--out", str(tmp_path / "t.safetensors")])
        else:
            monkeypatch.setattr(shards, "write_shards", interrupted)
            shards.main([str(image_folder), str(tmp_path / "shards")])

    with pytest.raises(SystemExit) as e:
        try:
            run()
        except KeyboardInterrupt:  # escaping, it would stop pytest itself rather than fail this test
            pytest.fail("the KeyboardInterrupt escaped the command")
    kept = {"probe": "the probe wrote nothing, and earlier results are as they were",
            "tokenizer": "nothing was written to --out",
            "shards": "the complete shards are kept, and the same command writes the rest"}[command]
    assert e.value.code == 130 and capsys.readouterr().err.splitlines()[-1] == f"Stopped by Ctrl-C (SIGINT); {kept}."


@pytest.mark.parametrize("error, mend", [
    (OSError(28, "No space left on device"), "free some space"),
    (OSError(122, "Disk quota exceeded"), "free some space"),
    (SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"), "free some space"),
    (OSError(30, "Read-only file system"), "make its disk writable again (it is mounted read-only now)"),
    (PermissionError(13, "Permission denied"), "give yourself write permission to '{folder}'"),
    (SafetensorError("I/O error: File too large (os error 27)"),
     "lift the file-size limit that refused it (`ulimit -f`, or the file system's own)"),
    (OSError(5, "Input/output error"), "check its disk (it reported an I/O error) or use another one"),
    (OSError(6, "No such device or address"), "mend the cause in brackets"),
    (RuntimeError("unexpected pos 64 vs 0"), "find what refused the write (its disk has room)"),
])
def test_a_failed_write_is_mended_as_its_cause_says_free_space_only_for_a_full_disk(error, mend, tmp_path,
                                                                                  monkeypatch):
    """Checkpoints, the backbone export and shards said "free some space" for any failed write; a
    read-only disk, a permission or a file-size limit is not mended by space."""
    import sslvit.files as files

    monkeypatch.setattr(files, "LOW_SPACE", 0)  # every disk has room, whatever this machine's has
    assert files.mend_write(error, tmp_path) == mend.format(folder=tmp_path)
    if mend.startswith("find"):  # an error that names no cause, on a disk nearly full: space first
        monkeypatch.setattr(files, "LOW_SPACE", shutil.disk_usage(tmp_path).free + 1)
        assert files.mend_write(error, tmp_path) == "free some space"


@pytest.mark.parametrize("error, said, full", [
    (OSError(28, "No space left on device"), "No space left on device", True),
    ("safetensors", "Error while serializing: I/O error: No space left on device (os error 28)", True),
    (OSError(27, "File too large"), "File too large", False),  # a per-file limit: more space would not help
    (PermissionError(13, "Permission denied"), "Permission denied", False),
])
def test_an_output_the_disk_refuses_names_the_path_why_and_for_a_full_disk_space_first(error, said, full, tmp_path):
    from safetensors import SafetensorError

    from sslvit.files import OutputError, written

    if error == "safetensors":  # what safetensors raises on a full disk: no OSError, no errno
        error = SafetensorError(said)

    def write():
        raise error

    with pytest.raises(OutputError) as e:
        written(tmp_path / "x.safetensors", write, "pass --out elsewhere")
    fix = "free some space, or pass --out elsewhere" if full else "pass --out elsewhere"
    assert str(e.value) == f"Cannot write '{tmp_path / 'x.safetensors'}' ({said}); {fix}."
