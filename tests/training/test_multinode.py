"""The multi-node code path on one machine: the two commands an indexed Job of 2 pods runs
(`accelerate launch --num_machines 2 --machine_rank i`, one process each), started on loopback
with gloo, train one stage together and end with identical weights on both ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distillery.training.launcher import free_port
from services.worker.multinode import (
    RENDEZVOUS_PORT,
    SPEC_DIR,
    MultiNodePlan,
    node_command,
    render,
)


@pytest.mark.slow
def test_two_machines_one_process_each_end_with_identical_weights(make_spec, tmp_path: Path):
    spec = make_spec(
        student={"train": {"epochs": 1, "batch_size": 2, "num_processes": 1, "num_nodes": 2}}
    )
    workdir = tmp_path / "work"  # the shared volume both pods mount
    plan = MultiNodePlan(
        stage_id="loopback",
        stage="student",
        spec_json=spec.model_dump_json(),
        num_nodes=2,
        processes_per_node=1,
        workdir=str(workdir),
        gpus_per_node=0,
    )
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(plan.spec_json)
    # What the Job's pods run, with the rank Kubernetes would substitute and machine 0 on loopback.
    rendered = next(d for d in render(plan) if d["kind"] == "Job")
    pod_command = rendered["spec"]["template"]["spec"]["containers"][0]["command"]
    port = free_port()
    commands = []
    for rank in (0, 1):
        cmd = node_command(
            plan,
            machine_rank=rank,
            main_host="127.0.0.1",
            port=port,
            spec_path=str(spec_path),
            python=sys.executable,
        )
        as_run_here = {
            "python": sys.executable,
            "$(MACHINE_RANK)": str(rank),
            plan.main_host: "127.0.0.1",
            str(RENDEZVOUS_PORT): str(port),
            f"{SPEC_DIR}/spec.json": str(spec_path),
        }
        expected = [as_run_here.get(arg, arg) for arg in pod_command]
        assert cmd == expected
        commands.append(cmd)

    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    logs = [tmp_path / f"machine-{rank}.log" for rank in (0, 1)]
    procs = [
        subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
        for cmd, log in zip(commands, logs, strict=True)
    ]
    try:
        codes = [p.wait(timeout=420) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)

    reports = [
        json.loads((workdir / "student" / "result" / f"rank-{r}.json").read_text()) for r in (0, 1)
    ]
    assert [r["rank"] for r in reports] == [0, 1]
    assert [r["world_size"] for r in reports] == [2, 2]
    assert reports[0]["state_hash"] == reports[1]["state_hash"]
    # The main rank wrote the stage's result where the owning worker reads it.
    assert (workdir / "student" / "result.json").is_file()


def test_a_multi_node_stage_is_refused_on_one_machine(make_spec, tmp_path: Path):
    from distillery.training import run_stage

    spec = make_spec(student={"train": {"num_nodes": 2}})
    with pytest.raises(ValueError, match=r"student\.train\.num_nodes: 2 machines"):
        run_stage(spec, "student", tmp_path)
