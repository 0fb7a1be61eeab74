"""Run under `accelerate launch --num_processes 2` by test_ddp_objectives: trains 2 steps of
each objective in `CASES` (every loss kind alone, alternating objectives, online mode) in the
same process group and writes ``OUT/rank-<r>.json`` (case -> hash of the final weights).

    python -m accelerate.commands.launch ... ddp_objectives_worker.py DATA_ROOT TEACHER OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

from distillery.spec import ExperimentSpec
from distillery.training.trainer import train_stage

FEATURE = {"student_tap": "bottleneck", "teacher_tap": "bottleneck"}
#: name -> (stage, spec overrides)
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    **{
        kind: ("student", {"student": {"losses": [{"kind": kind}]}})
        for kind in ("cross_entropy", "focal", "ohem", "confidence_penalty")
    },
    **{
        name: ("distill", {"distillation": {"losses": [term]}})
        for name, term in {
            "logit_kd": {"kind": "logit_kd"},
            "dist": {"kind": "dist"},
            "channel_wise_kd": {"kind": "channel_wise_kd"},
            "channel_wise_kd/tap": {"kind": "channel_wise_kd", "tap": "bottleneck"},
            "feature_mse": {"kind": "feature_mse", **FEATURE},
            "attention_transfer": {"kind": "attention_transfer", **FEATURE},
        }.items()
    },
    "alternate_objectives": (
        "distill",
        {
            "distillation": {
                "losses": [{"kind": "cross_entropy"}, {"kind": "feature_mse", **FEATURE}],
                "alternate": {"between": "objectives", "every": 1, "unit": "steps"},
            }
        },
    ),
    "online_features": (
        "distill",
        {
            "distillation": {
                "mode": "online",
                "losses": [{"kind": "feature_mse", **FEATURE}],
                "teacher_losses": [{"kind": "attention_transfer", **FEATURE}],
            }
        },
    ),
    "online_alternate_models": (
        "distill",
        {
            "distillation": {
                "mode": "online",
                "losses": [{"kind": "feature_mse", **FEATURE}],
                "teacher_losses": [{"kind": "cross_entropy"}],
                "alternate": {"between": "models", "every": 1, "unit": "steps"},
            }
        },
    ),
}


def spec_for(root: Path, overrides: dict[str, Any]) -> ExperimentSpec:
    ref = {"format": "cityscapes", "root": str(root)}
    model = {"width": 4, "depth": 2}
    train = {"epochs": 1, "batch_size": 1, "num_processes": 2, "max_steps_per_epoch": 2}
    raw: dict[str, Any] = {
        "name": "ddp",
        "data": {"train": [ref], "val": [ref], "image_size": [32, 64]},
        "teacher": {"model": model},
        "student": {"model": model, "train": train},
        "tracking": {"mode": "disabled"},
    }
    for key, value in overrides.items():
        raw[key] = {**raw.get(key, {}), **value}
    return ExperimentSpec.model_validate(raw)


def main(root: Path, teacher: Path, out: Path) -> None:
    torch.set_num_threads(1)
    hashes: dict[str, str] = {}
    rank = 0
    for name, (stage, overrides) in CASES.items():
        workdir = out / name.replace("/", "_")
        outcome = train_stage(
            spec_for(root, overrides),
            stage,
            workdir,
            teacher_path=teacher if stage == "distill" else None,
            resume=False,
        )
        assert outcome.result.history[-1]["global_step"] == 2, name
        hashes[name], rank = outcome.state_hash, outcome.rank
    (out / f"rank-{rank}.json").write_text(json.dumps(hashes, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
