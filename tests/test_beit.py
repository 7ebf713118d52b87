"""BEiT objective: the loss against a reference written from the paper, the mask token at the
encoder input, defaults, and a real (tiny) run through the entry point that the probes score."""
import json

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from sslvit.config import ConfigError
from sslvit.eval.knn_probe import KNNProbeConfig, run_knn_probe
from sslvit.eval.linear_probe import LinearProbeConfig, run_linear_probe
from sslvit.models import BackboneConfig, HMLPStem, build_backbone
from sslvit.data.collates import BlockMaskCollate
from sslvit.objectives.beit import BEiT, BEiTConfig
from sslvit.recipes.beit import BEiTRunConfig
from sslvit.tokenizers import PixelTokenizer, load_tokenizer
from sslvit.recipes import run_tokenizer as tokenizer_fit
from sslvit.train.entry import run_pretraining


def _objective(vocab=16, init_values=0.1):
    backbone = build_backbone(BackboneConfig(size="tiny", depth=2, patch_size=4, img_size=16, init_values=init_values))
    tok = PixelTokenizer(vocab, 4)
    tok.fit([torch.randn(8, 3, 16, 16)], iters=3)
    return BEiT(backbone, tok, BEiTConfig())


def _mask(B=3, N=16, count=6):
    return torch.stack([torch.randperm(N) < count for _ in range(B)])


def reference_beit_loss(model: BEiT, imgs, mask):
    """BEiT (Bao et al. 2022), written from the paper: embed every patch, put the learned mask
    token in place of each masked patch's embedding, add position embeddings, prepend [CLS], run
    the Transformer, a softmax classifier over the vocabulary at every position; the loss is the
    mean of -log p(token id) over the masked positions only (float64, one position at a time)."""
    bb = model.backbone
    B, N = mask.shape
    x = bb.patch_embed(imgs).clone()
    for b in range(B):
        for n in range(N):
            if mask[b, n]:
                x[b, n] = model.mask_token[0, 0]
    x = torch.cat([bb.cls_token.expand(B, -1, -1), x], 1) + bb.pos_embed
    logits = model.head(bb.norm(bb.blocks(x)))[:, 1:].double()  # (B, N, V): every position
    targets = model.tokenizer.encode(imgs)  # (B, N): every patch's id
    losses, hits = [], []
    for b in range(B):
        for n in range(N):
            if mask[b, n]:
                losses.append(-torch.log_softmax(logits[b, n], -1)[targets[b, n]])
                hits.append(float(logits[b, n].argmax() == targets[b, n]))
    return torch.stack(losses).mean(), sum(hits) / len(hits)


def test_loss_is_cross_entropy_over_masked_positions_only():
    model = _objective().eval()
    imgs, mask = torch.randn(3, 3, 16, 16), _mask()
    out = model((imgs, mask))
    ref_loss, ref_acc = reference_beit_loss(model, imgs, mask)
    assert abs(out["loss"].item() - ref_loss.item()) < 1e-5 and abs(out["mlm_acc"].item() - ref_acc) < 1e-6


def test_outputs_at_unmasked_positions_do_not_change_the_loss():
    model = _objective().eval()
    imgs, mask = torch.randn(3, 3, 16, 16), _mask()
    before = model((imgs, mask))["loss"]
    where = {"rows": ~mask}

    def perturb(module, args, out):  # the encoder output the head reads, (B, 1 + N, D)
        out = out.clone()
        out[:, 1:][where["rows"]] += 10 * torch.randn_like(out[:, 1:][where["rows"]])
        return out

    handle = model.backbone.norm.register_forward_hook(perturb)
    assert torch.equal(model((imgs, mask))["loss"], before)
    where["rows"] = mask & (torch.arange(16) == torch.nonzero(mask[0])[0, 0])  # one masked position
    assert not torch.equal(model((imgs, mask))["loss"], before)  # the check has teeth
    handle.remove()


