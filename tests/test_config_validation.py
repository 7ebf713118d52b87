"""Bad configs: one sentence each, before any work starts (no run directory, no data read)."""
import pytest

from sslvit.config import ConfigError
from sslvit.recipes.dino import DINORunConfig
from sslvit.recipes.mae import MAERunConfig
from sslvit.train.entry import run_pretraining
from tests.test_dino_run import TINY as DINO_TINY
from tests.test_end_to_end import TINY

RUNS = {"mae": (MAERunConfig, TINY), "dino": (DINORunConfig, DINO_TINY)}
TABLE = [  # (objective, arguments, error, words the sentence must hold)
    ("mae", ["--train.epohcs", "3"], ConfigError, "Unknown config key 'train.epohcs'. Did you mean 'train.epochs'"),
    ("mae", ["--mae.mask_rate", "0.5"], ConfigError, "Did you mean 'mae.mask_ratio'"),
    ("mae", ["--train.epochs", "three"], ConfigError, "'train.epochs' must be an integer"),
    ("mae", ["--train.blr", "fast"], ConfigError, "'train.blr' must be a number"),
    ("mae", ["--model", "3"], ConfigError, "'model' is a section"),
    ("mae", ["--mae.mask_ratio", "1.0"], ValueError, "mae.mask_ratio 1.0 leaves no visible patch"),
    ("mae", ["--mae.mask_ratio", "0.99"], ValueError, "leaves no visible patch of 16"),
    ("mae", ["--train.batch_size", "0"], ValueError, "train.batch_size must be >= 1"),
    ("mae", ["--model.img_size", "18"], ValueError, "not a multiple of model.patch_size"),
    ("mae", ["--model.patch_size", "6", "--model.img_size", "18"], ValueError, "multiple of 4"),
    ("mae", ["--model.size", "huge"], ValueError, "model.size 'huge' is unknown"),
    ("mae", ["--train.precision", "fp8"], ValueError, "train.precision 'fp8' is unknown"),
    ("mae", ["--mae.decoder_heads", "3"], ValueError, "not divisible by mae.decoder_heads"),
    ("mae", ["--mae.mask_ratio", "0"], ValueError, "mae.mask_ratio 0.0 masks no patch of 16, so there is nothing"),
    ("mae", ["--model.img_size", "0"], ValueError, "model.img_size 0 holds no patch of model.patch_size 4"),
    ("mae", ["--train.blr", "-1"], ValueError, "train.blr must be > 0 (got -1.0)"),
    ("mae", ["--train.lr", "0"], ValueError, "train.lr must be > 0"),
    ("mae", ["--train.weight_decay", "-0.1"], ValueError, "train.weight_decay must be >= 0"),
    ("mae", ["--train.betas", "0.9,1.5"], ValueError, "train.betas must each be in [0, 1)"),
    ("mae", ["--train.compile", "inductr"], ValueError, "train.compile 'inductr' is not a torch.compile backend"),
    ("mae", ["--train.precision", "off"], ValueError, "train.precision 'off' is unknown"),
    ("dino", ["--model.dynamic_img_size", "false"], ValueError, "dynamic_img_size true"),
    ("dino", ["--crops.local_size", "6"], ValueError, "crops.local_size"),
]


@pytest.mark.parametrize("name, args, error, words", TABLE, ids=[" ".join(r[1]) for r in TABLE])
def test_a_bad_config_is_one_sentence_before_any_work(name, args, error, words, tmp_path, image_folder,
                                                       fresh_accelerate):
    out = tmp_path / "run"
    with pytest.raises(error) as err:
        cls, base = RUNS[name]
        run_pretraining(cls, name, argv=[*base, "--data", str(image_folder), "--out", str(out), *args])
    message = str(err.value)
    assert words in message and "\n" not in message and message.endswith((".", "?"))
    assert not out.exists()  # nothing was started


def test_a_batch_larger_than_the_data_is_one_sentence(tmp_path, image_folder, fresh_accelerate):
    with pytest.raises(ValueError, match="fewer than one batch of 64 x 1 processes; lower train.batch_size"):
        run_pretraining(MAERunConfig, "mae", argv=[*TINY, "--data", str(image_folder), "--out", str(tmp_path / "r"),
                                                   "--train.batch_size", "64"])


def test_resuming_a_checkpoint_of_another_architecture_names_the_keys(tmp_path, image_folder, fresh_accelerate):
    argv = [*TINY, "--data", str(image_folder), "--out", str(tmp_path / "run"), "--train.epochs", "1"]
    run_pretraining(MAERunConfig, "mae", argv=argv)
    fresh_accelerate()
    with pytest.raises(ConfigError, match=r"model.depth: 2 in the checkpoint, 3 now.*new --out"):
        run_pretraining(MAERunConfig, "mae", argv=[*argv, "--resume", "--model.depth", "3"])
    fresh_accelerate()  # the train section may change: a longer schedule resumes
    run_pretraining(MAERunConfig, "mae", argv=[*argv, "--resume", "--train.epochs", "2"])


def test_a_bare_resume_continues_the_run_as_it_was_configured(tmp_path, image_folder, fresh_accelerate, capsys):
    """Bare --resume used to compare against the preset (mask_ratio 0.75 in the checkpoint, 0.5 now)."""
    out = tmp_path / "run"
    argv = [*TINY, "--data", str(image_folder), "--out", str(out), "--train.epochs", "1", "--mae.mask_ratio", "0.6",
            "--train.log_every", "2"]
    run_pretraining(MAERunConfig, "mae", argv=argv)
    fresh_accelerate()
    run_pretraining(MAERunConfig, "mae", argv=["--out", str(out), "--resume", "--train.epochs", "2"])
    assert "Resuming from" in capsys.readouterr().out
    import yaml
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["mae"]["mask_ratio"] == 0.6 and saved["train"]["epochs"] == 2 and saved["train"]["log_every"] == 2
    assert saved["data"] == str(image_folder)


def test_resuming_another_objectives_run_is_one_sentence(tmp_path, image_folder, fresh_accelerate):
    """It used to be KeyError: 'mae' in check_same_run."""
    out = tmp_path / "run"
    run_pretraining(MAERunConfig, "mae", argv=[*TINY, "--data", str(image_folder), "--out", str(out),
                                               "--train.epochs", "1"])
    fresh_accelerate()
    with pytest.raises(ConfigError, match=r"holds a run of another objective \(its config.yaml has the section 'mae'"):
        run_pretraining(DINORunConfig, "dino", argv=["--out", str(out), "--resume"])
