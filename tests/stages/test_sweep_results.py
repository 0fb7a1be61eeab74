"""A sweep's comparison table from its parts' outcomes (`distillery.stages.sweep_results`)."""

from __future__ import annotations

import json
from pathlib import Path

from distillery.stages import keys
from distillery.stages.sweep_results import Outcome, add_compute_matched


def _trained(run_dir: Path, experiment_id: str, miou: float) -> Outcome:
    """A part whose `student` stage stored its metrics, laid out like the artifacts store."""
    path = run_dir / keys.stage_results_key(experiment_id, "student")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"metrics": {"miou": miou}}))
    return Outcome(run_dir, {"experiment_id": experiment_id}, None, 12.0, experiment_id)


def test_every_compute_matched_baseline_is_a_part_and_the_trained_ones_are_compared(
    tmp_path: Path,
) -> None:
    results = {
        "configurations": [
            {"name": "a", "per_seed": [{"seed": 0, "miou": 0.5}, {"seed": 1, "miou": 0.6}]}
        ],
        "parts": {"teachers": {}, "baselines": {}, "children": []},
    }
    failed = Outcome(tmp_path, None, "student failed: diverged", 3.0, "m2")
    matched = {("a", 0): (3, _trained(tmp_path, "m1", 0.4)), ("a", 1): (None, failed)}
    add_compute_matched(results, matched)
    assert results["parts"]["matched"] == [
        {
            "configuration": "a",
            "seed": 0,
            "epochs": 3,
            "experiment_id": "m1",
            "status": "succeeded",
            "error": None,
            "wall_time_s": 12.0,
        },
        {
            "configuration": "a",
            "seed": 1,
            "epochs": None,
            "experiment_id": "m2",
            "status": "failed",
            "error": "student failed: diverged",
            "wall_time_s": 3.0,
        },
    ]
    (row,) = results["configurations"]
    (seed0,) = row["compute_matched"]["per_seed"]  # the failed one has no row
    assert seed0["epochs"] == 3 and abs(seed0["gain"] - 0.1) < 1e-12
