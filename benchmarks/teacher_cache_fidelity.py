"""How close the teacher cache's targets are to the live teacher's, per stride.

    python benchmarks/teacher_cache_fidelity.py --teacher TEACHER.pt \\
        [--spec examples/quickstart.yaml] [--strides 1,2,4,8] [--images 96]

For the first `--images` training crops of the spec's data (its augmentation: random scale,
crop, flip and colour jitter, exactly as training draws them) it compares the cut cached logits
with the teacher run on the crop itself (what offline distillation without a cache uses), over
the labelled pixels: the share of pixels whose argmax agrees, the mean KL(live || cached) of the
softmax at T=1 (nats per pixel), and the same with the jitter and scaling turned off (scale 1:
only the crop's border context and fp16 differ). Also the precompute's time and the cache's size.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from distillery.data import build_datasets
from distillery.inference import segment
from distillery.models.checkpoint import load_model_checkpoint
from distillery.spec import DataSpec, load_spec
from distillery.training.teacher_cache import attach_teacher_cache, ensure_teacher_cache

REPO = Path(__file__).resolve().parents[1]


def compare(teacher: torch.nn.Module, train, n: int) -> tuple[float, float]:
    """(argmax agreement, mean KL(live || cached)) over the labelled pixels of `n` items."""
    agree = kl = pixels = 0.0
    for i in range(n):
        item = train[i]
        valid = item["mask"] != 255
        with torch.inference_mode():
            live = segment(teacher, item["image"][None], item["mask"].shape)[0]
        cached = item["teacher_logits"].float()
        agree += float((live.argmax(0) == cached.argmax(0))[valid].sum())
        div = F.kl_div(
            cached.log_softmax(0), live.log_softmax(0), log_target=True, reduction="none"
        )
        kl += float(div.sum(0)[valid].sum())
        pixels += float(valid.sum())
    return agree / pixels, kl / pixels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--teacher", type=Path, required=True, help="an exported teacher model.pt")
    ap.add_argument("--spec", type=Path, default=REPO / "examples" / "quickstart.yaml")
    ap.add_argument("--strides", default="1,2,4,8")
    ap.add_argument("--images", type=int, default=96)
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = load_spec(args.spec)
    teacher = load_model_checkpoint(args.teacher)[0].eval()
    plain = spec.data.augment.model_copy(
        update={"scale_range": (1.0, 1.0), "brightness": 0.0, "contrast": 0.0, "saturation": 0.0}
    )
    data = {
        "augmented": spec.data,
        "scale 1, no jitter": DataSpec.model_validate(
            spec.data.model_dump() | {"augment": plain.model_dump()}
        ),
    }
    sets = {name: build_datasets(d, seed=spec.seed)[0] for name, d in data.items()}
    n = min(args.images, len(sets["augmented"]))
    h, w = spec.data.image_size
    print(
        f"teacher {args.teacher}; {n} training crops of {h}x{w}; "
        f"{len(sets['augmented'])} training images cached"
    )
    print()
    print(
        "| stride | precompute s | cache MB | agreement (augmented) | KL (augmented) "
        "| agreement (scale 1, no jitter) | KL (scale 1, no jitter) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for stride in (int(s) for s in args.strides.split(",")):
            start = time.perf_counter()
            cache = ensure_teacher_cache(
                teacher, args.teacher, sets["augmented"].datasets, (h, w), stride, Path(tmp)
            )
            seconds = time.perf_counter() - start
            size = sum(p.stat().st_size for p in cache.folder.rglob("*.npy")) / 2**20
            row = [f"{stride}", f"{seconds:.1f}", f"{size:.1f}"]
            for train in sets.values():
                attach_teacher_cache(train.datasets, cache)
                agree, kl = compare(teacher, train, n)
                row += [f"{100 * agree:.1f}%", f"{kl:.4f}"]
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
