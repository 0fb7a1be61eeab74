"""The Objective: composition, names, taps, teacher handling, gradients, ignore pixels, autocast."""

from __future__ import annotations

import pytest
import torch

from distillery.losses import (
    LOSSES,
    ModelOutput,
    Objective,
    build_objective,
    cross_entropy,
    focal_loss,
    logit_kd,
    run_with_taps,
)
from distillery.models import UNet
from distillery.spec import (
    DISTILL_KINDS,
    SUPERVISED_KINDS,
    AttentionTransferTerm,
    ChannelWiseKDTerm,
    ConfidencePenaltyTerm,
    CrossEntropyTerm,
    DistillationSpec,
    DISTTerm,
    FeatureMSETerm,
    FocalTerm,
    LogitKDTerm,
    OhemTerm,
)

C = 5


def _models() -> tuple[UNet, UNet]:
    torch.manual_seed(0)
    return UNet(num_classes=C, depth=2, width=4), UNet(num_classes=C, depth=2, width=8)


def _batch(ignore_rows: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 16, 32, generator=g)
    target = torch.randint(0, C, (2, 16, 32), generator=g)
    target[:, :ignore_rows] = 255
    return images, target


ALL_TERMS = [
    CrossEntropyTerm(weight=0.5, label_smoothing=0.1),
    FocalTerm(gamma=2.0),
    OhemTerm(threshold=0.5),
    ConfidencePenaltyTerm(weight=0.1),
    LogitKDTerm(weight=2.0, temperature=2.0),
    ChannelWiseKDTerm(temperature=4.0),
    ChannelWiseKDTerm(weight=0.3, tap="bottleneck"),
    DISTTerm(weight=0.7, temperature=2.0, beta=2.0),
    FeatureMSETerm(student_tap="decoder.1", teacher_tap="decoder.1"),
    AttentionTransferTerm(weight=50.0, student_tap="encoder.0", teacher_tap="encoder.1"),
]
ALL_NAMES = [
    "cross_entropy",
    "focal",
    "ohem",
    "confidence_penalty",
    "logit_kd",
    "channel_wise_kd",
    "channel_wise_kd/bottleneck",
    "dist",
    "feature_mse/decoder.1",
    "attention_transfer/encoder.0->encoder.1",
]


def _outputs(objective: Objective, student: UNet, teacher: UNet, images: torch.Tensor):
    s = run_with_taps(student, images, objective.student_taps)
    t = run_with_taps(teacher, images, objective.teacher_taps)  # with grad: must be detached
    return s, t


def test_registry_covers_every_spec_kind() -> None:
    assert set(LOSSES.names()) == SUPERVISED_KINDS | DISTILL_KINDS


def test_total_is_the_weighted_sum_and_every_component_is_logged() -> None:
    student, teacher = _models()
    objective = build_objective(ALL_TERMS, student, teacher)
    assert objective.names == ALL_NAMES
    assert objective.student_taps == ["bottleneck", "decoder.1", "encoder.0"]
    assert objective.teacher_taps == ["bottleneck", "decoder.1", "encoder.1"]
    images, target = _batch()
    s, t = _outputs(objective, student, teacher, images)
    total, parts = objective(s, target, t)
    assert list(parts) == [*ALL_NAMES, "total"]
    assert all(not v.requires_grad and v.dtype == torch.float32 for v in parts.values())
    weighted = sum(term.weight * parts[n] for term, n in zip(ALL_TERMS, ALL_NAMES, strict=True))
    assert total.item() == pytest.approx(weighted.item(), rel=1e-5)
    assert parts["total"].item() == pytest.approx(total.item())
    # components are the functional losses, unweighted
    assert parts["cross_entropy"].item() == pytest.approx(
        cross_entropy(s.logits, target, label_smoothing=0.1).item(), rel=1e-6
    )
    assert parts["logit_kd"].item() == pytest.approx(
        logit_kd(s.logits, t.logits, 2.0, target=target).item(), rel=1e-6
    )
    assert parts["confidence_penalty"] < 0


def test_gradients_reach_student_and_adapters_but_never_the_teacher() -> None:
    student, teacher = _models()
    objective = Objective(ALL_TERMS, student, teacher)
    adapters = list(objective.parameters())
    assert len(adapters) == 4  # two 1x1 convs (weight, bias): CWD tap + feature MSE
    assert not {id(p) for p in adapters} & {id(p) for p in student.parameters()}
    images, target = _batch()
    s, t = _outputs(objective, student, teacher, images)
    assert t.logits.requires_grad  # the objective must detach it
    total, _ = objective(s, target, t)
    total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in adapters)
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_kinds_selects_terms_for_alternating_objectives() -> None:
    student, teacher = _models()
    objective = Objective(ALL_TERMS, student, teacher)
    images, target = _batch()
    s = run_with_taps(student, images, objective.student_taps)
    total, parts = objective(s, target, kinds=SUPERVISED_KINDS)  # no teacher output needed
    assert list(parts) == ["cross_entropy", "focal", "ohem", "confidence_penalty", "total"]
    weighted = 0.5 * parts["cross_entropy"] + parts["focal"] + parts["ohem"]
    weighted = weighted + 0.1 * parts["confidence_penalty"]
    assert total.item() == pytest.approx(weighted.item(), rel=1e-5)
    total, parts = objective(s, target, kinds=set())
    assert list(parts) == ["total"] and total.item() == 0.0
    total.backward()  # a zero that still backpropagates
    with pytest.raises(ValueError, match="unknown loss kinds"):
        objective(s, target, kinds={"crossentropy"})
    with pytest.raises(ValueError, match="'logit_kd' needs the teacher's output"):
        objective(s, target, kinds={"logit_kd"})


