import torch

from sslvit.masking import random_masking


def test_kept_count_restore_and_per_row_masks():
    B, N = 8, 196
    ids_keep, mask, ids_restore = random_masking(B, N, 0.75)
    assert ids_keep.shape == (B, 49)
    assert torch.all(mask.sum(1) == N - 49)
    # visible indices are exactly the unmasked positions
    for b in range(B):
        assert set(ids_keep[b].tolist()) == set(torch.nonzero(mask[b] == 0).flatten().tolist())
    # ids_restore inverts the shuffle: shuffled order gathered by ids_restore is raster order
    noise_order = torch.argsort(ids_restore, dim=1)  # == ids_shuffle
    assert torch.equal(torch.gather(noise_order, 1, ids_restore), torch.arange(N).expand(B, -1))
    assert torch.equal(noise_order[:, :49], ids_keep)
    # every row has its own mask
    assert len({tuple(m.tolist()) for m in mask}) == B


def test_kept_count_rounds_down_like_mae():
    ids_keep, mask, _ = random_masking(2, 10, 0.75)
    assert ids_keep.shape[1] == int(10 * 0.25) == 2
