from __future__ import annotations

from pathlib import Path

from distillery.training.progress import Progress, ProgressFile, ProgressReporter


def test_progress_file_replays_steps_and_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    direct: list[Progress] = []
    writer = ProgressReporter("teacher", on_progress=direct.append, events_path=path)
    replayed: list[Progress] = []
    saved: list[tuple[int, Path]] = []
    reader = ProgressFile(path, replayed.append, lambda e, d: saved.append((e, d)))
    assert reader.poll() == 0  # no file yet

    writer.step(Progress("teacher", 1, 2, 1, 3, {"loss": 2.5, "lr": 0.01}))
    assert reader.poll() == 1
    writer.epoch_end(Progress("teacher", 1, 2, 3, 3, {"miou": 0.25}))
    writer.checkpoint(1, tmp_path / "ckpt" / "epoch-1")
    with path.open("a") as f:  # a line still being written waits for its end
        f.write('{"event": "progress", "stage": "teacher"')
    assert reader.poll() == 2
    writer.close()

    assert replayed == direct
    assert replayed[0].metrics == {"loss": 2.5, "lr": 0.01}
    assert saved == [(1, tmp_path / "ckpt" / "epoch-1")]


def test_disabled_reporter_writes_nothing(tmp_path: Path) -> None:
    calls: list[Progress] = []
    r = ProgressReporter("s", on_progress=calls.append, events_path=tmp_path / "e", enabled=False)
    r.step(Progress("s", 1, 1, 1, 1))
    r.close()
    assert calls == [] and not (tmp_path / "e").exists()
