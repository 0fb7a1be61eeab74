"""ConfusionMatrix / SegMetrics: hand-computed IoUs, the ignore rules, and the cross-process sum."""

from __future__ import annotations

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from distillery.data.labels import CLASS_NAMES
from distillery.metrics import ConfusionMatrix


def _score(pred: list, target: list, num_classes: int = 19):
    cm = ConfusionMatrix(num_classes=num_classes)
    cm.update(torch.tensor(pred), torch.tensor(target))
    return cm.compute()


def test_hand_computed_iou_with_ignore_and_absent_classes() -> None:
    target = [[0, 0, 1, 1], [2, 255, 1, 0]]
    pred = [[0, 1, 1, 1], [2, 0, 255, 0]]
    # labelled pixels (gt, pred): (0,0) (0,1) (1,1) (1,1) (2,2) (1,255) (0,0); gt 255 not scored
    # class 0: TP 2, FN 1, FP 0 -> 2/3;  class 1: TP 2, FN 1 (predicted 255), FP 1 -> 2/4
    # class 2: TP 1 -> 1;  classes 3..18 absent from both -> None
    m = _score(pred, target)
    assert m.iou[0] == pytest.approx(2 / 3)
    assert m.iou[1] == pytest.approx(0.5)
    assert m.iou[2] == pytest.approx(1.0)
    assert m.iou[3:] == [None] * 16
    assert m.miou == pytest.approx((2 / 3 + 0.5 + 1.0) / 3)
    assert m.pixel_accuracy == pytest.approx(5 / 7)
    assert m.num_pixels == 7


def test_class_predicted_but_absent_from_ground_truth_counts_as_zero() -> None:
    m = _score([0, 0, 5, 5], [0, 0, 0, 0])
    assert m.iou[0] == pytest.approx(0.5)
    assert m.iou[5] == 0.0  # only false positives: in the mean, not None
    assert m.miou == pytest.approx(0.25)
    assert m.pixel_accuracy == pytest.approx(0.5)


def test_perfect_prediction_scores_one() -> None:
    target = torch.randint(0, 19, (2, 8, 16))
    target[:, 0] = 255
    m = _score(target.tolist(), target.tolist())
    assert m.miou == 1.0
    assert m.pixel_accuracy == 1.0
    assert all(v in (1.0, None) for v in m.iou)


def test_matches_per_class_set_iou_on_random_data() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 6, (4, 16, 32), generator=g)
    target[target == 5] = 255
    pred = torch.randint(0, 6, (4, 16, 32), generator=g)  # class 5: predicted, never in gt
    cm = ConfusionMatrix()
    for p, t in zip(pred, target, strict=True):  # several updates add up
        cm.update(p, t)
    m = cm.compute()
    t, p = target.numpy(), pred.numpy()
    valid = t != 255
    for c in range(19):
        inter = ((t == c) & (p == c) & valid).sum()
        union = (((t == c) | (p == c)) & valid).sum()
        expected = None if union == 0 else inter / union
        assert m.iou[c] == (None if expected is None else pytest.approx(expected)), c
    assert m.iou[5] == 0.0
    assert m.pixel_accuracy == pytest.approx(((t == p) & valid).sum() / valid.sum())


def test_as_dict_is_json_with_class_names() -> None:
    d = json.loads(json.dumps(_score([0, 1], [0, 0]).as_dict()))
    assert list(d["iou"]) == list(CLASS_NAMES)
    assert d["iou"]["road"] == 0.5 and d["iou"]["sidewalk"] == 0.0 and d["iou"]["car"] is None
    assert set(d) == {"miou", "iou", "pixel_accuracy"}


def test_no_labelled_pixels_gives_zero_not_nan() -> None:
    m = _score([1, 2], [255, 255])
    assert m.miou == 0.0 and m.pixel_accuracy == 0.0 and m.iou == [None] * 19


def test_bad_inputs_are_errors() -> None:
    cm = ConfusionMatrix()
    with pytest.raises(ValueError, match="shape"):
        cm.update(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        cm.update(torch.zeros(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[19\]"):
        cm.update(torch.zeros(2, dtype=torch.long), torch.tensor([0, 19]))
    with pytest.raises(ValueError, match="collides"):
        ConfusionMatrix(num_classes=19, ignore_index=3)


def test_reset_and_uint8_inputs() -> None:
    cm = ConfusionMatrix(num_classes=3)
    cm.update(torch.tensor([0, 1], dtype=torch.uint8), torch.tensor([0, 1], dtype=torch.uint8))
    assert cm.confusion.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
    cm.reset()
    assert cm.matrix.sum() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_counts_on_cuda_match_cpu() -> None:
    g = torch.Generator().manual_seed(1)
    target = torch.randint(0, 20, (2, 32, 64), generator=g)
    target[target == 19] = 255
    pred = torch.randint(0, 19, (2, 32, 64), generator=g)
    cpu, gpu = ConfusionMatrix(), ConfusionMatrix(device="cuda")
    cpu.update(pred, target)
    gpu.update(pred.cuda(), target.cuda())
    assert gpu.matrix.device.type == "cuda"
    assert torch.equal(gpu.matrix.cpu(), cpu.matrix)
    assert gpu.compute() == cpu.compute()


def test_reduce_is_a_no_op_on_one_process() -> None:
    from accelerate import Accelerator

    cm = ConfusionMatrix(num_classes=3)
    cm.update(torch.tensor([0, 1, 2]), torch.tensor([0, 1, 1]))
    before = cm.matrix.clone()
    cm.reduce(Accelerator(cpu=True))
    assert torch.equal(cm.matrix, before)


def _reduce_worker(rank: int, world: int, port: int, queue) -> None:  # noqa: ANN001
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    cm = ConfusionMatrix(num_classes=3, device=acc.device)
    # rank 0 scores (0,0) (1,1); rank 1 scores (1,1) (1,2)
    cm.update(torch.tensor([rank, 1 + rank]), torch.tensor([rank, 1]))
    cm.reduce(acc)
    m = cm.compute()
    queue.put((rank, cm.confusion.tolist(), m.miou))
    acc.wait_for_everyone()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_reduce_sums_over_two_processes() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_reduce_worker, args=(2, port, queue), nprocs=2)
    results = sorted(queue.get() for _ in range(2))
    expected = [[1, 0, 0], [0, 2, 1], [0, 0, 0]]
    for _rank, confusion, miou in results:
        assert confusion == expected  # both processes hold the global sum
        # class 0: 1/1; class 1: 2/3; class 2: 0/1
        assert miou == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert np.array(results[0][1]).sum() == 4
