"""RUN/report.html: every section, every picture embedded as a PNG that decodes, nothing
fetched; the probe tables beside their baselines; the warnings the log holds; written by a
real run's end and refreshed by a probe."""
import base64
import dataclasses
import io
import json
from html.parser import HTMLParser

import pytest
import torch
import yaml
from PIL import Image

from sslvit.pictures import save_columns
from sslvit.report import build_report
from sslvit.report.page import SECTIONS

COLLAPSE = "the teacher output has collapsed onto a few prototypes (entropy 0.010 of at most 4.16 nats)"


class Page(HTMLParser):
    """The parts of the page the tests look at: sections, images, details, text per section."""

    def __init__(self, text: str):
        super().__init__()
        self.sections, self.images, self.details, self.fetches = [], [], [], []
        self.text: dict[str, str] = {}
        self._section = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._section = a["id"]
            self.sections.append(a["id"])
            self.text[a["id"]] = ""
        if tag == "img":
            self.images.append((self._section, a["src"]))
        if tag == "details":
            self.details.append(a)
        if tag in ("script", "link", "iframe") or any(v and "://" in v for k, v in attrs if k in ("src", "href")):
            self.fetches.append((tag, a))

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None

    def handle_data(self, data):
        if self._section:
            self.text[self._section] += data + " "


def _png(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert img.format == "PNG"
    img.load()
    return img


def _log(run, records):
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 9, "lo')  # a cut line


@pytest.fixture
def probed_run(tmp_path):
    """A DINO-shaped run directory as the loop and the probes leave it (no training)."""
    run = tmp_path / "dino-digits"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"data": "digits", "out": str(run), "resume": False,
                                                     "model": {"size": "tiny", "patch_size": 4, "img_size": 16},
                                                     "dino": {"out_dim": 64}, "train": {"epochs": 2}}))
    machine = {"device": "cpu", "device_name": "cpu: Test CPU, 2 cores", "processes": 1, "torch": torch.__version__}
    _log(run, [{"step": 0, "precision": "bf16", "precision_reason": "measured faster", "machine": machine,
                "objective": "DINO"},
               {"step": 1, "epoch": 1, "loss": 4.0, "lr": 1e-4, "teacher_entropy": 3.0, "kl": 1.0},
               {"step": 2, "epoch": 1, "skipped_step": "loss", "warnings": ["step 2 skipped: non-finite loss"]},
               {"step": 3, "epoch": 1, "loss": 3.5, "lr": 2e-4, "teacher_entropy": 0.01, "kl": 0.2,
                "warnings": [COLLAPSE]},
               {"epoch": 1, "step": 3, "epoch_loss": 3.75, "skipped_images": 2, "images_per_s": 10.0},
               {"epoch": 1, "step": 3, "knn_top1": 41.5, "knn_top5": 80.0}])
    imgs = torch.rand(2, 3, 16, 16)
    for epoch in (1, 2):
        save_columns({"image": imgs, "head 1": torch.rand(2, 4, 4)}, run / f"pictures_epoch{epoch:04d}.png",
                     {"image": False}, caption=f"dino-digits · epoch {epoch}")
    save_columns({"query (val)": imgs}, run / "knn_neighbours.png", {"query (val)": False})
    by_k = lambda a: {"10": {"top1": a, "top5": a + 10}, "20": {"top1": a - 1, "top5": a + 9}}  # noqa: E731
    (run / "knn.json").write_text(json.dumps({
        "num_train": 1500, "num_val": 297, "pool": "cls", "temperature": 0.07,
        "results": {"pretrained": by_k(61.25), "random_init": by_k(33.5), "raw_pixels": by_k(97.75)},
        "retrieval": {"pretrained": {"recall@1": 55.5, "mAP": 20.0, "depth": 1500},
                      "raw_pixels": {"recall@1": 98.0, "mAP": 66.0, "depth": 1500}}}))
    (run / "linear.json").write_text(json.dumps({
        "recipe": "cls", "head": "bn", "epochs": 10, "num_train": 1200, "num_holdout": 300, "num_val": 297,
        "best_index": 1, "grid": [{"lr": 0.1, "weight_decay": 0.0, "holdout_top1": 50.0, "val_top1": 49.0},
                                  {"lr": 1.0, "weight_decay": 0.0, "holdout_top1": 71.0, "val_top1": 70.25}],
        "baselines": {"random_init": {"lr": 0.1, "weight_decay": 0.0, "holdout_top1": 30.0, "val_top1": 31.75},
                      "raw_pixels": {"lr": 0.01, "weight_decay": 0.0, "holdout_top1": 40.0, "val_top1": 42.75}}}))
    (run / "finetune_full").mkdir()
    (run / "finetune_full" / "finetune.json").write_text(json.dumps({
        "mode": "full", "epochs": 3, "img_size": 16, "val_top1": 88.5, "val_top5": 99.0,
        "trainable_params": 5000, "total_params": 5000, "step_time_s": 0.05}))
    return run


