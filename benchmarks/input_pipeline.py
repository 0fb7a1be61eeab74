"""Does the input pipeline keep up with training?

    python benchmarks/input_pipeline.py [--workers 0 2] [--threads 1] [--configs ...]

For a quickstart-like configuration (64x128, batch 8), a 512x1024 one (batch 2) and
Cityscapes-size input (1024x2048 images, 512x1024 crops, batch 2; run it with --workers 4), it
compares the images/s the training data loader delivers (real data sets read from disk with the
training augmentation: random scale, jitter, crop, flip; the trainer's own loader) with the
images/s one training step consumes (the trainer's step: forward, loss, backward, optimizer
step, on a batch already in memory) for the student and the teacher. ratio = loader / step: above
1 the loader is not the bottleneck (given a core per worker beside training).

Synthetic data sets are generated once with the data package's generator into
`--data-root` (default /tmp/distillery-bench): quickstart's 96 train images per format, 16
images at 512x1024 and 12 at 1024x2048.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from distillery.data import build_datasets
from distillery.losses import build_objective
from distillery.models import build_model
from distillery.spec import DataSpec, ExperimentSpec, load_spec
from distillery.training.alternation import STUDENT, Phase
from distillery.training.cpu_memory import retain_freed_memory
from distillery.training.loaders import train_loader
from distillery.training.trainer import Learner, make_accelerator, make_optimizer, step_losses

REPO = Path(__file__).resolve().parents[1]


def quickstart(data_root: Path) -> tuple[ExperimentSpec, int]:
    spec = load_spec(REPO / "examples" / "quickstart.yaml")
    data = spec.data.model_dump()
    for refs in (data["train"], data["val"]):
        for ref in refs:
            ref["root"] = str(data_root / "quickstart" / ref["format"])
    return spec.model_copy(update={"data": DataSpec.model_validate(data)}), 8


def large(data_root: Path, base: ExperimentSpec) -> tuple[ExperimentSpec, int]:
    root = str(data_root / "512x1024" / "cityscapes")
    data = DataSpec.model_validate(
        {
            "train": [{"format": "cityscapes", "root": root}],
            "val": [{"format": "cityscapes", "root": root}],
            "image_size": [512, 1024],
            "synthetic": {"num_train": 16, "num_val": 2, "image_size": [512, 1024]},
        }
    )
    return base.model_copy(update={"data": data}), 2


def full_res(data_root: Path, base: ExperimentSpec) -> tuple[ExperimentSpec, int]:
    """Cityscapes-size input: 1024x2048 images, 512x1024 crops."""
    root = str(data_root / "1024x2048" / "cityscapes")
    data = DataSpec.model_validate(
        {
            "train": [{"format": "cityscapes", "root": root}],
            "val": [{"format": "cityscapes", "root": root}],
            "image_size": [512, 1024],
            "synthetic": {"num_train": 12, "num_val": 1, "image_size": [1024, 2048]},
        }
    )
    return base.model_copy(update={"data": data}), 2


def loader_rate(spec: ExperimentSpec, batch_size: int, workers: int, batches: int) -> float:
    """Steady-state images/s of the training loader (the first batch, which pays for worker
    start-up, is not counted)."""
    train_set, _ = build_datasets(spec.data, seed=spec.seed)
    g = torch.Generator().manual_seed(0)
    loader = train_loader(train_set, batch_size=batch_size, num_workers=workers, generator=g)
    n = min(batches, len(loader) - 1)
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    rate = n * batch_size / (time.perf_counter() - t0)
    del it
    return rate


def augment_ms(spec: ExperimentSpec, samples: int = 6) -> float:
    """Median ms of the training transform alone on one decoded image (main process)."""
    train_set, _ = build_datasets(spec.data, seed=spec.seed)
    ds = train_set.datasets[0]
    image, mask = ds.load(0)
    img_t = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    mask_t = torch.from_numpy(mask.astype("int64"))
    times = []
    for i in range(samples):
        g = torch.Generator().manual_seed(i)
        t0 = time.perf_counter()
        ds.transform(img_t, mask_t, g)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def step_rate(spec: ExperimentSpec, role: str, batch_size: int, repeats: int) -> float:
    """images/s of the trainer's step for `role` (teacher or student) on an in-memory batch."""
    stage = spec.teacher if role == "teacher" else spec.student
    accelerator = make_accelerator(stage.train, find_unused_parameters=False)
    h, w = spec.data.image_size
    images = torch.randn(batch_size, 3, h, w)
    masks = torch.randint(0, 19, (batch_size, h, w))
    model = build_model(stage.model).train()
    objective = build_objective(list(stage.losses), model)
    opt = make_optimizer(stage.train, list(model.parameters()))
    learner = Learner(STUDENT, model, objective, opt, None, [])

    def step() -> None:
        total, _ = step_losses(
            Phase(update=frozenset({STUDENT})), {STUDENT: learner}, None, images, masks,
            accelerator,
        )  # fmt: skip
        accelerator.backward(total)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return batch_size / statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the training step")
    ap.add_argument("--data-root", type=Path, default=Path("/tmp/distillery-bench"))
    ap.add_argument(
        "--configs",
        nargs="+",
        choices=("quickstart", "512x1024", "1024x2048"),
        default=["quickstart", "512x1024", "1024x2048"],
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    retain_freed_memory()  # as the trainer does on a CPU

    qs, qs_batch = quickstart(args.data_root)
    configs = {
        "quickstart": ("quickstart 64x128", qs, qs_batch, 10, 10),
        "512x1024": ("512x1024", *large(args.data_root, qs), 5, 3),
        "1024x2048": ("1024x2048 input, 512x1024 crops", *full_res(args.data_root, qs), 5, 2),
    }
    print(f"torch threads (training step): {torch.get_num_threads()}; loader workers: 1 thread")
    for key in args.configs:
        name, spec, batch, loader_batches, repeats = configs[key]
        t0 = time.perf_counter()
        build_datasets(spec.data)  # generate the synthetic set if absent
        made = time.perf_counter() - t0
        aug = augment_ms(spec)
        loads = {w: loader_rate(spec, batch, w, loader_batches) for w in args.workers}
        steps = {role: step_rate(spec, role, batch, repeats) for role in ("student", "teacher")}
        h, w = spec.data.image_size
        print()
        print(f"### {name} (batch {batch}, {h}x{w}; data set ready in {made:.1f} s)")
        print()
        print(f"training transform alone: {aug:.1f} ms per image (median, main process)")
        print()
        print("| loader workers | loader (img/s) | model | step (img/s) | ratio loader/step |")
        print("|---:|---:|---|---:|---:|")
        for nw, load in loads.items():
            for role, rate in steps.items():
                width = (spec.teacher if role == "teacher" else spec.student).model.width
                print(
                    f"| {nw} | {load:.1f} | {role} (width {width}) | {rate:.1f} "
                    f"| {load / rate:.2f} |"
                )


if __name__ == "__main__":
    main()