@pytest.mark.parametrize("stem", ["hmlp", "linear"])
def test_masked_pixels_cannot_reach_the_encoder(stem):
    backbone = build_backbone(BackboneConfig(size="tiny", depth=2, patch_size=4, img_size=16, stem=stem))
    model = BEiT(backbone, PixelTokenizer(16, 4), BEiTConfig()).train()
    imgs, mask = torch.randn(2, 3, 16, 16), _mask(2)
    pixel_mask = mask.view(2, 1, 4, 1, 4, 1).expand(2, 3, 4, 4, 4, 4).reshape(2, 3, 16, 16)
    other = imgs + 5 * torch.randn_like(imgs) * pixel_mask  # new pixels in every masked patch
    def tokens(x):  # the encoder's input: stem outputs (mask token where masked) + positions
        return backbone.encode(x, mask=mask, mask_token=model.mask_token, depth=0, norm=False)[:, 1:]

    emb, emb2 = tokens(imgs), tokens(other)
    assert torch.equal(emb[~mask], emb2[~mask])  # visible stem outputs untouched
    pos = backbone.pos_embed[:, 1:].expand(2, -1, -1)
    assert torch.equal(emb[mask], model.mask_token[0, 0] + pos[mask])
    model.eval()
    assert torch.equal(model.encode(imgs, mask), model.encode(other, mask))
    visible = imgs + 5 * torch.randn_like(imgs) * ~pixel_mask
    assert not torch.equal(tokens(visible)[~mask], emb[~mask])


def test_grid_aware_masking_defaults_and_beit_optimizer_defaults():
    args = BEiTConfig().mask_args((14, 14))
    assert args["num_masked"] == 78 and args["min_block"] == 16  # 0.4 of 196; BEiT's own
    small = BEiTConfig().mask_args((4, 4))
    assert small["num_masked"] == 6 and 1 <= small["min_block"] < 2
    collate = BlockMaskCollate(**small)
    (imgs, mask), labels, skipped = collate([(torch.randn(3, 16, 16), i, 0) for i in range(5)])
    assert imgs.shape == (5, 3, 16, 16) and mask.shape == (5, 16) and torch.all(mask.sum(1) == 6)
    assert labels.tolist() == [0, 1, 2, 3, 4] and skipped.sum() == 0
    cfg = BEiTRunConfig()
    assert cfg.train.betas == (0.9, 0.98) and cfg.train.clip_grad == 3.0 and cfg.model.init_values == 0.1
    with pytest.raises(ConfigError, match="patch size 4 differs from model.patch_size 8"):
        BEiT(build_backbone(BackboneConfig(size="tiny", depth=1, patch_size=8, img_size=16)), PixelTokenizer(8, 4),
             BEiTConfig())


TINY = ["--train.precision", "fp32", "--model.size", "tiny", "--model.depth", "2",
        "--model.patch_size", "4", "--model.img_size", "16",
        "--tokenizer.vocab", "16", "--tokenizer.fit_images", "48", "--tokenizer.iters", "3",
        "--train.batch_size", "16", "--train.epochs", "2", "--train.warmup_epochs", "1", "--train.num_workers", "0",
        "--train.log_every", "1", "--train.save_every", "1", "--train.picture_every", "2", "--train.blr", "1e-2"]


def _run(out, data, extra=()):
    return run_pretraining(BEiTRunConfig, "beit", argv=[*TINY, "--data", str(data), "--out", str(out), *extra])