def test_distillation_terms_without_a_teacher_are_named_in_the_error() -> None:
    student, _ = _models()
    with pytest.raises(ValueError, match=r"loss term 1 \(feature_mse\).*needs a teacher"):
        Objective(
            [CrossEntropyTerm(), FeatureMSETerm(student_tap="bottleneck", teacher_tap="encoder.0")],
            student,
        )
    assert Objective([CrossEntropyTerm(), FocalTerm()], student).teacher_taps == []


def test_unknown_taps_list_the_models_taps() -> None:
    student, teacher = _models()
    with pytest.raises(KeyError, match=r"student_tap 'decoder\.7'.*encoder\.0, encoder\.1"):
        Objective(
            [FeatureMSETerm(student_tap="decoder.7", teacher_tap="decoder.1")], student, teacher
        )
    with pytest.raises(KeyError, match=r"'encoder\.9' is not a tap of the teacher.*bottleneck"):
        Objective(
            [AttentionTransferTerm(student_tap="encoder.0", teacher_tap="encoder.9")],
            student,
            teacher,
        )
    with pytest.raises(KeyError, match=r"tap 'neck'"):
        Objective([ChannelWiseKDTerm(tap="neck")], student, teacher)


def test_a_missing_feature_in_the_output_is_a_clear_error() -> None:
    student, teacher = _models()
    objective = Objective(
        [FeatureMSETerm(student_tap="decoder.0", teacher_tap="decoder.0")], student, teacher
    )
    images, target = _batch()
    s = ModelOutput(student(images))
    t = run_with_taps(teacher, images, objective.teacher_taps)
    with pytest.raises(KeyError, match=r"student output has no feature 'decoder\.0'"):
        objective(s, target, t)


def test_class_weights() -> None:
    student, _ = _models()
    weights = torch.linspace(0.5, 2.0, C)
    with pytest.raises(ValueError, match=r"loss term 0 \(focal\).*needs class weights"):
        Objective([FocalTerm(class_weights="enet")], student)
    with pytest.raises(ValueError, match=r"shape \(5,\)"):
        Objective([CrossEntropyTerm(class_weights="enet")], student, class_weights=torch.ones(3))
    with pytest.raises(ValueError, match="weights given are for enet"):
        Objective(
            [CrossEntropyTerm(class_weights="median_frequency")],
            student,
            class_weights={"enet": weights},
        )
    objective = Objective(
        [
            CrossEntropyTerm(class_weights="median_frequency"),
            CrossEntropyTerm(),
            FocalTerm(class_weights="enet", gamma=1.0),
            OhemTerm(class_weights="enet"),
        ],
        student,
        class_weights={"median_frequency": weights, "enet": weights.flip(0)},
    )
    assert objective.names == ["cross_entropy", "cross_entropy#2", "focal", "ohem"]
    assert "class_weights" not in str(list(objective.state_dict()))
    images, target = _batch()
    logits = student(images)
    _, parts = objective(ModelOutput(logits), target)
    assert parts["cross_entropy"].item() == pytest.approx(
        cross_entropy(logits, target, weights).item(), rel=1e-6
    )
    assert parts["cross_entropy#2"].item() == pytest.approx(
        cross_entropy(logits, target).item(), rel=1e-6
    )
    assert parts["focal"].item() == pytest.approx(
        focal_loss(logits, target, 1.0, weights.flip(0)).item(), rel=1e-6
    )
    assert parts["cross_entropy"].item() != pytest.approx(parts["cross_entropy#2"].item())


