from __future__ import annotations

import torch
from torch.utils.data import Dataset

from distillery.training.loaders import epoch_seed, shard_indices, train_loader, val_loader


class Indexed(Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> dict:
        return {"image": torch.full((1,), float(i)), "mask": torch.zeros(1), "name": f"img{i}"}


def _order(loader, generator, seed: int, epoch: int) -> list[int]:
    generator.manual_seed(epoch_seed(seed, epoch))
    return [int(x) for b in loader for x in b["image"].flatten()]


def test_an_epoch_has_the_same_order_whatever_came_before() -> None:
    g1, g2 = torch.Generator(), torch.Generator()
    a = train_loader(Indexed(), batch_size=3, num_workers=0, generator=g1)
    b = train_loader(Indexed(), batch_size=3, num_workers=0, generator=g2)
    straight = [_order(a, g1, 7, e) for e in (1, 2)]
    resumed = _order(b, g2, 7, 2)  # a fresh loader starting at epoch 2
    assert straight[1] == resumed
    assert straight[0] != straight[1]
    assert len(straight[0]) == 9  # drop_last: 3 full batches of 10 images


def test_num_samples_caps_an_epoch() -> None:
    g = torch.Generator()
    loader = train_loader(Indexed(), batch_size=2, num_workers=0, generator=g, num_samples=4)
    assert len(loader) == 2 and len(set(_order(loader, g, 0, 1))) == 4


def test_val_shards_are_disjoint_and_cover_everything() -> None:
    shards = [shard_indices(7, r, 3) for r in range(3)]
    assert sorted(i for s in shards for i in s) == list(range(7))
    names = [
        [
            n
            for b in val_loader(Indexed(), batch_size=4, num_workers=0, rank=r, world=2)
            for n in (item["name"] for item in b)
        ]
        for r in range(2)
    ]
    assert set(names[0]).isdisjoint(names[1]) and len(names[0]) + len(names[1]) == 10
