"""Object keys of an experiment's artifacts, built here and nowhere else.

```
artifacts/<experiment>/                         everything of one experiment (deleted with it)
artifacts/<experiment>/<stage>/ckpt/step-<n>/   a stage's newest training checkpoint
artifacts/<experiment>/<stage>/model.pt         a stage's exported model
artifacts/<experiment>/<stage>/results.json     a stage's metrics and history
artifacts/<experiment>/<stage>/wandb/<run>/     a stage's offline wandb run
artifacts/<experiment>/profile/profile.json     latency / FLOPs / memory of the models
artifacts/<experiment>/report.md | results.json the comparison table
artifacts/<experiment>/report/<file>             the `report` stage: report.md and its PNGs
```
"""

from __future__ import annotations


def experiment_prefix(experiment_id: str) -> str:
    return f"artifacts/{experiment_id}/"


def stage_prefix(experiment_id: str, stage: str) -> str:
    return f"artifacts/{experiment_id}/{stage}"


def checkpoint_key(experiment_id: str, stage: str, directory_name: str) -> str:
    return f"{stage_prefix(experiment_id, stage)}/ckpt/{directory_name}"


def model_key(experiment_id: str, stage: str) -> str:
    return f"{stage_prefix(experiment_id, stage)}/model.pt"


def stage_results_key(experiment_id: str, stage: str) -> str:
    return f"{stage_prefix(experiment_id, stage)}/results.json"


def wandb_key(experiment_id: str, stage: str, run_dir_name: str) -> str:
    return f"{stage_prefix(experiment_id, stage)}/wandb/{run_dir_name}"


def profile_key(experiment_id: str) -> str:
    return f"{stage_prefix(experiment_id, 'profile')}/profile.json"


def report_key(experiment_id: str) -> str:
    return f"artifacts/{experiment_id}/report.md"


def results_key(experiment_id: str) -> str:
    return f"artifacts/{experiment_id}/results.json"


def report_file_key(experiment_id: str, name: str) -> str:
    return f"artifacts/{experiment_id}/report/{name}"
