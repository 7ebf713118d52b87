"""The pictures a person reads: titled columns, a caption, one readable cell size for every
input size, heat maps with a colour bar, notes under tiles, curves from the log, and a seeded
sample spread over classes and shards."""
import numpy as np
import pytest
import torch
from PIL import Image

from sslvit.pictures import CELL_PX, grid_size_px, save_columns, tile_figure


def _red_box(png) -> tuple[int, int]:
    """(width, height) of the bounding box of pure-red pixels: the one red tile drawn."""
    a = np.asarray(Image.open(png).convert("RGB")).astype(int)
    ys, xs = np.nonzero((a[..., 0] > 240) & (a[..., 1] < 15) & (a[..., 2] < 15))
    return xs.max() - xs.min() + 1, ys.max() - ys.min() + 1


def _red_then_grey(size: int, rows: int = 2) -> dict:
    red = torch.zeros(rows, 3, size, size)
    red[:, 0] = 1.0
    return {"original": red, "masked": torch.full((rows, 3, size, size), 0.5)}


def test_grid_has_the_column_titles_and_the_caption():
    cols = {k: v.permute(0, 2, 3, 1).numpy() for k, v in _red_then_grey(16, rows=3).items()}
    fig = tile_figure(cols, "mae-digits · epoch 2/4 · loss 0.4123")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["original", "masked"]  # once, above the first row
    assert len(fig.axes) == 3 * 2
    assert [t.get_text() for t in fig.texts] == ["mae-digits · epoch 2/4 · loss 0.4123"]


@pytest.mark.parametrize("size", [16, 64, 224])
def test_every_input_size_is_drawn_in_the_same_readable_cell(size, tmp_path):
    path = tmp_path / f"grid{size}.png"
    save_columns(_red_then_grey(size), path, normalized={"original": False, "masked": False}, caption="run · epoch 1")
    assert Image.open(path).size == grid_size_px(rows=2, cols=2)
    w, h = _red_box(path)
    # the red tiles of both rows, each CELL_PX square (an axes frame may cover its outer pixel)
    assert CELL_PX - 2 <= w <= CELL_PX and 2 * CELL_PX - 2 <= h <= 2 * CELL_PX + 12
    assert CELL_PX >= 96  # a 16 px digit is enlarged 8x


def test_small_images_are_enlarged_by_nearest_neighbour(tmp_path):
    img = torch.zeros(1, 3, 16, 16)
    img[0, :, ::2, ::2] = 1.0  # a one-pixel checkerboard: blurred by any smooth resize
    path = tmp_path / "checker.png"
    save_columns({"checker": img}, path, normalized={"checker": False})
    a = np.asarray(Image.open(path).convert("L")).astype(int)
    values = np.unique(a[a.shape[0] // 2 - 20:a.shape[0] // 2 + 20, 30:90])
    assert set(values.tolist()) <= {0, 255} | set(range(0, 8)) | set(range(248, 256))


def test_a_heat_map_is_drawn_over_its_image_with_a_colour_bar():
    imgs = np.full((2, 16, 16, 3), 0.5)
    heat = np.random.default_rng(0).random((2, 4, 4))
    fig = tile_figure({"image": imgs, "head 1": heat}, "dino · epoch 1", background="image")
    tile = fig.axes[1]
    assert len(tile.images) == 2  # the grey image, then the heat map over it
    assert tile.images[1].get_extent() == [-0.5, 15.5, 15.5, -0.5]  # stretched over all 16 px
    colourbars = [ax for ax in fig.axes if "attention" in ax.get_ylabel()]
    assert len(colourbars) == 1


def test_notes_under_tiles_carry_their_colour():
    cols = {"query (val)": np.zeros((1, 8, 8, 3)), "neighbour 1": np.ones((1, 8, 8, 3))}
    fig = tile_figure(cols, "knn", notes=[[("class 3", "black"), ("3 · 0.91", "green")]])
    texts = [(t.get_text(), t.get_color()) for ax in fig.axes for t in ax.texts]
    assert texts == [("class 3", "black"), ("3 · 0.91", "green")]


def test_attention_png_has_one_cell_size_for_16_and_64_px_inputs(tmp_path):
    from sslvit.eval.attention_probe import AttentionConfig, run_attention
    from sslvit.models import BackboneConfig, build_backbone
    from sslvit.models.export import export_backbone

    cfg = BackboneConfig(size="tiny", depth=1, patch_size=4, img_size=16)
    export_backbone(build_backbone(cfg), cfg, tmp_path)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.tile(np.array([255, 0, 0], np.uint8), (96, 96, 1))).save(photo)  # pure red
    sizes = {}
    for px in (16, 64):
        out = tmp_path / f"attention{px}.png"
        report = run_attention(AttentionConfig(ckpt=str(tmp_path), image=str(photo), img_size=px, out=str(out)))
        assert report["grid"] == [px // 4, px // 4]
        sizes[px] = Image.open(out).size
        w, h = _red_box(out)  # the image's own tile (the heat maps draw it in grey)
        assert CELL_PX - 2 <= w <= CELL_PX and CELL_PX - 2 <= h <= CELL_PX
    heads = 3  # ViT-Ti
    # one row: the image, a map per head, their mean; the caption (run, what, size) takes two lines
    assert sizes[16] == sizes[64] == grid_size_px(rows=1, cols=1 + heads + 1, caption_lines=2, heat=True)


def test_curves_have_the_health_and_knn_panels_the_log_holds():
    from sslvit.report.curves import curves_figure

    records = [{"step": 0, "precision": "fp32"}]
    for s in range(1, 6):
        records.append({"step": s, "epoch": 1, "loss": 5.0 - s, "lr": 1e-3 * s, "teacher_entropy": 2.0, "kl": 0.5})
    records.append({"epoch": 1, "step": 5, "epoch_loss": 2.0})
    records.append({"epoch": 1, "step": 5, "knn_top1": 40.0, "knn_top5": 80.0})
    fig = curves_figure(records, "dino · epoch 1/1 · loss 2.0000")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:2] == ["loss", "learning rate"]
    assert any("teacher entropy" in t for t in titles) and any("KL" in t for t in titles)
    assert any("k-NN" in t for t in titles) and not any("mlm_acc" in t for t in titles)
    assert fig._suptitle.get_text() == "dino · epoch 1/1 · loss 2.0000"


def test_picture_sample_spreads_over_classes_and_repeats(image_folder):
    from sslvit.data.dataset import build_dataset, first_items
    from sslvit.data.sample import spread_items

    ds = build_dataset(str(image_folder), "all", 16)
    assert {ds.labels[i] for i in range(8)} == {0}  # sorted order: the first 8 are all one class
    picked = spread_items(ds, 8, seed=0)
    labels = [y for _, y in picked]
    assert sorted(set(labels)) == [0, 1, 2] and max(labels.count(c) for c in range(3)) <= 3
    again = spread_items(ds, 8, seed=0)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (a, _), (b, _) in zip(picked, again))
    other = spread_items(ds, 8, seed=1)
    assert not all(np.array_equal(np.asarray(a), np.asarray(b)) for (a, _), (b, _) in zip(picked, other))
    assert len(first_items(ds, 8)) == 8


