"""The objective seam: the README's "Adding an objective" example runs as written, and the loop
calls each hook when the base's docstring says it does."""
import re
import sys
import types
from pathlib import Path

import pytest
import torch

from sslvit.objectives.base import Objective
from sslvit.train.entry import run_pretraining

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = ["--train.precision", "fp32", "--model.depth", "2", "--train.batch_size", "32", "--train.epochs", "2",
        "--train.num_workers", "0", "--train.log_every", "1", "--train.save_every", "1", "--train.picture_every", "9"]


def _readme_example() -> dict[str, str]:
    """The python blocks of the README's 'Adding an objective', split at their '# path' lines."""
    section = README.read_text().split("## Adding an objective", 1)[1].split("\n## ", 1)[0]
    files, name = {}, None
    for block in re.findall(r"```python\n(.*?)```", section, re.S):
        for line in block.splitlines(keepends=True):
            path = re.match(r"# (\S+\.py)", line)
            if path:
                name = path.group(1)
                files[name] = ""
            elif name:
                files[name] += line
    return files


def _module(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(source, name, "exec"), module.__dict__)
    sys.modules[name] = module
    return module


def test_the_readme_example_objective_trains_resumes_and_exports(tmp_path, fresh_accelerate, monkeypatch):
    files = _readme_example()
    assert set(files) == {"sslvit/objectives/byol_lite.py", "sslvit/recipes/byol_lite.py", "pretrain/byol_lite.py"}
    for name in ("sslvit.objectives.byol_lite", "sslvit.recipes.byol_lite"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    _module("sslvit.objectives.byol_lite", files["sslvit/objectives/byol_lite.py"])
    recipe = _module("sslvit.recipes.byol_lite", files["sslvit/recipes/byol_lite.py"])
    assert "main(BYOLLiteRunConfig)" in files["pretrain/byol_lite.py"]
    out = tmp_path / "run"
    run_pretraining(recipe.BYOLLiteRunConfig, argv=[*TINY, "--out", str(out), "--train.stop_after", "1"])
    fresh_accelerate()
    run_pretraining(recipe.BYOLLiteRunConfig, argv=[*TINY, "--out", str(out), "--resume"])
    assert (out / "backbone.safetensors").is_file() and (out / "checkpoints" / "epoch_0002").is_dir()
    losses = [float(x) for x in re.findall(r'"epoch_loss": ([-\d.e]+)', (out / "log.jsonl").read_text())]
    assert len(losses) == 2 and losses[1] < losses[0]  # it learns something: the loss falls


class _Recorder(Objective):
    """A linear 'objective' that records every hook call with the StepInfo it got."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone, self.calls = backbone, []

    def forward(self, imgs):
        return {"loss": self.backbone.encode(imgs)[:, 0].square().mean()}

    def on_epoch_start(self, epoch):
        self.calls.append(("epoch", epoch))

    def before_micro_batch(self, info):
        self.calls.append(("micro", info.step, info.micro, info.rows.start, info.global_size))

    def before_optimizer_step(self, info):
        self.calls.append(("before", info.step))

    def after_optimizer_step(self, info):
        self.calls.append(("after", info.step))


def test_the_loop_calls_each_hook_per_micro_batch_and_per_optimizer_step(tmp_path, image_folder, fresh_accelerate):
    from dataclasses import dataclass, field

    from sslvit.data.transforms import mae_train_transform
    from sslvit.models.vit import BackboneConfig, build_backbone
    from sslvit.train.train_config import TrainConfig

    made = []

    @dataclass
    class RecorderRun:
        data: str = "digits"
        out: str = "runs/x"
        resume: bool = False
        model: BackboneConfig = field(default_factory=lambda: BackboneConfig(size="tiny", patch_size=4, img_size=16,
                                                                             depth=1))
        train: TrainConfig = field(default_factory=TrainConfig)

        def build_objective(self):
            made.append(_Recorder(build_backbone(self.model)))
            return made[-1]

        def train_transform(self):
            return mae_train_transform(self.model.img_size)

    argv = ["--data", str(image_folder), "--out", str(tmp_path / "run"), "--train.precision", "fp32",
            "--train.batch_size", "8", "--train.accum_steps", "2", "--train.epochs", "1", "--train.num_workers", "0"]
    run_pretraining(RecorderRun, argv=argv)
    calls = made[0].calls
    # 48 images, 6 micro-batches of 8, 3 optimizer steps of 2 micro-batches (global batch 16)
    assert calls[0] == ("epoch", 0)
    expected = [c for s in range(3) for c in (("micro", s, 0, 0, 16), ("micro", s, 1, 8, 16), ("before", s),
                                               ("after", s))]
    assert calls[1:] == expected


def test_an_objective_that_is_not_an_objective_is_one_sentence(tmp_path, image_folder, fresh_accelerate):
    from sslvit.recipes.mae import MAERunConfig

    class Plain(MAERunConfig):
        def build_objective(self):
            return torch.nn.Linear(2, 2)

    with pytest.raises(TypeError, match="is not an sslvit.objectives.base.Objective; subclass it"):
        run_pretraining(Plain, "mae", argv=["--data", str(image_folder), "--out", str(tmp_path / "r"),
                                            "--train.batch_size", "8"])