def test_ignored_pixels_change_no_loss() -> None:
    student, teacher = _models()
    terms = [
        t
        for t in ALL_TERMS
        if getattr(t, "tap", "logits") == "logits" and not hasattr(t, "student_tap")
    ]
    objective = Objective(terms, student, teacher)
    g = torch.Generator().manual_seed(2)
    s_logits, t_logits = torch.randn(2, C, 8, 8, generator=g), torch.randn(2, C, 8, 8, generator=g)
    target = torch.randint(0, C, (2, 8, 8), generator=g)
    target[0, :2] = 255
    target[1, :, 5:] = 255
    _, before = objective(ModelOutput(s_logits), target, ModelOutput(t_logits))
    ignored = (target == 255).unsqueeze(1).expand_as(s_logits)
    s2 = torch.where(ignored, 30 * torch.randn(s_logits.shape, generator=g), s_logits)
    t2 = torch.where(ignored, 30 * torch.randn(s_logits.shape, generator=g), t_logits)
    _, after = objective(ModelOutput(s2), target, ModelOutput(t2))
    assert set(before) == {*objective.names, "total"} and len(objective.names) == 7
    for name in before:
        assert after[name].item() == pytest.approx(before[name].item(), rel=1e-6, abs=1e-7), name
    # ... while the same change at a valid pixel does change them
    s3 = s_logits.clone()
    s3[0, :, 4, 4] += torch.arange(C) * 3.0
    _, changed = objective(ModelOutput(s3), target, ModelOutput(t_logits))
    assert all(changed[n] != before[n] for n in objective.names)


def test_student_at_another_resolution_is_resized_to_the_teacher() -> None:
    student, teacher = _models()
    objective = Objective([LogitKDTerm(), ChannelWiseKDTerm()], student, teacher)
    s_logits = torch.randn(1, C, 4, 4, requires_grad=True)
    t_logits = torch.randn(1, C, 8, 8)
    target = torch.randint(0, C, (1, 8, 8))
    total, parts = objective(ModelOutput(s_logits), target, ModelOutput(t_logits))
    total.backward()
    assert s_logits.grad.abs().sum() > 0 and parts["logit_kd"] > 0


def test_online_mutual_learning_with_roles_swapped() -> None:
    student, teacher = _models()
    teacher_losses = [
        *DistillationSpec().teacher_losses,
        FeatureMSETerm(student_tap="decoder.1", teacher_tap="bottleneck"),
    ]
    # the teacher's objective: the teacher model is the one trained, the student its "teacher"
    objective = Objective(teacher_losses, student=teacher, teacher=student)
    adapter = objective.losses[2].adapter.proj
    assert adapter.in_channels == teacher.tap_channels("decoder.1") == 8
    assert adapter.out_channels == student.tap_channels("bottleneck") == 16
    assert objective.names == ["cross_entropy", "logit_kd", "feature_mse/decoder.1->bottleneck"]
    images, target = _batch()
    t_out = run_with_taps(teacher, images, objective.student_taps)
    s_out = run_with_taps(student, images, objective.teacher_taps)
    total, _ = objective(t_out, target, s_out)
    total.backward()
    assert all(p.grad is not None for p in teacher.parameters())
    assert all(p.grad is None for p in student.parameters())
    assert adapter.weight.grad is not None


def test_terms_may_be_given_as_mappings() -> None:
    student, teacher = _models()
    objective = Objective(
        [{"kind": "cross_entropy"}, {"kind": "logit_kd", "temperature": 1.0}], student, teacher
    )
    assert objective.names == ["cross_entropy", "logit_kd"]
    assert objective.terms[1].temperature == 1.0


def test_bf16_autocast_gives_float32_losses_close_to_fp32() -> None:
    student, teacher = _models()
    objective = Objective(ALL_TERMS, student, teacher)
    images, target = _batch()
    student.eval()
    teacher.eval()
    s, t = _outputs(objective, student, teacher, images)
    _, ref = objective(s, target, t)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s16, t16 = _outputs(objective, student, teacher, images)
        total, parts = objective(s16, target, t16)
    total.backward()
    assert total.dtype == torch.float32
    for name, value in parts.items():
        assert value.dtype == torch.float32 and torch.isfinite(value), name
    assert parts["cross_entropy"].item() == pytest.approx(ref["cross_entropy"].item(), rel=0.05)
    assert parts["logit_kd"].item() == pytest.approx(ref["logit_kd"].item(), rel=0.2, abs=1e-3)


def test_a_few_steps_on_the_objective_reduce_it() -> None:
    student, teacher = _models()
    objective = Objective(
        [
            CrossEntropyTerm(),
            LogitKDTerm(temperature=2.0),
            FeatureMSETerm(student_tap="bottleneck", teacher_tap="bottleneck"),
        ],
        student,
        teacher,
    )
    optim = torch.optim.Adam([*student.parameters(), *objective.parameters()], lr=1e-2)
    images, target = _batch()
    teacher.eval()
    with torch.no_grad():
        t = run_with_taps(teacher, images, objective.teacher_taps)
    first = None
    for _ in range(15):
        total, parts = objective(run_with_taps(student, images, objective.student_taps), target, t)
        optim.zero_grad()
        total.backward()
        optim.step()
        first = parts if first is None else first
    assert parts["total"] < first["total"]
    assert parts["feature_mse/bottleneck"] < first["feature_mse/bottleneck"]
