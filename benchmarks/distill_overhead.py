"""Distillation overhead of the trainer's offline step.

    python benchmarks/distill_overhead.py [--spec examples/quickstart.yaml] [--repeats 20]

ratio = t(one offline-distillation step) / (t(one student training step) + t(one teacher
forward in inference mode)), on the same batch, measured in one run: median of `--repeats`
after warm-up, the three timed in turn in every repeat so that they share the machine's drift.
Target: <= 1.10 (distilling should cost little more than running the teacher beside the
student). The steps are the trainer's own (`step_losses`, `accelerator.backward`, optimizer
step); the sizes are the spec's (quickstart: teacher UNet width 16 / student width 4, depth 4,
batch 8, 64x128). Configurations: the spec's distillation losses, logit_kd alone, and logit_kd
plus a feature term (feature_mse on the bottleneck, through a learned 1x1 adapter).

With a teacher cache (`distillation.teacher_cache`) the step reads the cut teacher logits from
the batch instead of running the teacher: its row gives ratio = t(distill step with the cache) /
t(student step) (goal <= 1.15), and the loader's extra work per image (load the cached fp16
maps, cut them with the crop's geometry) is timed apart, per image, in the same units.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import TypeAdapter

from distillery.data import TrainTransform
from distillery.data.transforms import CropGeometry
from distillery.losses import build_objective
from distillery.models import build_model
from distillery.spec import LossTerm, TrainSpec, load_spec
from distillery.training.alternation import STUDENT, Phase
from distillery.training.cpu_memory import retain_freed_memory
from distillery.training.trainer import Learner, make_accelerator, make_optimizer, step_losses

REPO = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this thread) of one call."""
    sync(device)
    w0, c0 = time.perf_counter(), time.thread_time()
    fn()
    sync(device)
    return time.perf_counter() - w0, time.thread_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--spec", type=Path, default=REPO / "examples" / "quickstart.yaml")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument(
        "--threads", type=int, default=1,
        help="torch threads on a CPU (default 1: the thread's CPU time is then the whole cost, "
        "unaffected by other processes on a shared machine)",
    )  # fmt: skip
    ap.add_argument(
        "--no-retain-memory", action="store_true",
        help="leave glibc's malloc thresholds alone (the trainer raises them on a CPU)",
    )  # fmt: skip
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.no_retain_memory:
        retain_freed_memory()
    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads)

    spec = load_spec(args.spec)
    train: TrainSpec = spec.student.train
    h, w = spec.data.image_size
    n = train.batch_size
    accelerator = make_accelerator(train, find_unused_parameters=False)
    device = accelerator.device
    torch.manual_seed(0)
    images = torch.randn(n, 3, h, w, device=device)
    masks = torch.randint(0, 19, (n, h, w), device=device)
    masks[:, :2] = 255

    teacher = build_model(spec.teacher.model).to(device).eval().requires_grad_(False)

    def learner(terms: list, with_teacher: bool) -> Learner:
        torch.manual_seed(1)
        model = build_model(spec.student.model).to(device).train()
        objective = build_objective(terms, model, teacher if with_teacher else None).to(device)
        opt = make_optimizer(train, [*model.parameters(), *objective.parameters()])
        return Learner(STUDENT, model, objective, opt, None, list(objective.student_taps))

    def train_step(
        lr: Learner, frozen: torch.nn.Module | None, cached: torch.Tensor | None = None
    ) -> None:
        total, _ = step_losses(
            Phase(update=frozenset({STUDENT})),
            {STUDENT: lr},
            frozen,
            images,
            masks,
            accelerator,
            teacher_logits=cached,
        )
        accelerator.backward(total)
        lr.optimizer.step()
        lr.optimizer.zero_grad(set_to_none=True)

    def teacher_forward() -> None:
        with torch.inference_mode(), accelerator.autocast():
            teacher(images)

    parse = TypeAdapter(list[LossTerm]).validate_python
    spec_terms = [t.model_dump() for t in spec.distillation.losses]
    kd = {"kind": "logit_kd", "temperature": 4.0}
    feature = {"kind": "feature_mse", "student_tap": "bottleneck", "teacher_tap": "bottleneck"}
    configs = {
        "spec losses (" + " + ".join(t["kind"] for t in spec_terms) + ")": spec_terms,
        "logit_kd only": [kd],
        "logit_kd + feature_mse(bottleneck)": [kd, feature],
    }
    baseline = learner(list(spec.student.losses), with_teacher=False)
    print(
        f"device: {device}; teacher width {spec.teacher.model.width}, student width "
        f"{spec.student.model.width}, depth {spec.student.model.depth}; batch {n} x {h}x{w}; "
        f"median of {args.repeats}; torch threads {torch.get_num_threads()}"
    )
    print()
    cpu = device.type == "cpu" and torch.get_num_threads() == 1
    distills = {name: learner(parse(terms), with_teacher=True) for name, terms in configs.items()}
    jobs: dict[str, Callable[[], None]] = {
        "student": lambda: train_step(baseline, None),
        "teacher": teacher_forward,
    }
    for name, lr in distills.items():
        jobs[name] = lambda lr=lr: train_step(lr, teacher)
    # the cache's batch: fp16 logits at the crop size, as the loader hands them over
    cached_logits = torch.randn(n, spec.teacher.model.num_classes, h, w).half().to(device)
    cache_name = next(iter(configs)) + " + teacher cache"
    cached_learner = learner(parse(spec_terms), with_teacher=True)
    jobs[cache_name] = lambda: train_step(cached_learner, teacher, cached_logits)
    stride = spec.distillation.teacher_cache.stride
    tf = TrainTransform((h, w), spec.data.augment)
    maps = torch.randn(2, spec.teacher.model.num_classes, -(-h // stride), -(-w // stride)).half()
    geometry = CropGeometry((round(h * 1.25), round(w * 1.25)), (h // 8, w // 8), True)
    jobs["cut"] = lambda: tf.cut(maps[1], geometry).half()
    names = list(jobs)
    for _ in range(args.warmup):
        for fn in jobs.values():
            fn()
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    for r in range(args.repeats):  # every job once per repeat, in a rotating order
        for k in names[r % len(names) :] + names[: r % len(names)]:
            samples[k].append(timed(jobs[k], device))
    wall = {k: statistics.median(w for w, _ in v) * 1e3 for k, v in samples.items()}
    used = (
        {k: statistics.median(c for _, c in v) * 1e3 for k, v in samples.items()} if cpu else wall
    )
    unit = "CPU ms of the benchmark thread" if cpu else "wall ms"
    print(f"times: median {unit}; the last column is the same ratio from wall-clock medians")
    print()
    print(
        "| configuration | student step | teacher fwd (inference) | distill step | ratio ", end=""
    )
    print("| ratio (wall) |")
    print("|---|---:|---:|---:|---:|---:|")
    s, t = used["student"], used["teacher"]
    for name in distills:
        d = used[name]
        ratio_wall = wall[name] / (wall["student"] + wall["teacher"])
        print(f"| {name} | {s:.1f} | {t:.1f} | {d:.1f} | {d / (s + t):.3f} | {ratio_wall:.3f} |")
    print()
    print(
        f"with a teacher cache (stride {stride}); "
        "ratio = distill step / student step (goal <= 1.15)"
    )
    print()
    print(
        "| configuration | student step | distill step | ratio | ratio (wall) "
        "| loader cut per image |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    d, cut = used[cache_name], used["cut"]
    ratio_wall = wall[cache_name] / wall["student"]
    print(f"| {cache_name} | {s:.1f} | {d:.1f} | {d / s:.3f} | {ratio_wall:.3f} | {cut:.2f} |")


if __name__ == "__main__":
    main()
