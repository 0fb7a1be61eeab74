"""Reading an offline wandb run folder back (what tests assert on): config, history rows,
summary, media files and exit code of its ``run-<id>.wandb`` file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distillery.tracking import iter_payloads


def iter_run_records(path: Path) -> Iterator[Any]:
    """The `wandb.proto.wandb_internal_pb2.Record`s of a ``run-<id>.wandb`` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    for payload in iter_payloads(path):
        record = pb.Record()
        record.ParseFromString(payload)
        yield record


def _set_item(target: dict[str, Any], item: Any) -> None:
    keys = list(item.nested_key) or [item.key]
    for k in keys[:-1]:
        target = target.setdefault(k, {})
    target[keys[-1]] = json.loads(item.value_json)


@dataclass
class OfflineRun:
    """What a run folder holds, as read from its ``.wandb`` file."""

    run_id: str
    project: str
    group: str
    job_type: str
    name: str
    config: dict[str, Any]
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    files: list[str] = field(default_factory=list)
    #: System-metric (hardware use) samples recorded.
    num_stats: int = 0
    exit_code: int | None = None


def read_offline_run(run_dir: Path) -> OfflineRun:
    """Read config, history rows, summary, media files and exit code of a wandb run folder."""
    files = sorted(Path(run_dir).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no run-*.wandb file")
    run = OfflineRun("", "", "", "", "", {}, [], {})
    for rec in iter_run_records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            run.run_id, run.project, run.group = r.run_id, r.project, r.run_group
            run.job_type, run.name = r.job_type, r.display_name
            for item in r.config.update:
                _set_item(run.config, item)
        elif kind == "config":
            for item in rec.config.update:
                _set_item(run.config, item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in rec.history.item:
                _set_item(row, item)
            run.history.append(row)
        elif kind == "summary":
            for item in rec.summary.update:
                _set_item(run.summary, item)
        elif kind == "files":
            run.files += [f.path for f in rec.files.files]
        elif kind == "stats":
            run.num_stats += 1
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
    run.config.pop("_wandb", None)
    return run


def read_offline_table(run_dir: Path, key: str) -> list[dict[str, Any]]:
    """The rows (column -> value) of the `wandb.Table` a run logged under `key` (its last value,
    a ``table-file`` entry in the summary pointing at ``files/media/table/*.table.json``)."""
    run_dir = Path(run_dir)
    entry = read_offline_run(run_dir).summary.get(key)
    if not isinstance(entry, dict) or entry.get("_type") != "table-file":
        raise KeyError(f"{run_dir}: no table logged under {key!r}")
    data = json.loads((run_dir / "files" / entry["path"]).read_text())
    return [dict(zip(data["columns"], row, strict=True)) for row in data["data"]]
