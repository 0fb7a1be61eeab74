"""GlobalBatchNorm on 2 gloo processes computes what BatchNorm2d computes on the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from distillery.models import build_model
from distillery.models.sync_norm import GlobalBatchNorm, convert_sync_batchnorm, count_synced
from distillery.spec import ModelSpec


def _batch() -> torch.Tensor:
    return torch.randn(4, 3, 5, 6, generator=torch.Generator().manual_seed(0)) * 3 + 1


def _rank(rank: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        bn = GlobalBatchNorm(3)
        with torch.no_grad():
            bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        x = _batch()[2 * rank : 2 * rank + 2].requires_grad_(True)
        y = bn(x)
        (y * torch.arange(y.numel()).view_as(y).float()).sum().backward()
        dist.all_reduce(bn.weight.grad)
        torch.save(
            {"y": y.detach(), "dx": x.grad, "dw": bn.weight.grad, "rm": bn.running_mean,
             "rv": bn.running_var},
            f"{out}-{rank}.pt",
        )  # fmt: skip
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_global_batchnorm_matches_batchnorm_on_the_whole_batch(tmp_path: Path) -> None:
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_rank, args=(init, str(tmp_path / "r")), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"r-{r}.pt") for r in (0, 1)]

    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
    x = _batch().requires_grad_(True)
    y = bn(x)
    weights = torch.cat([torch.arange(2 * 3 * 5 * 6).float().view(2, 3, 5, 6)] * 2)
    (y * weights).sum().backward()
    for r in (0, 1):
        s = slice(2 * r, 2 * r + 2)
        torch.testing.assert_close(got[r]["y"], y[s].detach(), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(got[r]["dx"], x.grad[s], rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(got[r]["dw"], bn.weight.grad, rtol=1e-3, atol=1e-3)
        torch.testing.assert_close(got[r]["rm"], bn.running_mean)
        torch.testing.assert_close(got[r]["rv"], bn.running_var)


def test_conversion_keeps_weights_and_state_dict_keys() -> None:
    model = build_model(ModelSpec(width=4, depth=2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    synced = convert_sync_batchnorm(model, torch.device("cpu"))
    assert count_synced(synced) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0
    after = synced.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    x = torch.randn(2, 3, 32, 64)
    synced.eval(), model.eval()
    assert torch.equal(synced(x), model(x))  # eval / no process group: plain BatchNorm


@pytest.mark.gpu
def test_cuda_conversion_uses_torch_syncbatchnorm() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = convert_sync_batchnorm(build_model(ModelSpec(width=4, depth=2)), torch.device("cuda"))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