def test_report_has_every_section_and_every_picture_decodes(probed_run):
    page = Page(build_report(probed_run).read_text())
    assert page.sections == list(SECTIONS)
    assert page.fetches == []  # self-contained: no script, stylesheet or URL to fetch
    where = [section for section, _ in page.images]
    assert where == ["curves", "pictures", "pictures"]  # the newest picture grid, then the neighbours
    sizes = [_png(src).size for _, src in page.images]
    assert sizes[1] == Image.open(probed_run / "pictures_epoch0002.png").size
    assert (probed_run / "curves.png").is_file()  # redrawn from log.jsonl by the report


def test_report_shows_machine_probes_beside_baselines_warnings_and_collapsed_config(probed_run):
    page = Page(build_report(probed_run).read_text())
    machine, probes, warnings = page.text["machine"], page.text["probes"], page.text["warnings"]
    assert "cpu: Test CPU, 2 cores" in machine and "bf16 (measured faster)" in machine
    for number in ("61.25", "33.50", "97.75", "55.50", "70.25", "88.50", "31.75", "42.75"):  # beside both baselines
        assert number in probes
    assert "random init" in probes and "raw pixels" in probes and "best on held-out" in probes
    assert "online k-NN top-1 41.5%" in page.text["summary"] and "epoch 1/2" in page.text["summary"]
    assert "k-NN probe top-1 (k=10): 61.2%" in page.text["summary"] and "objective: DINO" in page.text["summary"]
    assert COLLAPSE in warnings
    assert "1 optimizer step(s) skipped for non-finite values (1 loss)" in warnings
    assert "epoch 1: 2 unreadable image(s) skipped" in warnings
    assert page.details == [{}]  # one <details>, without "open": collapsed
    assert "out_dim: 64" in page.text["config"]


def test_a_probe_refreshes_the_report_and_the_command_rebuilds_it(probed_run, monkeypatch, capsys):
    from sslvit.eval import cli
    from sslvit.report.__main__ import main as report_main

    report_main([str(probed_run)])
    assert "61.25" in (probed_run / "report.html").read_text()
    report = json.loads((probed_run / "knn.json").read_text())
    report["results"]["pretrained"]["10"]["top1"] = 62.75
    (probed_run / "knn.json").write_text(json.dumps(report))
    monkeypatch.setattr("sys.argv", ["probe"])
    probe = lambda cfg: {"ckpt": str(probed_run / "backbone.safetensors")}  # noqa: E731 - a probe that wrote knn.json
    cli.main(dataclasses.make_dataclass("NoKeys", []), probe, lambda report: "probed")
    assert f"report: {probed_run / 'report.html'}" in capsys.readouterr().out
    assert "62.75" in (probed_run / "report.html").read_text()
    with pytest.raises(SystemExit) as e:
        report_main([str(probed_run / "nothing")])
    assert e.value.code == 2 and "is not a directory" in capsys.readouterr().err
    from tests.test_faults import _files_limited_to

    with _files_limited_to(1000), pytest.raises(SystemExit) as e:  # a file-size limit: one sentence, not PIL's
        report_main([str(probed_run)])  # traceback (EFBIG: no "free some space", which ENOSPC gets)
    assert e.value.code == 2 and capsys.readouterr().err == (
        f"error: Cannot write the report into '{probed_run}' (File too large); copy the run to a disk you can write "
        "to.\n")
    with pytest.raises(SystemExit) as e:
        report_main(["--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("``python -m sslvit.report RUN_DIR``")


def test_a_real_run_writes_its_report_at_the_end(tmp_path, image_folder, fresh_accelerate):
    from sslvit.recipes.mae import MAERunConfig
    from sslvit.train.entry import run_pretraining

    tiny = ["--train.precision", "fp32", "--model.size", "tiny", "--model.depth", "1", "--model.patch_size", "4",
            "--model.img_size", "16", "--mae.decoder_dim", "32", "--mae.decoder_depth", "1", "--mae.decoder_heads",
            "2", "--train.batch_size", "16", "--train.epochs", "1", "--train.num_workers", "0", "--train.log_every",
            "1", "--data", str(image_folder), "--out", str(tmp_path / "run")]
    run = run_pretraining(MAERunConfig, "mae", argv=tiny)
    page = Page((run / "report.html").read_text())
    assert page.sections == list(SECTIONS)
    assert [s for s, _ in page.images] == ["curves", "pictures"]
    grid = _png(page.images[1][1])
    assert grid.size[0] > 4 * 128  # four 128 px columns: original, masked, reconstruction, + visible
    first = json.loads((run / "log.jsonl").read_text().splitlines()[0])
    assert first["machine"]["processes"] == 1 and first["machine"]["device"] == "cpu"
    assert "fp32 (as configured)" in page.text["machine"] and "objective: MAE" in page.text["summary"]