def test_beit_run_writes_tokenizer_backbone_pictures_and_is_probed(tmp_path, image_folder, fresh_accelerate,
                                                                    capsys):
    run = _run(tmp_path / "run", image_folder)
    assert "fitting a pixel tokenizer" in capsys.readouterr().out
    names = {p.name for p in run.iterdir()}
    assert {"config.yaml", "log.jsonl", "backbone.safetensors", "backbone.json", "checkpoints", "tokenizer.safetensors",
            "pictures_epoch0002.png"} <= names
    steps = [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(steps) == 6 and all(0 <= r["mlm_acc"] <= 1 for r in steps)
    assert load_tokenizer(run / "tokenizer.safetensors").vocab == 16
    # LayerScale 0.1 is in the backbone and in backbone.json, and the weights load into timm strictly
    spec = json.loads((run / "backbone.json").read_text())
    assert spec["backbone"]["init_values"] == 0.1 == spec["timm"]["init_values"]
    weights = load_file(str(run / "backbone.safetensors"))
    assert "blocks.0.ls1.gamma" in weights and not any(
        k.startswith(("head", "mask_token", "tokenizer")) for k in weights)
    kw = {k: v for k, v in spec["timm"].items() if k not in ("embed_layer", "block_fn")}
    timm.create_model(**kw, embed_layer=HMLPStem).load_state_dict(weights, strict=True)
    knn = run_knn_probe(KNNProbeConfig(ckpt=str(run), ks=(5,), baselines=False, picture_queries=0))
    assert 0 <= knn["results"]["pretrained"][5]["top1"] <= 100
    linear = run_linear_probe(LinearProbeConfig(ckpt=str(run), epochs=2, lrs=(0.1,), batch_size=16))
    assert 0 <= linear["best"]["val_top1"] <= 100


def test_resume_reuses_the_runs_tokenizer_and_reaches_the_same_weights(tmp_path, image_folder, fresh_accelerate,
                                                                       monkeypatch):
    straight = _run(tmp_path / "straight", image_folder)
    fresh_accelerate()
    _run(tmp_path / "resumed", image_folder, ["--train.stop_after", "1"])
    fresh_accelerate()

    def no_refit(*args, **kwargs):
        raise AssertionError("a resumed run must reuse its tokenizer, not fit a new one")

    monkeypatch.setattr(tokenizer_fit, "fit_tokenizer", no_refit)
    _run(tmp_path / "resumed", image_folder, ["--resume"])
    a = load_file(str(straight / "backbone.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "backbone.safetensors"))
    for k in a:  # the masks come from the seeded RNG that the checkpoint restores
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=0, atol=1e-6, err_msg=k)
    with pytest.raises(FileExistsError, match="--resume"):  # never overwrite a run's tokenizer
        _run(tmp_path / "resumed", image_folder)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_run_stopped_mid_epoch_resumes_to_the_same_weights(workers, tmp_path, image_folder, fresh_accelerate):
    """BEiT's masks are drawn in the collate (in the workers); keyed by the batch's place in the
    epoch, the batches after a mid-epoch resume get the masks an unbroken run gives them."""
    from sslvit.train.stop_signals import RunStopped
    from tests.test_shards import _StopAtCall

    extra = ["--train.num_workers", str(workers)]
    straight = _run(tmp_path / "straight", image_folder, extra)
    fresh_accelerate()
    with pytest.raises(RunStopped, match=r"step 5 \(epoch 2, batch 2 of 3\)"):  # checks: 1, 2-4, 5, 6, 7 = step 5
        run_pretraining(BEiTRunConfig, "beit", argv=[*TINY, "--data", str(image_folder), "--out",
                                                     str(tmp_path / "resumed"), *extra], stop=_StopAtCall(7))
    fresh_accelerate()
    _run(tmp_path / "resumed", image_folder, [*extra, "--resume"])
    a = load_file(str(straight / "backbone.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "backbone.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) == 0.0


def test_the_tokenizer_is_fitted_on_the_training_split_of_a_folder_and_of_shards(tmp_path, image_folder,
                                                                                  fresh_accelerate):
    """A folder's fit leaves out the 12 images the probes hold out (it read all 60 before); a shard set
    is a stream (indexing it raised, so BEiT could not start on shards): its first n, seeded."""
    from sslvit.data.shards import write_shards
    from sslvit.tokenizers.fit import sample_fit_batches

    assert sum(len(b) for b in sample_fit_batches(str(image_folder), 16, 1000, seed=0)) == 48
    write_shards(image_folder, tmp_path / "shards", max_count=10, progress=False)
    whole = torch.cat(sample_fit_batches(str(tmp_path / "shards"), 16, 1000, seed=0, batch_size=16))
    some = sample_fit_batches(str(tmp_path / "shards"), 16, 20, seed=0, batch_size=16)
    assert whole.shape == (48, 3, 16, 16) and [len(b) for b in some] == [16, 4]
    assert torch.equal(torch.cat(some), torch.cat(sample_fit_batches(str(tmp_path / "shards"), 16, 20, seed=0)))
    run = _run(tmp_path / "run", tmp_path / "shards", ["--train.epochs", "1"])
    assert load_tokenizer(run / "tokenizer.safetensors").fit_info["images"] == 48


def test_the_tokenizer_is_fitted_on_crops_of_the_runs_own_augmentation(tmp_path, image_folder, monkeypatch):
    """The tokenizer encodes the run's crops, so it is fitted on them: the run's crop scale and flips
    (MAE's defaults before, whatever --train.crop_scale and --train.hflip said)."""
    from sslvit.config import build_config
    from sslvit.tokenizers import fit

    seen = []
    real = fit.sample_fit_batches
    monkeypatch.setattr(fit, "sample_fit_batches", lambda *a, **k: seen.append(k["transform"]) or real(*a, **k))
    cfg = build_config(BEiTRunConfig, [*TINY, "--data", str(image_folder), "--out", str(tmp_path / "run"),
                                       "--train.crop_scale", "[0.6, 0.9]", "--train.hflip", "false"])
    cfg.build_objective()
    assert len(seen) == 1 and repr(seen[0]) == repr(cfg.train_transform())
    assert "scale=(0.6, 0.9)" in repr(seen[0]) and "Flip" not in repr(seen[0])


def test_a_features_tokenizer_replaces_the_small_data_recipes_grey_pixel_one(tmp_path, image_folder,
                                                                             fresh_accelerate, capsys):
    """The small-data recipe (BEiT's cluttered preset) sets tokenizer.grey for its pixel codes; with
    --tokenizer.kind features that key is unused, and the run said "grey is for the pixel kind" before."""
    from sslvit.models.export import export_backbone
    from sslvit.tokenizers.features import FeatureTokenizer

    cfg = BackboneConfig(size="tiny", depth=1, patch_size=4, img_size=16)
    (tmp_path / "teacher").mkdir()
    export_backbone(build_backbone(cfg), cfg, tmp_path / "teacher")
    run = _run(tmp_path / "run", image_folder, ["--train.epochs", "1", "--tokenizer.kind", "features",
                                                "--tokenizer.teacher", str(tmp_path / "teacher")])
    out = capsys.readouterr().out
    assert "recipe: small data" in out and "tokenizer.grey is for the pixel kind, unused here" in out
    assert isinstance(load_tokenizer(run / "tokenizer.safetensors"), FeatureTokenizer)


def test_a_tokenizer_the_main_process_cannot_fit_stops_every_process_with_its_sentence(tmp_path, image_folder):
    """The main process fits while the others wait at a barrier; its error left them there until gloo
    broke the connection, and each printed that traceback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(repo / "launch/cpu_2proc.yaml"),
           "--main_process_port", "29567", str(repo / "pretrain/beit.py"), *TINY, "--data", str(image_folder),
           "--out", str(tmp_path / "run"), "--tokenizer.vocab", "4096"]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode != 0 and "vocab 4096 is larger than the 768 patches" in out, out[-3000:]
    assert "error: The main process could not make the run's tokenizer" in out and "[rank1]: Traceback" not in out
    assert not (tmp_path / "run").exists()  # nothing half-written