def test_picture_sample_of_shards_comes_from_several_shards(image_folder, tmp_path):
    from sslvit.data.dataset import build_dataset
    from sslvit.data.sample import spread_items
    from sslvit.data.shard_reader import ShardDataset
    from sslvit.data.shards import write_shards

    write_shards(image_folder, tmp_path / "shards", max_count=10, progress=False,
                 val_fraction=0)  # one split of 6 shards
    ds = build_dataset(str(tmp_path / "shards"), "train", 16)
    assert len(ds.urls) == 6
    shard_of = {}
    for i, url in enumerate(ds.urls):
        for img, _, _ in ShardDataset([url], 10, shuffle=False, markers=False, rank=0, world_size=1):
            shard_of[np.asarray(img).tobytes()] = i
    picked = spread_items(ds, 8, seed=0)
    shards = {shard_of[np.asarray(img).tobytes()] for img, _ in picked}
    assert len(picked) == 8 and len(shards) >= 4
    assert len({y for _, y in picked}) == 3
    assert [np.asarray(a).tobytes() for a, _ in spread_items(ds, 8, seed=0)] == \
        [np.asarray(a).tobytes() for a, _ in picked]


def test_pixel_tokenizer_codebook_picture_ranks_codes_by_use(tmp_path):
    """tokenizer_codebook.png: the most used codes first, each tile the code's own pattern, its
    share of the fitted patches under it."""
    import torch
    from PIL import Image

    from sslvit.pictures import grid_size_px
    from sslvit.tokenizers.codebook_picture import code_tiles, save_codebook_picture
    from sslvit.tokenizers.pixel import PixelTokenizer

    tok = PixelTokenizer(vocab=40, patch_size=4, pixel_size=4)
    torch.manual_seed(0)
    tok.codebook.copy_(torch.randn(40, 48))
    ids = torch.cat([torch.full((50,), 7), torch.full((30,), 3), torch.arange(40)])  # code 7 most used, then 3
    path = save_codebook_picture(tok, ids, tmp_path / "codebook.png", "a caption")
    assert Image.open(path).size == grid_size_px(4, 8, 1, notes=True)
    tiles = code_tiles(tok, torch.tensor([7, 3]))
    assert tiles.shape == (2, 4, 4, 3) and tiles.min() == 0.0 and tiles.max() == 1.0
    v = tok.codebook[7].reshape(3, 4, 4).permute(1, 2, 0)
    assert np.allclose(tiles[0], ((v - v.min()) / (v.max() - v.min())).numpy(), atol=1e-6)
    few = save_codebook_picture(tok, torch.tensor([7, 7, 3, 5]), tmp_path / "few.png", "three codes used")
    assert Image.open(few).size == grid_size_px(1, 3, 1, notes=True)  # only the codes some patch chose
